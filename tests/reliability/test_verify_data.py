import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ignite.engine import Engine
from PIL import Image

from medurwkv_net.cli.verify_data import verify_data_cli
from medurwkv_net.reliability import DataVerificationError, VerifyDataHandler, verify_datalist

RNG = np.random.default_rng(0)


def png(path, arr):
    Image.fromarray(arr).save(path)
    return str(path)


def rgb(h=24, w=32):
    return (RNG.random((h, w, 3)) * 255).astype(np.uint8)


def mask(h=24, w=32, value=1):
    m = np.zeros((h, w), np.uint8)
    m[4:12, 5:20] = value
    return m


def nii(path, arr, affine=None):
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine), str(path))
    return str(path)


def vol(shape=(10, 12, 8)):
    return RNG.random(shape).astype(np.float32)


def lab3d(shape=(10, 12, 8), value=1):
    m = np.zeros(shape, np.uint8)
    m[2:6, 3:7, 2:5] = value
    return m


def truncate(path, frac=0.5):
    b = Path(path).read_bytes()
    Path(path).write_bytes(b[: int(len(b) * frac)])
    return str(path)


def only(report, check):
    """The single failing case's error codes, asserting exactly which check fired."""
    assert not report.ok
    codes = [f.check for c in report.cases for f in c.errors]
    assert check in codes, report.summary()
    return report.summary()


def test_good_2d_and_3d_cases_pass(tmp_path):
    dl = [
        {"image": png(tmp_path / "a.png", rgb()), "label": png(tmp_path / "a_mask.png", mask())},
        {"image": nii(tmp_path / "v.nii.gz", vol()), "label": nii(tmp_path / "v_seg.nii.gz", lab3d())},
    ]
    rep = verify_datalist(dl, num_classes=2)
    assert rep.ok and not rep.warned, rep.summary()


@pytest.mark.parametrize("ext", ["png", "jpg", "bmp"])
def test_truncated_bitmap_image_is_unreadable(tmp_path, ext):
    img = tmp_path / f"a.{ext}"
    Image.fromarray(rgb(64, 64)).save(img)
    truncate(img)
    rep = verify_datalist([{"image": str(img), "label": png(tmp_path / "m.png", mask(64, 64))}], num_classes=2)
    s = only(rep, "unreadable")
    assert str(img) in s


def test_truncated_png_label_is_unreadable(tmp_path):
    lab = png(tmp_path / "m.png", (RNG.random((64, 64)) > 0.5).astype(np.uint8))
    truncate(lab)
    rep = verify_datalist([{"image": png(tmp_path / "a.png", rgb(64, 64)), "label": lab}], num_classes=2)
    assert f"label file '{lab}' cannot be read" in only(rep, "unreadable")


@pytest.mark.parametrize("name,frac", [("v.nii", 0.5), ("v.nii.gz", 0.5), ("w.nii.gz", 0.97)])
def test_truncated_nifti_is_unreadable(tmp_path, name, frac):
    img = truncate(nii(tmp_path / name, vol()), frac)
    rep = verify_datalist([{"image": img, "label": nii(tmp_path / "s.nii.gz", lab3d())}], num_classes=2)
    assert img in only(rep, "unreadable")


def test_mismatched_affine(tmp_path):
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    shifted = aff.copy()
    shifted[:3, 3] = [0.0, 0.0, 5.0]
    scaled = np.diag([1.0, 1.2, 2.0, 1.0])
    tiny = aff.copy()
    tiny[0, 3] = 1e-4  # within tolerance
    dl = [
        {"image": nii(tmp_path / "a.nii.gz", vol(), aff), "label": nii(tmp_path / "a_s.nii.gz", lab3d(), shifted)},
        {"image": nii(tmp_path / "b.nii.gz", vol(), aff), "label": nii(tmp_path / "b_s.nii.gz", lab3d(), scaled)},
        {"image": nii(tmp_path / "c.nii.gz", vol(), aff), "label": nii(tmp_path / "c_s.nii.gz", lab3d(), tiny)},
    ]
    rep = verify_datalist(dl, num_classes=2)
    assert [c.ok for c in rep.cases] == [False, False, True]
    assert [f.check for f in rep.cases[0].errors] == ["affine"]
    assert "origin image [0.0, 0.0, 0.0] vs label [0.0, 0.0, 5.0]" in str(rep.cases[0].errors[0])
    assert "spacing image [1.0, 1.0, 2.0] vs label [1.0, 1.2, 2.0]" in str(rep.cases[1].errors[0])


def test_label_value_7_in_2_class_task(tmp_path):
    m = mask()
    m[0, 0] = 7
    rep = verify_datalist(
        [{"image": png(tmp_path / "a.png", rgb()), "label": png(tmp_path / "m.png", m)}],
        num_classes=2, channel_def={"0": "background", "1": "lesion"},
    )
    s = only(rep, "label_values")
    assert "label values [7] outside range(2) (channel_def 0=background, 1=lesion)" in s
    assert "{7: 1}" in s  # voxel count of the bad value


def test_non_integer_label(tmp_path):
    lab = lab3d().astype(np.float32) * 0.5
    rep = verify_datalist([{"image": nii(tmp_path / "a.nii", vol()), "label": nii(tmp_path / "s.nii", lab)}],
                          num_classes=2)
    assert "non-integer values" in only(rep, "label_values")


def test_nan_slice_and_inf(tmp_path):
    v = vol()
    v[:, :, 3] = np.nan
    w = vol()
    w[1, 1, 6] = np.inf
    dl = [
        {"image": nii(tmp_path / "a.nii.gz", v), "label": nii(tmp_path / "a_s.nii.gz", lab3d())},
        {"image": nii(tmp_path / "b.nii.gz", w), "label": nii(tmp_path / "b_s.nii.gz", lab3d())},
    ]
    rep = verify_datalist(dl, num_classes=2)
    a, b = (str(c.errors[0]) for c in rep.cases)
    assert "120 NaN and 0 Inf values in 1 of 8 slices along axis 2 (slices [3])" in a
    assert "0 NaN and 1 Inf values" in b and "(slices [6])" in b


def test_shape_mismatch_and_missing_partners(tmp_path):
    img = png(tmp_path / "a.png", rgb())
    dl = [
        {"image": img, "label": png(tmp_path / "m.png", mask(24, 30))},
        {"image": png(tmp_path / "b.png", rgb()), "label": str(tmp_path / "nope_mask.png")},
        {"image": png(tmp_path / "c.png", rgb())},
        {"image": str(tmp_path / "missing.png"), "label": png(tmp_path / "m2.png", mask())},
        {"label": png(tmp_path / "m3.png", mask())},
    ]
    rep = verify_datalist(dl, num_classes=2)
    assert "image spatial shape (32, 24) != label spatial shape (30, 24)" in str(rep.cases[0].errors)
    assert "missing partner: label file" in str(rep.cases[1].errors) and "nope_mask.png" in str(rep.cases[1].errors)
    assert "missing partner: entry has no 'label'" in str(rep.cases[2].errors)
    assert "missing.png' does not exist" in str(rep.cases[3].errors)
    assert [f.check for f in rep.cases[4].errors] == ["entry"]
    assert len(rep.failed) == 5


def test_wrong_channel_count(tmp_path):
    rgba = np.dstack([rgb(), np.full((24, 32), 255, np.uint8)])
    gray = rgb()[..., 0]
    dl = [
        {"image": png(tmp_path / "a.png", rgba), "label": png(tmp_path / "m.png", mask())},
        {"image": png(tmp_path / "b.png", gray), "label": png(tmp_path / "m2.png", mask())},
        {"image": png(tmp_path / "c.png", rgb()), "label": png(tmp_path / "m3.png", mask())},
    ]
    rep = verify_datalist(dl, num_classes=2, image_channels=3)
    assert [c.ok for c in rep.cases] == [False, False, True]
    assert "image has 4 channel(s), expected 3" in str(rep.cases[0].errors)
    assert "image has 1 channel(s), expected 3" in str(rep.cases[1].errors)


def test_duplicates_by_path_and_by_content_across_splits(tmp_path):
    a = png(tmp_path / "a.png", rgb())
    shutil.copy(a, tmp_path / "copy_of_a.png")
    m = png(tmp_path / "m.png", mask())
    rep = verify_datalist(
        {"train": [{"image": a, "label": m}, {"image": a, "label": m}],
         "validate": [{"image": str(tmp_path / "copy_of_a.png"), "label": m}]},
        num_classes=2,
    )
    assert rep.cases[0].ok
    assert "is also used by train[0]" in str(rep.cases[1].errors)
    assert "has the same content as train[0]" in str(rep.cases[2].errors)
    assert rep.counts()["duplicate"] == 2


def test_empty_label_and_constant_image_are_warnings(tmp_path, caplog):
    rep = verify_datalist(
        [{"image": png(tmp_path / "a.png", np.full((24, 32, 3), 9, np.uint8)),
          "label": png(tmp_path / "m.png", np.zeros((24, 32), np.uint8))}],
        num_classes=2,
    )
    assert rep.ok
    assert sorted(f.check for f in rep.cases[0].warnings) == ["constant_image", "empty_label"]
    assert "label is empty" in caplog.text


def test_in_memory_arrays_and_raise_on_error():
    img = np.zeros((1, 8, 8), np.float32)
    img[0, 2, :] = np.nan
    with pytest.raises(DataVerificationError, match="NaN") as ei:
        verify_datalist([{"image": img, "label": np.ones((8, 8))}], num_classes=2, raise_on_error=True)
    assert ei.value.report.counts() == {"nonfinite": 1}


def _bad_and_good(tmp_path):
    good = [{"image": png(tmp_path / f"g{i}.png", rgb()), "label": png(tmp_path / f"g{i}_m.png", mask())}
            for i in range(2)]
    bad = good + [{"image": png(tmp_path / "b.png", rgb()), "label": png(tmp_path / "b_m.png", mask(value=7))}]
    return good, bad


def test_handler_refuses_training_before_first_iteration(tmp_path):
    good, bad = _bad_and_good(tmp_path)
    iterations = []
    trainer = Engine(lambda e, b: iterations.append(b))
    VerifyDataHandler(bad, num_classes=2).attach(trainer)
    with pytest.raises(DataVerificationError, match=r"training refused(.|\n)*case\[2\](.|\n)*\[7\]"):
        trainer.run([0, 1, 2], max_epochs=1)
    assert iterations == []

    trainer = Engine(lambda e, b: iterations.append(b))
    h = VerifyDataHandler(good, num_classes=2)
    h.attach(trainer)
    trainer.run([0, 1], max_epochs=1)
    assert iterations == [0, 1] and h.report.ok and len(h.report.cases) == 2

    trainer = Engine(lambda e, b: iterations.append(b))
    VerifyDataHandler(bad, num_classes=2, enabled=False).attach(trainer)
    trainer.run([5], max_epochs=1)
    assert iterations[-1] == 5


def _bundle(tmp_path):
    cfg = tmp_path / "bundle" / "configs"
    cfg.mkdir(parents=True)
    (cfg / "train.json").write_text(json.dumps({
        "dataset_dir": "/nonexistent",
        "images": "$sorted(glob.glob(@dataset_dir + '/*[0-9].png'))",
        "imports": ["$import glob"],
        "train": {"dataset": {"data": "$[{'image': i, 'label': i[:-4] + '_m.png'} for i in @images[:-1]]"}},
        "validate": {"dataset": {"data": "$[{'image': i, 'label': i[:-4] + '_m.png'} for i in @images[-1:]]"}},
    }))
    (cfg / "metadata.json").write_text(json.dumps({"network_data_format": {
        "inputs": {"image": {"num_channels": 3}},
        "outputs": {"pred": {"num_channels": 2, "channel_def": {"0": "background", "1": "lesion"}}}}}))
    return cfg / "train.json"


def test_cli_reads_bundle_config_with_dataset_dir_override(tmp_path, capsys):
    config = _bundle(tmp_path)
    good_dir, bad_dir = tmp_path / "good", tmp_path / "bad"
    good_dir.mkdir(), bad_dir.mkdir()
    for i in range(3):
        png(good_dir / f"c{i}.png", rgb()), png(good_dir / f"c{i}_m.png", mask())
    png(bad_dir / "c0.png", rgb()), png(bad_dir / "c0_m.png", mask(value=7))
    png(bad_dir / "c1.png", rgb()[..., 0]), png(bad_dir / "c1_m.png", mask())
    verify_data_cli(str(config), dataset_dir=str(good_dir))
    assert "3 case(s), 0 with errors" in capsys.readouterr().out  # 2 train + 1 validate
    report_file = tmp_path / "report.json"
    with pytest.raises(SystemExit) as ei:
        verify_data_cli(str(config), dataset_dir=str(bad_dir), report_file=str(report_file))
    assert ei.value.code == 1
    out = capsys.readouterr().out
    assert "label values [7] outside range(2) (channel_def 0=background, 1=lesion)" in out
    assert "image has 1 channel(s), expected 3" in out
    assert "ERROR train[0]" in out and "ERROR validate[0]" in out
    rep = json.loads(report_file.read_text())
    assert rep["ok"] is False and rep["counts"] == {"label_values": 1, "channels": 1}


def test_cli_entry_point_subprocess(tmp_path):
    config = _bundle(tmp_path)
    d = tmp_path / "data"
    d.mkdir()
    truncate(png(d / "c0.png", rgb(64, 64)))
    png(d / "c0_m.png", mask(64, 64))
    png(d / "c1.png", rgb(64, 64)), png(d / "c1_m.png", mask(64, 64))
    r = subprocess.run([sys.executable, "-m", "medurwkv_net", "verify-data", "--config_file", str(config),
                        "--dataset_dir", str(d), "--sections", "train"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "1 case(s), 1 with errors" in r.stdout and "unreadable" in r.stdout and "c0.png" in r.stdout


def test_cli_errors_name_the_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        verify_data_cli(str(tmp_path / "nope.json"))
    cfg = tmp_path / "c.json"
    cfg.write_text("{}")
    with pytest.raises(KeyError, match="train#dataset#data"):
        verify_data_cli(str(cfg))


def test_empty_datalist_is_an_error(tmp_path):
    rep = verify_datalist({"train": [], "validate": [{"image": png(tmp_path / "a.png", rgb()),
                                                      "label": png(tmp_path / "m.png", mask())}]}, num_classes=2)
    assert not rep.ok
    assert rep.problems == ["datalist 'train' is empty: no case to train/validate on (wrong dataset_dir?)"]
    assert "ERROR datalist 'train' is empty" in rep.summary()


def test_truncated_png_found_even_if_pil_allows_truncated_images(tmp_path, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    img = truncate(png(tmp_path / "a.png", rgb(64, 64)))
    rep = verify_datalist([{"image": img, "label": png(tmp_path / "m.png", mask(64, 64))}], num_classes=2)
    assert img in only(rep, "unreadable")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global setting is left as it was


def test_mask_mode_union_threshold_and_instance_ids(tmp_path):
    img = png(tmp_path / "a.png", rgb())
    m255 = png(tmp_path / "a_mask.png", mask() * 255)
    m255b = png(tmp_path / "a_mask_1.png", np.zeros((24, 32), np.uint8))
    ids = mask() * 3
    ids[14:18, 20:25] = 9  # GlaS instance ids
    dl = [
        {"image": img, "label": [m255, m255b]},                                          # BUSI union: ok
        {"image": png(tmp_path / "b.png", rgb()), "label": png(tmp_path / "b_m.png", ids)},
        {"image": png(tmp_path / "c.png", rgb()), "label": png(tmp_path / "c_m.png", mask() * 7)},
        {"image": png(tmp_path / "d.png", rgb()), "label": [m255, png(tmp_path / "d_m1.png", mask(24, 30))]},
    ]
    rep = verify_datalist(dl, num_classes=2, label_mode="mask")
    assert rep.cases[0].ok and not rep.cases[0].warnings
    # GlaS ids 3 and 9 under the automatic threshold (> 127): flagged; GlaS bundles use label_threshold=0
    assert rep.cases[1].ok and "(max 9) but none above the threshold auto (127)" in str(rep.cases[1].warnings)
    assert rep.cases[2].ok and "mask has non-zero values (max 7) but none above the threshold auto (127)" in str(
        rep.cases[2].warnings)
    assert "label 'd_m1.png' spatial shape (30, 24)" in str(rep.cases[3].errors).replace(str(tmp_path) + "/", "")
    rep = verify_datalist(dl[1:3], num_classes=2, label_mode="mask", label_threshold=0)
    assert rep.ok and not rep.warned
    with pytest.raises(ValueError, match="label_mode='mask' gives 2 classes"):
        verify_datalist(dl, num_classes=3, label_mode="mask")


def test_allowed_channels(tmp_path):
    dl = [{"image": png(tmp_path / f"{n}.png", a), "label": png(tmp_path / f"{n}_m.png", mask())}
          for n, a in [("g", rgb()[..., 0]), ("rgb", rgb()), ("rgba", np.dstack([rgb(), rgb()[..., 0]]))]]
    assert verify_datalist(dl, num_classes=2, allowed_channels=[1, 2, 3, 4]).ok
    rep = verify_datalist(dl, num_classes=2, allowed_channels=[1, 3])
    assert [c.ok for c in rep.cases] == [True, True, False]
    assert "image has 4 channel(s), expected one of [1, 3]" in str(rep.cases[2].errors)


def test_cli_uses_the_bundles_verify_handler_settings(tmp_path, capsys):
    config = _bundle(tmp_path)
    cfg = json.loads(config.read_text())
    cfg["train"]["handlers"] = [{"_target_": "medurwkv_net.reliability.VerifyDataHandler",
                                 "datalist": "@train#dataset#data", "label_mode": "mask",
                                 "allowed_channels": [1, 3], "num_classes": 2}]
    config.write_text(json.dumps(cfg))
    d = tmp_path / "d"
    d.mkdir()
    for i in range(2):
        png(d / f"c{i}.png", rgb()[..., 0]), png(d / f"c{i}_m.png", mask() * 255)  # grey, 0/255 masks
    verify_data_cli(str(config), dataset_dir=str(d))
    assert "2 case(s), 0 with errors, 0 with warnings" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the command line wins over the handler's settings
        verify_data_cli(str(config), dataset_dir=str(d), label_mode="index")
    assert "label values [255] outside range(2)" in capsys.readouterr().out


def test_multi_file_image_channels(tmp_path):
    t1, t2 = nii(tmp_path / "t1.nii.gz", vol()), nii(tmp_path / "t2.nii.gz", vol())
    small = nii(tmp_path / "small.nii.gz", vol((10, 12, 7)))
    seg = nii(tmp_path / "seg.nii.gz", lab3d())
    rep = verify_datalist([{"image": [t1, t2], "label": seg},
                           {"image": [t1.replace("t1", "t1b"), small], "label": seg}],
                          num_classes=2, image_channels=2, check_duplicates=False)
    assert rep.cases[0].ok, rep.summary()
    assert "t1b.nii.gz' does not exist" in str(rep.cases[1].errors)
    rep = verify_datalist([{"image": [t1, small], "label": seg}], num_classes=2, check_duplicates=False)
    assert "image files have different spatial shapes [(10, 12, 7), (10, 12, 8)]" in rep.summary()


def test_each_list_checked_with_its_own_rank_and_declared_empty_labels(tmp_path):
    """Slices (2D) and volumes (3D) in one datalist: a mapping of spatial_dims checks each list with its own
    rank, and ``empty_labels_expected`` silences the empty-label warning only for the lists it names."""
    flat = lab3d()[:, :, 0] * 0
    lists = {
        "slices": [{"image": nii(tmp_path / "s.nii.gz", vol()[:, :, 0]), "label": nii(tmp_path / "sl.nii.gz", flat)}],
        "volumes": [{"image": nii(tmp_path / "v.nii.gz", vol()), "label": nii(tmp_path / "vl.nii.gz", lab3d() * 0)}],
    }
    rep = verify_datalist(lists, num_classes=2, spatial_dims={"slices": 2, "volumes": 3},
                          empty_labels_expected=["slices"])
    assert rep.ok, rep.summary()
    assert [c.case_id for c in rep.warned] == ["volumes[0]"]  # the volume's empty label is still reported
    summary = only(verify_datalist(lists, num_classes=2, spatial_dims=2), "dims")
    assert "volumes[0]" in summary and "slices[0]" not in summary.split("ERROR", 1)[1]


def test_datalist_declares_its_lists_ranks_for_the_cli_and_the_file_check(tmp_path, capsys):
    from medurwkv_net.reliability import verify_datalist_file

    dl = {"training": [{"image": "s.nii.gz", "label": "sl.nii.gz"}],
          "test": [{"image": "v.nii.gz", "label": "vl.nii.gz"}],
          "spatial_dims": {"training": 2, "test": 3}, "empty_labels_expected": ["training"]}
    nii(tmp_path / "s.nii.gz", vol()[:, :, 0])
    nii(tmp_path / "sl.nii.gz", mask(10, 12) * 0)
    nii(tmp_path / "v.nii.gz", vol())
    nii(tmp_path / "vl.nii.gz", lab3d())
    (tmp_path / "datalist.json").write_text(json.dumps(dl))
    assert verify_datalist_file(tmp_path / "datalist.json", tmp_path, num_classes=2, spatial_dims=2)
    config = {"dataset_dir": str(tmp_path / "release"), "datalist_file": str(tmp_path / "datalist.json"),
              "spatial_size": [32, 32]}
    (tmp_path / "release").mkdir()
    (tmp_path / "train.json").write_text(json.dumps(config))
    verify_data_cli(str(tmp_path / "train.json"), num_classes=2)  # files beside the datalist are inside
    out = capsys.readouterr().out
    assert "0 with errors, 0 with warnings" in out, out
    dl["spatial_dims"] = {"training": 2}  # the volumes then take the config's 2D
    (tmp_path / "datalist.json").write_text(json.dumps(dl))
    with pytest.raises(DataVerificationError, match=r"test\[0\].*\n.*dims: image has 3 spatial dimension"):
        verify_datalist_file(tmp_path / "datalist.json", tmp_path, num_classes=2, spatial_dims=2)
