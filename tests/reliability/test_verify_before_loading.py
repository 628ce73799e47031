"""The data check runs before any dataset reads a file, on every split, and names each bad entry."""
import json
import os

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from medurwkv_net.cli.verify_data import verify_data_cli
from medurwkv_net.reliability import DataVerificationError, verify_datalist, verify_datalist_file

DEMO_TRAIN = os.path.join(os.path.dirname(__file__), "..", "..", "bundles", "medurwkv_mni152_tissue", "configs",
                          "train.json")


def _nifti(path, shape, value=0.5, dtype=np.float32):
    arr = np.full(shape, value, dtype=dtype)
    if arr.ndim >= 2:
        arr[: shape[0] // 2] = 0
    nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
    return str(path)


def _dataset(root, n=3):
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        img = _nifti(root / f"c{i}.nii.gz", (20, 24), value=0.5 + 0.1 * i)
        lab = _nifti(root / f"c{i}_seg.nii.gz", (20, 24), value=1, dtype=np.uint8)
        cases.append({"image": img, "label": lab})
    return cases


def _write(root, **splits):
    path = root / "datalist.json"
    path.write_text(json.dumps(splits))
    return path


def test_symlink_loop_and_path_outside_the_dataset_folder_are_errors_naming_the_entry(tmp_path):
    root = tmp_path / "data"
    cases = _dataset(root)
    os.symlink(root / "loop_b.nii.gz", root / "loop_a.nii.gz")
    os.symlink(root / "loop_a.nii.gz", root / "loop_b.nii.gz")
    outside = _nifti(tmp_path / "elsewhere.nii.gz", (20, 24), value=1, dtype=np.uint8)
    cases[1]["image"] = str(root / "loop_a.nii.gz")
    cases[2]["label"] = str(root / ".." / "elsewhere.nii.gz")
    report = verify_datalist({"training": cases}, num_classes=2, dataset_dir=root)
    assert [c.case_id for c in report.failed] == ["training[1]", "training[2]"]
    assert str(report.failed[0].errors[0]) == (
        f"symlink: image file '{root / 'loop_a.nii.gz'}' is a symbolic link loop; fix or remove the link")
    msg = str(report.failed[1].errors[0])
    assert msg.startswith(f"outside: label file '{root / '..' / 'elsewhere.nii.gz'}' is outside the dataset folder "
                          f"'{root}' (it is '{outside}')"), msg


def test_verify_data_cli_reports_a_symlink_loop_instead_of_crashing(tmp_path, capsys):
    root = tmp_path / "data"
    cases = _dataset(root)
    os.symlink(root / "x.nii.gz", root / "x.nii.gz")
    cases[0]["label"] = str(root / "x.nii.gz")
    datalist = _write(root, training=cases[1:], validation=cases[:1])
    config = tmp_path / "train.json"
    config.write_text(json.dumps({
        "dataset_dir": str(root), "spatial_size": [16, 16], "label_mode": "index",
        "train": {"dataset": {"data": f"$monai.data.load_decathlon_datalist('{datalist}', True, 'training')"}},
        "validate": {"dataset": {"data": f"$monai.data.load_decathlon_datalist('{datalist}', True, 'validation')"}},
    }))
    with pytest.raises(SystemExit) as info:
        verify_data_cli(str(config), num_classes=2)
    assert info.value.code == 1
    out = capsys.readouterr().out
    assert "ERROR validate[0]" in out and f"label file '{root / 'x.nii.gz'}' is a symbolic link loop" in out


@pytest.mark.parametrize("fault", ["4d", "short_header", "no_image_key", "outside"])
def test_the_demo_config_refuses_bad_data_before_a_dataset_loads_it(tmp_path, fault):
    root = tmp_path / "data"
    cases = _dataset(root)
    bad = {"test": cases[2:]}  # the fault sits in the test split, which training only reads at the very end
    if fault == "4d":
        bad["test"] = [{"image": _nifti(root / "v.nii.gz", (20, 24, 5, 2)), "label": cases[2]["label"]}]
        expect = "image has 3 spatial dimension(s) (spatial shape (20, 24, 5), 2 channel(s)), the network takes 2D"
    elif fault == "short_header":
        data = (root / "c2.nii.gz").read_bytes()
        import gzip
        raw = gzip.decompress(data)
        (root / "c2.nii").write_bytes(raw[: len(raw) - 200])  # the header claims more voxels than the file has
        bad["test"] = [{"image": str(root / "c2.nii"), "label": cases[2]["label"]}]
        expect = f"image file '{root / 'c2.nii'}' cannot be read"
    elif fault == "outside":
        _nifti(tmp_path / "elsewhere.nii.gz", (20, 24), value=0.9)
        bad["test"] = [{"image": "../elsewhere.nii.gz", "label": cases[2]["label"]}]  # relative to the datalist
        expect = f"image file '{tmp_path / 'elsewhere.nii.gz'}' is outside the dataset folder '{root}'"
    else:
        bad["test"] = [{"img": cases[2]["image"], "label": cases[2]["label"]}]
        expect = "entry has no 'image' key (keys: ['img', 'label'])"
    datalist = _write(root, training=cases[:1], validation=cases[1:2], **bad)
    parser = ConfigParser()
    parser.read_config(DEMO_TRAIN)
    parser["datalist_file"] = str(datalist)  # a datalist of one's own: --datalist_file X --prepare_data False
    parser["prepare_data"] = False
    parser["dataset_dir"] = str(root)
    with pytest.raises(RuntimeError) as info:  # MONAI's ConfigExpression wraps what an expression raises
        parser.get_parsed_content("train#dataset")  # the CacheDataset of the training split
    cause = info.value
    while cause is not None and not isinstance(cause, DataVerificationError):
        cause = cause.__cause__
    assert cause is not None, info.value
    msg = str(cause)
    assert msg.startswith(f"training refused: the datalist '{datalist}' failed verification"), msg
    assert "ERROR test[0]" in msg and expect in msg, msg


def test_verified_datalist_is_returned_unchanged_and_the_handler_does_not_repeat_the_check(tmp_path, caplog):
    from medurwkv_net.reliability import VerifyDataHandler

    root = tmp_path / "data"
    cases = _dataset(root)
    datalist = _write(root, training=cases[:2], validation=cases[2:])
    assert verify_datalist_file(datalist, root, num_classes=2, spatial_dims=2) == str(datalist)
    import logging
    with caplog.at_level(logging.INFO):
        VerifyDataHandler(cases[:2], num_classes=2)()
    assert "2 case(s) already verified before loading" in caplog.text
