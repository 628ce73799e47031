"""prepare-data and verify-data on the bundles' configs: every split checked, truncated files named, one
message per failure (no traceback through the config machinery)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_releases import make_release  # noqa: E402

from medurwkv_net.cli.prepare_data import prepare_data_cli  # noqa: E402
from medurwkv_net.reliability.errors import DatasetError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bundle(tmp_path, dataset):
    b = tmp_path / "bundle"
    shutil.copytree(REPO / "bundles" / f"medurwkv_{dataset}", b, ignore=shutil.ignore_patterns("models", "eval"))
    return b


def _verify(bundle: Path, dataset_dir, *extra):
    return subprocess.run([sys.executable, "-m", "medurwkv_net", "verify-data", "--config_file",
                           str(bundle / "configs" / "train.json"), "--dataset_dir", str(dataset_dir),
                           "--bundle_root", str(bundle), *extra], capture_output=True, text=True, timeout=300)


def test_verify_data_checks_every_split_and_names_a_truncated_test_jpeg(tmp_path):
    rel = make_release("isic2017", tmp_path / "rel")
    grey = rel.release_root / "ISIC-2017_Training_Data" / "ISIC_0000000.jpg"
    with Image.open(grey) as im:  # a grey image in the 3-channel bundle: converted by training, so valid
        im.convert("L").save(grey)
    bundle = _bundle(tmp_path, "isic2017")
    r = _verify(bundle, rel.dataset_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    table = r.stdout.splitlines()
    assert table[0].split() == ["split", "cases", "errors", "warnings"]
    assert [line.split()[:3] for line in table[1:4]] == [["training", "4", "0"], ["validation", "2", "0"],
                                                         ["test", "2", "0"]]
    # the datalist exists: a test image truncated afterwards is caught by verify-data, with its file
    test_jpeg = rel.release_root / "ISIC-2017_Test_v2_Data" / "ISIC_0000007.jpg"
    _truncate(test_jpeg)
    r = _verify(bundle, rel.dataset_dir)
    assert r.returncode == 1
    assert "test" in r.stdout and str(test_jpeg) in r.stdout and "truncated" in r.stdout, r.stdout
    assert "Traceback" not in r.stderr
    # and by prepare-data, which decodes every file of every split
    with pytest.raises(DatasetError, match=rf"isic2017 test case 'ISIC_0000007': image '{test_jpeg}' cannot be "
                                           r"read \(truncated or corrupt\?\)"):
        prepare_data_cli("isic2017", str(rel.dataset_dir), output=str(tmp_path / "dl.json"))


def test_verify_data_accepts_an_rgb_radiograph_in_the_one_channel_tdd_bundle(tmp_path):
    rel = make_release("tdd", tmp_path / "rel", n=6)
    one = next((rel.release_root / "Radiographs").iterdir())
    with Image.open(one) as im:
        im.convert("RGB").save(one, format="JPEG")
    r = _verify(_bundle(tmp_path, "tdd"), rel.dataset_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 with errors" in r.stdout


def test_errors_are_one_message_naming_the_file(tmp_path):
    rel = make_release("busi", tmp_path / "rel")
    missing = rel.release_root / "benign" / "benign (1)_mask.png"
    missing.unlink()
    bundle = _bundle(tmp_path, "busi")
    env = {k: v for k, v in os.environ.items() if k != "MEDURWKV_DEBUG"}
    r = subprocess.run([sys.executable, "-m", "medurwkv_net", "prepare-data", "busi", str(rel.dataset_dir),
                        "--output", str(tmp_path / "dl.json")], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"no first mask '{missing}'" in r.stderr and len(r.stderr.strip().splitlines()) == 2, r.stderr
    r = _verify(bundle, rel.dataset_dir)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "ConfigExpression" not in r.stderr, r.stderr
    assert f"no first mask '{missing}'" in r.stderr and len(r.stderr.strip().splitlines()) == 2, r.stderr
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                        "configs/train.json", "--dataset_dir", str(rel.dataset_dir), "--bundle_root", str(bundle),
                        "--pretrained", "False", "--device", "$torch.device('cpu')"],
                       cwd=bundle, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()
    assert last[-2].startswith("error: ") and f"no first mask '{missing}'" in last[-2], r.stderr[-3000:]
    assert not (bundle / "datalist.json").exists()


def test_evaluation_datalist_check_names_a_truncated_test_jpeg(tmp_path):
    """Evaluation reads the test split through verify_datalist_file (the bundles' verified_datalist): a test
    image truncated after the datalist was written is refused with its file, before any dataset loads it."""
    from medurwkv_net.reliability import DataVerificationError, verify_datalist_file

    rel = make_release("kvasir", tmp_path / "rel", n=10)
    out = prepare_data_cli("kvasir", str(rel.dataset_dir), output=str(tmp_path / "dl.json"))
    test_jpeg = Path(json.loads(Path(out).read_text())["test"][0]["image"])
    _truncate(test_jpeg)
    with pytest.raises(DataVerificationError, match=rf"(?s)test\[0\].*image file '{test_jpeg}' cannot be read"):
        verify_datalist_file(out, rel.dataset_dir, num_classes=2, spatial_dims=2, label_mode="mask",
                             image_channels=3, convert_channels=True, eight_bit=True)
