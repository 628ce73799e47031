"""Release readers and datalists on synthetic trees laid out exactly like the public archives."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_releases import MAKERS, make_release  # noqa: E402

from medurwkv_net.bundle.transforms import eval_transforms  # noqa: E402
from medurwkv_net.data import (  # noqa: E402
    build_datalist,
    check_pairs,
    ensure_datalist,
    get_release,
    seeded_split,
)
from medurwkv_net.cli.prepare_data import prepare_data_cli  # noqa: E402

DATASETS = sorted(MAKERS)
# every release as it unpacks, and the TDD copy laid out as images/ + masks/ (with a 16-bit image and mask)
VARIANTS = [(d, {}) for d in DATASETS] + [("tdd", {"folders": True})]


def _all_cases(dl):
    return [c for k in ("training", "validation", "test") for c in dl[k]]


@pytest.mark.parametrize("dataset, variant", VARIANTS)
def test_datalist_covers_release_once(tmp_path, dataset, variant):
    rel = make_release(dataset, tmp_path / "unpacked", **variant)
    dl = build_datalist(dataset, rel.dataset_dir, seed=3)
    cases = _all_cases(dl)
    ids = [c["case"] for c in cases]
    assert sorted(ids) == sorted(rel.masks), "every case exactly once"
    assert len(set(ids)) == len(ids)
    assert all(dl[k] for k in ("training", "validation", "test")), {
        k: len(dl[k]) for k in ("training", "validation", "test")
    }
    assert Path(dl["dataset_dir"]) == rel.release_root.resolve()
    for c in cases:
        assert Path(c["image"]).is_file()
        labels = c["label"] if isinstance(c["label"], list) else [c["label"]]
        assert all(Path(p).is_file() for p in labels)
        assert Path(c["image"]).resolve() not in {Path(p).resolve() for p in labels}
    assert dl["numTraining"] == len(dl["training"])
    json.dumps(dl)  # serialisable as is


@pytest.mark.parametrize("dataset, variant", VARIANTS)
def test_labels_through_bundle_chain_match_ground_truth(tmp_path, dataset, variant):
    """The datalist + the bundles' shared chain (release label_threshold) give exactly the foreground."""
    rel = make_release(dataset, tmp_path / "unpacked", **variant)
    dl = build_datalist(dataset, rel.dataset_dir)
    check_pairs(dl)
    chain = eval_transforms(in_channels=3, spatial_size=(32, 32), spatial_mode="crop", intensity="imagenet",
                            label_mode="mask", label_threshold=get_release(dataset).label_threshold)
    for c in _all_cases(dl):
        out = chain(dict(c))
        lab, img = out["label"], out["image"]
        expected = rel.masks[c["case"]].T  # MONAI's PIL reader gives (W, H)
        assert tuple(lab.shape) == (1, *expected.shape) and tuple(img.shape) == (3, *expected.shape)
        assert set(np.unique(lab.numpy())) <= {0.0, 1.0}
        got = lab[0].numpy().astype(bool)
        if rel.lossy:  # JPEG masks: thresholding must recover the shape up to compression noise
            union = (got | expected).sum()
            assert union == 0 or (got & expected).sum() / union > 0.95
        else:
            np.testing.assert_array_equal(got, expected, err_msg=c["case"])


def test_official_isic_splits_and_superpixels_ignored(tmp_path):
    for dataset in ("isic2017", "isic2018"):
        rel = make_release(dataset, tmp_path / dataset)
        dl = build_datalist(dataset, rel.dataset_dir)
        assert dl["split"]["method"] == "official"
        assert [len(dl[k]) for k in ("training", "validation", "test")] == [4, 2, 2]
        assert {c["subset"] for c in dl["test"]} == {"Test_v2" if dataset == "isic2017" else "Test"}
        assert not any("superpixels" in c["image"] or "superpixels" in c["label"] for c in _all_cases(dl))
        assert all(c["label"].endswith(c["case"] + "_segmentation.png") for c in _all_cases(dl))


def test_isic_without_validation_twin_carves_it_with_seed(tmp_path):
    rel = make_release("isic2018", tmp_path, counts={"Training": 10, "Test": 2})
    dl = build_datalist("isic2018", rel.dataset_dir, seed=0)
    assert dl["split"]["method"] == "official+seeded"
    assert dl["split"]["seeded_from_training"] == ["validation"]
    assert len(dl["test"]) == 2 and {c["subset"] for c in dl["test"]} == {"Test"}
    assert len(dl["validation"]) >= 1 and {c["subset"] for c in dl["validation"]} == {"Training"}
    assert len(dl["training"]) + len(dl["validation"]) == 10


def test_glas_official_test_sets_and_seeded_validation(tmp_path):
    rel = make_release("glas", tmp_path)
    dl = build_datalist("glas", rel.dataset_dir)
    assert dl["label_threshold"] == 0  # instance ids: any id > 0 is gland
    assert {c["subset"] for c in dl["test"]} == {"testA", "testB"} and len(dl["test"]) == 4
    assert {c["subset"] for c in dl["training"] + dl["validation"]} == {"train"}
    assert dl["split"]["seeded_from_training"] == ["validation"]


def test_busi_union_of_masks_and_stratified_split(tmp_path):
    rel = make_release("busi", tmp_path)
    dl = build_datalist("busi", rel.dataset_dir)
    by_case = {c["case"]: c for c in _all_cases(dl)}
    assert sorted(by_case) == sorted(rel.masks)
    assert [Path(p).name for p in by_case["benign/benign (1)"]["label"]] == ["benign (1)_mask.png",
                                                                          "benign (1)_mask_1.png"]
    assert [Path(p).name for p in by_case["benign/benign (2)"]["label"]] == [
        "benign (2)_mask.png", "benign (2)_mask_1.png", "benign (2)_mask_2.png"]
    assert all(len(c["label"]) == 1 for k, c in by_case.items() if k not in ("benign/benign (1)", "benign/benign (2)"))
    for key in ("training", "validation", "test"):  # benign + malignant by default, each in every split
        assert {c["subset"] for c in dl[key]} == {"benign", "malignant"}
    assert dl["split"] == {"seed": 0, "method": "seeded", "fractions": [0.8, 0.1, 0.1], "stratified_by": "subset"}
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [4, 2, 2]
    assert any("include_normal" in n for n in dl["notes"])


def test_busi_include_normal(tmp_path):
    rel = make_release("busi", tmp_path, include_normal=True)
    dl = build_datalist("busi", rel.dataset_dir, include_normal=True)
    assert sorted(c["case"] for c in _all_cases(dl)) == sorted(rel.masks)
    for key in ("training", "validation", "test"):
        assert {c["subset"] for c in dl[key]} == {"benign", "malignant", "normal"}
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [6, 3, 3]
    out = prepare_data_cli("busi", str(rel.dataset_dir), output=str(tmp_path / "dl.json"), include_normal=True)
    assert len(_all_cases(json.loads(Path(out).read_text()))) == 12
    with pytest.raises(ValueError, match="include_normal applies to busi only"):
        prepare_data_cli("kvasir", str(rel.dataset_dir), output=str(tmp_path / "x.json"), include_normal=True)


def test_busi_extra_mask_without_first_mask_is_named(tmp_path):
    rel = make_release("busi", tmp_path)
    first = rel.release_root / "benign" / "benign (1)_mask.png"
    first.unlink()
    with pytest.raises(ValueError, match=r"case 'benign/benign \(1\)' has '.*benign \(1\)_mask_1\.png' but no "
                                         r"first mask '.*benign \(1\)_mask\.png'; restore"):
        build_datalist("busi", rel.dataset_dir)


@pytest.mark.parametrize("dataset", ["kvasir", "busi", "glas", "isic2018"])
def test_inner_folder_and_wrapper_folder_work(tmp_path, dataset):
    rel = make_release(dataset, tmp_path / "outer" / "unpacked")
    expected = build_datalist(dataset, rel.dataset_dir)
    inner = rel.release_root
    if dataset == "isic2018":
        inner = rel.release_root / "ISIC2018_Task1-2_Training_Input"
    if dataset == "busi":
        inner = rel.release_root / "benign"
    for d in (inner, tmp_path / "outer"):
        assert build_datalist(dataset, d) == expected, d


def test_seeded_split_reproducible_and_seed_dependent(tmp_path):
    rel = make_release("kvasir", tmp_path, n=20)
    a = build_datalist("kvasir", rel.dataset_dir, seed=0)
    assert a == build_datalist("kvasir", rel.dataset_dir, seed=0)
    b = build_datalist("kvasir", rel.dataset_dir, seed=1)
    assert [c["case"] for c in a["test"]] != [c["case"] for c in b["test"]]
    assert a["split"] == {"seed": 0, "method": "seeded", "fractions": [0.8, 0.1, 0.1], "stratified_by": "subset"}
    assert [len(a[k]) for k in ("training", "validation", "test")] == [16, 2, 2]


def test_seeded_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="summing to 1"):
        seeded_split([{"case": "a"}], fractions=(0.5, 0.1, 0.1))


def test_errors_name_what_was_expected_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_datalist("kvasir", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError,
                       match=r"no recognisable kvasir release: expected the folders 'images/'.*readme\.txt"):
        build_datalist("kvasir", tmp_path / "empty")
    with pytest.raises(ValueError) as err:
        build_datalist("kvasir", tmp_path / "empty")
    assert "image_subdir" not in str(err.value)  # kvasir has no such option
    with pytest.raises(ValueError, match="ISIC2018_Task1-2_Training_Input"):
        build_datalist("isic2018", tmp_path / "empty")
    with pytest.raises(KeyError, match="unknown dataset 'foo'; known: isic2017"):
        build_datalist("foo", tmp_path)


def test_missing_mask_and_orphan_mask_are_named(tmp_path):
    rel = make_release("kvasir", tmp_path / "a", n=4)
    victim = sorted((rel.release_root / "masks").iterdir())[1]
    victim.unlink()
    with pytest.raises(ValueError, match=rf"'{victim.stem}\.jpg' needs '{victim.stem}\.<png"):
        build_datalist("kvasir", rel.dataset_dir)
    rel = make_release("busi", tmp_path / "b")
    os.remove(rel.release_root / "malignant" / "malignant (2).png")
    with pytest.raises(ValueError, match=r"mask '.*malignant \(2\)_mask\.png' has no image"):
        build_datalist("busi", rel.dataset_dir)


def test_two_releases_side_by_side_is_ambiguous(tmp_path):
    make_release("kvasir", tmp_path / "x", n=3)
    make_release("kvasir", tmp_path / "y", n=3)
    with pytest.raises(ValueError, match="several kvasir releases"):
        build_datalist("kvasir", tmp_path)


def test_check_pairs_reports_size_mismatch_before_writing(tmp_path):
    rel = make_release("tdd", tmp_path / "n", n=4, folders=True)
    Image.new("L", (10, 12)).save(rel.release_root / "masks" / "2.png")
    dl = build_datalist("tdd", rel.dataset_dir)
    with pytest.raises(ValueError,
                       match=r"case '2': image .* shape \(37, 45\) != mask '.*2\.png' spatial shape \(10, 12\)"):
        check_pairs(dl)
    with pytest.raises(ValueError, match="case '2'"):  # ensure_datalist checks before writing
        ensure_datalist("tdd", rel.dataset_dir, tmp_path / "dl.json")
    assert not (tmp_path / "dl.json").exists()
    rel = make_release("busi", tmp_path / "b")
    Image.new("L", (5, 5)).save(rel.release_root / "benign" / "benign (1)_mask_1.png")
    with pytest.raises(ValueError,
                       match=r"case 'benign/benign \(1\)': image .* != mask '.*_mask_1\.png' spatial shape \(5, 5\)"):
        check_pairs(build_datalist("busi", rel.dataset_dir))


def test_tdd_reads_the_tufts_archive_as_it_unpacks(tmp_path, capsys):
    rel = make_release("tdd", tmp_path / "t", n=6)
    dl = build_datalist("tdd", rel.dataset_dir)
    cases = _all_cases(dl)
    assert sorted(c["case"] for c in cases) == sorted(rel.masks)
    assert all(c["image"].endswith(".JPG") and "/Radiographs/" in c["image"] for c in cases)
    assert all("/Segmentation/teeth_mask/" in c["label"] for c in cases)
    out = prepare_data_cli("tdd", str(rel.dataset_dir), output=str(tmp_path / "dl.json"))
    assert Path(out).is_file()
    text = capsys.readouterr().out
    assert "cases with an empty mask (only background): 1" in text and "e.g. '4'" in text  # the edentulous case


def test_tdd_doubled_folder_and_other_cases(tmp_path):
    rel = make_release("tdd", tmp_path / "d", n=4, doubled=True)
    dl = build_datalist("tdd", rel.dataset_dir)
    assert all("/Radiographs/Radiographs/" in c["image"] for c in _all_cases(dl))
    assert any("doubled folder" in n for n in dl["notes"])
    # upper-case folder names and extensions of a re-packed copy
    teeth = rel.release_root / "Segmentation" / "teeth_mask"
    for f in teeth.iterdir():
        f.rename(f.with_suffix(".JPG"))
    teeth.rename(teeth.parent / "TEETH_MASK")
    assert len(_all_cases(build_datalist("tdd", rel.dataset_dir))) == 4


def test_tdd_custom_subfolders_and_the_error_naming_options_and_folders(tmp_path):
    rel = make_release("tdd", tmp_path / "t", n=5)
    root = tmp_path / "copy"
    (root / "labels").mkdir(parents=True)
    shutil.move(str(rel.release_root / "Radiographs"), str(root / "xrays"))
    shutil.move(str(rel.release_root / "Segmentation" / "teeth_mask"), str(root / "labels" / "teeth"))
    with pytest.raises(ValueError, match=r"no recognisable tdd release: expected the folders 'Radiographs/'.*"
                                         r"--image_subdir X --mask_subdir Y \(bundle configs\) or --image_dir X "
                                         r"--mask_dir Y \(prepare-data\); folders with images: 'xrays/' "
                                         r"\(5 images\), 'labels/teeth/' \(5 images\)"):
        build_datalist("tdd", root)
    dl = build_datalist("tdd", root, image_dir="xrays", mask_dir="labels/teeth")
    assert len(_all_cases(dl)) == 5


def test_ensure_datalist_is_idempotent_and_follows_dataset_dir(tmp_path):
    rel = make_release("tdd", tmp_path / "r1", n=6, folders=True)
    out = tmp_path / "dl.json"
    first = ensure_datalist("tdd", rel.dataset_dir, out, seed=0)
    stamp = out.stat().st_mtime_ns
    assert ensure_datalist("tdd", rel.dataset_dir, out, seed=0) == first
    assert out.stat().st_mtime_ns == stamp  # untouched
    rel2 = make_release("tdd", tmp_path / "r2", n=6, folders=True)
    second = ensure_datalist("tdd", rel2.dataset_dir, out, seed=0)
    assert second["dataset_dir"] == str(rel2.release_root.resolve())
    assert json.loads(out.read_text()) == second


def test_prepare_data_cli_function_and_command(tmp_path, capsys):
    rel = make_release("glas", tmp_path / "g")
    out = prepare_data_cli("glas", str(rel.dataset_dir), output=str(tmp_path / "o" / "datalist.json"), seed=2)
    dl = json.loads(Path(out).read_text())
    assert dl["dataset"] == "glas" and dl["split"]["seed"] == 2
    assert "training: " in capsys.readouterr().out
    with pytest.raises(ValueError, match="image_dir/mask_dir apply to"):
        prepare_data_cli("glas", str(rel.dataset_dir), output=str(tmp_path / "x.json"), image_dir="a")
    cli_out = tmp_path / "cli.json"
    r = subprocess.run([sys.executable, "-m", "medurwkv_net", "prepare-data", "glas", str(rel.dataset_dir),
                        "--output", str(cli_out), "--seed", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(cli_out.read_text()) == dl


def test_busi_rgba_mask_lesion_of_5_percent_gives_5_percent(tmp_path):
    """An RGBA BUSI mask (opaque alpha): the alpha channel is not foreground, in training and verify-data."""
    from monai.transforms import Compose

    from medurwkv_net.data import LoadMaskd
    from medurwkv_net.reliability.verify_data import verify_datalist

    rel = make_release("busi", tmp_path / "b")
    case = rel.release_root / "malignant" / "malignant (1)"
    with Image.open(f"{case}.png") as im:
        w, h = im.size
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 3] = 255
    flat = rgba.reshape(-1, 4)
    n = round(0.05 * h * w)
    flat[:n, :3] = 255
    Image.fromarray(rgba, "RGBA").save(f"{case}_mask.png")
    dl = build_datalist("busi", rel.dataset_dir)
    entry = next(c for c in _all_cases(dl) if c["case"] == "malignant/malignant (1)")
    lab = Compose([LoadMaskd("label", threshold=get_release("busi").label_threshold)])(dict(entry))["label"]
    assert float(lab.float().mean()) == pytest.approx(n / (h * w)) and n / (h * w) == pytest.approx(0.05, abs=0.005)
    rep = verify_datalist([entry], label_mode="mask", image_channels=3, convert_channels=True, eight_bit=True)
    assert rep.ok and rep.cases[0].label_classes == [0, 1]


def test_isic2017_doubled_folder_found_and_other_nesting_named(tmp_path):
    rel = make_release("isic2017", tmp_path / "a", doubled=True)
    dl = build_datalist("isic2017", rel.dataset_dir)
    assert len(dl["training"]) == 4
    assert all("ISIC-2017_Training_Data/ISIC-2017_Training_Data/" in c["image"] for c in dl["training"])
    assert any("doubled folder" in n for n in dl["notes"])
    outer = rel.release_root / "ISIC-2017_Training_Data"
    (outer / "ISIC-2017_Training_Data").rename(outer / "unzipped")
    with pytest.raises(ValueError, match=r"isic2017 Training: no images .* in '.*ISIC-2017_Training_Data'; it "
                                         r"contains \[unzipped/\]; a folder unpacked inside a folder of another "
                                         r"name: point dataset_dir"):
        build_datalist("isic2017", rel.dataset_dir)


def test_inference_folder_listing_skips_superpixels_and_masks(tmp_path):
    from medurwkv_net.bundle.transforms import list_images

    rel = make_release("isic2017", tmp_path / "a")
    folder = rel.release_root / "ISIC-2017_Training_Data"
    (folder / "ISIC_0000000_segmentation.png").write_bytes(b"")
    (folder / "ISIC_0000001_Mask_1.PNG").write_bytes(b"")
    names = [Path(c["image"]).name for c in list_images(str(folder))]
    assert names == [f"ISIC_{i:07d}.jpg" for i in range(4)]
    only = tmp_path / "only"
    only.mkdir()
    (only / "x_superpixels.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"only superpixel maps or masks: \['x_superpixels\.png'\]"):
        list_images(str(only))
