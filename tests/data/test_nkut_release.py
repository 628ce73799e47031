"""The NKUT reader and preparation on a miniature CBCT release (tests/data/synthetic_nkut.py): every volume
format and quirk read, the three label maps combined into 4 classes, axial slices of the RAS-oriented volumes,
reuse of a finished preparation, and one message naming the file for every bad release."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_nkut import CASES, SHAPE, make_nkut  # noqa: E402

from medurwkv_net.cli.prepare_data import prepare_data_cli  # noqa: E402
from medurwkv_net.data import nkut  # noqa: E402
from medurwkv_net.reliability.errors import DatasetError  # noqa: E402


def _load(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture
def release(tmp_path):
    return make_nkut(tmp_path / "unpacked")


def test_reader_finds_every_case_through_the_quirks(release):
    found = nkut.read_release(release.dataset_dir)
    assert found.root == release.release_root.resolve() and found.layout == "maps"
    assert [c.case for c in found.cases] == list(CASES)  # the resource fork and the document are not cases
    by_case = {c.case: c for c in found.cases}
    for case, image in release.images.items():
        assert by_case[case].image == image.resolve()
        assert sorted(by_case[case].labels) == ["binary", "bone", "tooth"]
    assert by_case["NKUT_004"].image.is_dir()  # the DICOM series folder
    assert by_case["NKUT_001"].labels["bone"].name == "NKUT_001_bone.nii.gz"
    assert any("doubled folder" in n for n in found.notes) and any("role suffix" in n for n in found.notes)
    assert nkut.read_release(release.release_root / "images").root == found.root  # pointed at an inner folder


def test_prepare_combines_the_maps_and_slices_the_ras_volumes(release, tmp_path):
    path = Path(nkut.prepare(release.dataset_dir, tmp_path / "prep" / "datalist.json", seed=0))
    dl = json.loads(path.read_text())
    assert dl["labels"] == {"0": "background", "1": "wisdom_tooth", "2": "second_molar", "3": "alveolar_bone"}
    assert dl["spatial_dims"] == {"training": 2, "validation": 2, "test": 3, "training_volumes": 3,
                                  "validation_volumes": 3}
    volumes = {k: [c["case"] for c in dl[k]] for k in ("training_volumes", "validation_volumes", "test")}
    assert sorted(sum(volumes.values(), [])) == list(CASES) and [len(v) for v in volumes.values()] == [3, 1, 1]
    for key in volumes:
        for c in dl[key]:  # the label map on the image's grid and geometry, the image as the release has it
            assert c["image"] == str(release.images[c["case"]].resolve())
            label = nib.load(str(path.parent / c["label"]))
            np.testing.assert_array_equal(np.asarray(label.dataobj), release.classes[c["case"]])
            assert label.get_data_dtype() == np.uint8
            expected_affine = np.diag([-0.4, -0.4, 0.5, 1.0])
            if c["case"] == "NKUT_003":  # the NRRD volume: LPS origin (2, 3, 4)
                expected_affine[:3, 3] = [-2.0, -3.0, 4.0]
            np.testing.assert_allclose(label.affine, expected_affine, atol=1e-5)
    for split in ("training", "validation"):
        cases = set(volumes[f"{split}_volumes"])
        assert {s["case"] for s in dl[split]} == cases  # slices of a case stay in its split
        for case in cases:
            ras = np.flip(release.classes[case], (0, 1))  # the files are L-P-S: RAS flips the first two axes
            zs = [s["slice"] for s in dl[split] if s["case"] == case]
            labelled = [z for z in range(SHAPE[2]) if ras[:, :, z].any()]
            assert set(labelled) <= set(zs)  # every labelled slice, plus some of the empty ones
            for s in (s for s in dl[split] if s["case"] == case):
                np.testing.assert_array_equal(_load(path.parent / s["label"]), ras[:, :, s["slice"]])
                image = _load(path.parent / s["image"])
                assert image.shape == SHAPE[:2] and image.dtype == np.float32
                assert image.min() >= 0.0 and image.max() <= 1.0  # the volume's percentile window
    for c in dl["test"]:
        assert not [s for s in dl["training"] + dl["validation"] if s["case"] == c["case"]]

    stamp = path.stat().st_mtime_ns
    assert nkut.prepare(release.dataset_dir, path, seed=0) == str(path) and path.stat().st_mtime_ns == stamp
    old_slices = {s["image"] for s in dl["training"] + dl["validation"]}
    nkut.prepare(release.dataset_dir, path, seed=5)  # another split: rewritten, the old slices removed
    new = json.loads(path.read_text())
    assert new["split"]["seed"] == 5
    new_slices = {s["image"] for s in new["training"] + new["validation"]}
    on_disk = {f"slices/images/{p.name}" for p in (path.parent / "slices" / "images").iterdir()}
    assert on_disk == new_slices and (old_slices - new_slices) <= (old_slices - on_disk)


def test_one_label_map_per_case(release, tmp_path):
    labels = release.release_root / "labels"
    affines = {case: nib.load(str(labels / "tooth" / f"{case}.nii.gz")).affine for case in release.classes}
    shutil.rmtree(labels)
    labels.mkdir()
    for case, classes in release.classes.items():
        three = np.minimum(classes, 2).astype(np.uint8)  # a 3-class task of one's own
        nib.save(nib.Nifti1Image(three, affines[case]), str(labels / f"{case}_seg.nii.gz"))
    path = nkut.prepare(release.dataset_dir, tmp_path / "dl.json", class_names=["background", "tooth", "molar"])
    dl = json.loads(Path(path).read_text())
    assert dl["layout"] == "single" and dl["labels"] == {"0": "background", "1": "tooth", "2": "molar"}
    with pytest.raises(DatasetError, match=r"label map '.*NKUT_001_seg\.nii\.gz' holds the values \[2\] .* where "
                                           r"the class indices 0\.\.1 are expected; pass --class_names"):
        nkut.prepare(release.dataset_dir, tmp_path / "dl2.json", class_names=["background", "tooth"])


def _replace_map(release, role: str, case: str, array, affine=None, name=None):
    folder = release.release_root / "labels" / role
    old = next(p for p in folder.iterdir() if p.name.lower().startswith(case.lower()))
    old.unlink()
    nib.save(nib.Nifti1Image(array, np.diag([-0.4, -0.4, 0.5, 1.0]) if affine is None else affine),
             str(folder / (name or f"{case}.nii.gz")))


@pytest.mark.parametrize("fault, message", [
    ("missing_label", r"1 image\(s\) have no label map in '.*labels/tooth': '.*images/NKUT_002\.NII\.GZ' needs "
                      r"'.*labels/tooth/NKUT_002\.<nii\.gz\|nii\|nrrd\|nhdr\|mha\|mhd>'; restore the label maps"),
    ("orphan_label", r"1 label map\(s\) in '.*labels/bone' have no image in '.*images', e\.g\. '.*NKUT_009_bone"),
    ("shape", r"case 'NKUT_005': bone label map '.*NKUT_005\.nii\.gz' is \(32, 32, 7\) voxels but the image "
              r"'.*NKUT_005\.nii' is \(32, 32, 8\)"),
    ("spacing", r"case 'NKUT_001': tooth label map .* different geometry .*spacing \[0\.3, 0\.3, 0\.5\] vs "
                r"\[0\.4, 0\.4, 0\.5\]"),
    ("values", r"case 'NKUT_001': tooth label map .* holds the values \[7\] \(voxels per value: \{7: 3\}\) where "
               r"0 background, 1 wisdom tooth, 2 second molar are expected"),
    ("fraction", r"holds 1 non-integer values \(e\.g\. \[0\.5\]\)"),
    ("no_bone", r"has the label-map folder\(s\) \['binary', 'tooth'\] but not \['bone'\]"),
    ("nothing", r"holds no recognisable nkut release: expected the folders 'images/' .* it contains "
                r"\[stuff/\]"),
])
def test_bad_releases_are_refused_naming_the_file(release, tmp_path, fault, message):
    x = np.zeros(SHAPE, np.uint8)
    root = release.release_root
    if fault == "missing_label":
        (root / "labels" / "tooth" / "NKUT_002.nii.gz").unlink()
    elif fault == "orphan_label":
        shutil.copy(root / "labels" / "bone" / "NKUT_001_bone.nii.gz", root / "labels" / "bone" / "NKUT_009_bone.nii")
    elif fault == "shape":
        _replace_map(release, "bone", "NKUT_005", x[:, :, :7])
    elif fault == "spacing":
        _replace_map(release, "tooth", "NKUT_001", x, affine=np.diag([-0.3, -0.3, 0.5, 1.0]))
    elif fault == "values":
        x[1, 1, 1:4] = 7
        _replace_map(release, "tooth", "NKUT_001", x)
    elif fault == "fraction":
        _replace_map(release, "tooth", "NKUT_001", np.where(np.arange(x.size).reshape(SHAPE) == 5, 0.5, 0.0))
    elif fault == "no_bone":
        shutil.rmtree(root / "labels" / "bone")
    elif fault == "nothing":
        (tmp_path / "empty" / "stuff").mkdir(parents=True)
    where = tmp_path / "empty" if fault == "nothing" else release.dataset_dir
    with pytest.raises(DatasetError, match=message):
        nkut.prepare(where, tmp_path / "prep" / "datalist.json")
    assert not (tmp_path / "prep" / "datalist.json").exists()


def test_settings_that_cannot_work_are_refused(release, tmp_path):
    with pytest.raises(DatasetError, match=r"give the 4 classes .* configured for 2 .* --out_channels 4"):
        nkut.prepare(release.dataset_dir, tmp_path / "a.json", class_names=["background", "teeth"])
    with pytest.raises(DatasetError, match="percentiles must be two numbers"):
        nkut.prepare(release.dataset_dir, tmp_path / "b.json", percentiles=[99, 1])
    small = make_nkut(tmp_path / "two", cases=CASES[:2])
    with pytest.raises(DatasetError, match=r"the 2 case\(s\) of '.*images' leave the validation split empty"):
        nkut.prepare(small.dataset_dir, tmp_path / "c.json")


def test_inference_inputs_and_output_names(release, tmp_path):
    images = release.release_root / "images"
    listed = [Path(d["image"]).name for d in nkut.list_volumes(str(images))]
    assert listed == ["NKUT_001.nii.gz", "NKUT_002.NII.GZ", "NKUT_003.nrrd", "NKUT_004", "NKUT_005.nii"]
    assert nkut.list_volumes(str(tmp_path / "none"), missing_ok=True) == []
    with pytest.raises(FileNotFoundError, match="holds no CBCT volume"):
        nkut.list_volumes(str(release.release_root / "labels"))
    names = [nkut.output_name({"filename_or_obj": str(images / n)})["subject"] for n in listed]
    assert names == [f"NKUT_00{i}.nii.gz" for i in range(1, 6)]  # the saver strips .nii.gz: CASE_seg.nii.gz


def test_prepare_data_command(release, tmp_path, capsys):
    out = prepare_data_cli("nkut", str(release.dataset_dir), output=str(tmp_path / "p" / "datalist.json"))
    text = capsys.readouterr().out
    assert "training: 3 case(s)" in text and "test: 1 volume(s)" in text and Path(out).is_file()
    (release.release_root / "labels" / "tooth" / "NKUT_003.nii.gz").unlink()
    r = subprocess.run([sys.executable, "-m", "medurwkv_net", "prepare-data", "nkut", str(release.dataset_dir),
                        "--output", str(tmp_path / "q" / "datalist.json")], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.startswith("medurwkv-net")]
    assert len(lines) == 1 and "NKUT_003.nrrd' needs" in lines[0] and "labels/tooth" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
