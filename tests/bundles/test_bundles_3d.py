"""The volumetric bundles (bundles/medurwkv_mni152_tissue_3d, bundles/medurwkv_msd) through
``python -m monai.bundle run`` on tiny synthetic volumes: train 1 epoch, evaluate (per-case CSV), infer with a
sliding window (masks in the input's size); plus the two 3D data readers on their real / synthetic layouts."""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medurwkv_net.data import mni152_volume, msd
from medurwkv_net import MedURWKV

sys.path.insert(0, str(Path(__file__).parent))
from test_demo_bundle import NO_HUB, bundle_run  # noqa: E402  (the 2D bundle tests' runner)

REPO = Path(__file__).resolve().parents[2]
TINY_NET = ["--network_def#feature_size", "16", "--network_def#bottleneck_depth", "1",
            "--network_def#decoder_depths", "[1,1,1]", "--spatial_size", "[32,32,16]"]
FILES = ("LICENSE", "configs/metadata.json", "configs/train.json", "configs/evaluate.json", "configs/inference.json",
         "configs/multi_gpu_train.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt")


def _volume(shape, rng, n_classes, channels=1):
    """Image whose intensity encodes the label (so the tiny run can learn something) and its label map."""
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = np.sqrt(zz**2 + yy**2 + xx**2) + 0.1 * rng.standard_normal(shape)
    label = np.digitize(r, np.linspace(0.3, 0.9, n_classes - 1)[::-1] * -1 + 1.2).astype(np.uint8) % n_classes
    img = (label * 60 + 20 * rng.standard_normal(shape)).astype(np.float32)
    if channels > 1:
        img = np.stack([img * (c + 1) for c in range(channels)], -1)
    return img, label


def _save(path: Path, arr: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([1.5, 1.5, 2.0, 1.0])), str(path))


def _copy_bundle(name: str, tmp: Path) -> Path:
    dst = tmp / name
    shutil.copytree(REPO / "bundles" / name, dst, ignore=shutil.ignore_patterns("models", "eval", "data", "runs"))
    return dst


@pytest.mark.parametrize("name", ["medurwkv_mni152_tissue_3d", "medurwkv_msd"])
def test_file_set_and_metadata(name):
    root = REPO / "bundles" / name
    for rel in FILES:
        assert (root / rel).is_file(), rel
    meta = json.loads((root / "configs/metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    assert list(fmt["inputs"]) == ["image"] and list(fmt["outputs"]) == ["pred"]
    assert len(fmt["inputs"]["image"]["spatial_shape"]) == 3
    train = json.loads((root / "configs/train.json").read_text())
    infer = json.loads((root / "configs/inference.json").read_text())
    for key in ("bundle_root", "dataset_dir", "ckpt_dir", "device", "network_def", "network", "initialize", "run",
                "train", "validate"):
        assert key in train, key
    for key in ("network_def", "preprocessing", "postprocessing", "inferer", "evaluator"):
        assert key in infer, key
    assert train["network_def"]["spatial_dims"] == infer["network_def"]["spatial_dims"] == 3
    for cfg in (root / "configs").glob("*.json"):
        assert "/work/" not in cfg.read_text() and "/tmp/" not in cfg.read_text(), cfg


def test_mni152_volume_slabs_from_the_template(tmp_path):
    path = Path(mni152_volume.prepare(tmp_path))
    dl = json.loads(path.read_text())
    ranges = {k: [tuple(e["z"]) for e in dl[k]] for k in ("training", "validation", "test")}
    assert len(ranges["training"]) >= 2 and ranges["validation"] and ranges["test"]
    flat = sorted((r, k) for k, rs in ranges.items() for r in rs)
    for (a, ka), (b, kb) in zip(flat, flat[1:]):
        assert b[0] - a[1] >= mni152_volume.GAP  # disjoint, gapped slabs
    kinds = [k for _, k in flat]
    for i, k in enumerate(kinds):  # every held-out slab lies between two training slabs
        if k != "training":
            assert 0 < i < len(kinds) - 1 and kinds[i - 1] == kinds[i + 1] == "training", kinds
    img = nib.load(tmp_path / dl["test"][0]["image"])
    lab = nib.load(tmp_path / dl["test"][0]["label"])
    assert img.shape == lab.shape and img.shape[2] == mni152_volume.SLAB and img.shape[0] < 197
    assert set(np.unique(np.asarray(lab.dataobj))) == {0, 1, 2}
    # the slab's affine places it in MNI space: its first voxel is voxel (x0, y0, z0) of the template
    from medurwkv_net.data.mni152 import load_template

    t1, _, _, affine = load_template()
    vox = np.linalg.inv(affine) @ img.affine @ np.array([0, 0, 0, 1.0])
    x0, y0, z0 = (int(round(v)) for v in vox[:3])
    assert z0 == dl["test"][0]["z"][0]
    expected = t1[x0:x0 + img.shape[0], y0:y0 + img.shape[1], z0:z0 + mni152_volume.SLAB]
    np.testing.assert_array_equal(np.asarray(img.dataobj), expected)
    stamp = path.stat().st_mtime_ns
    assert mni152_volume.prepare(tmp_path) == str(path) and path.stat().st_mtime_ns == stamp


def test_mni152_3d_bundle_train_evaluate_infer(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "synthetic"
    lists = {}
    for split, n in (("training", 2), ("validation", 1), ("test", 2)):
        lists[split] = []
        for i in range(n):
            img, lab = _volume((40 + i, 36, 20 - i), rng, 3)
            _save(data / "images" / f"{split}{i}.nii.gz", img)
            _save(data / "labels" / f"{split}{i}.nii.gz", lab)
            lists[split].append({"image": f"images/{split}{i}.nii.gz", "label": f"labels/{split}{i}.nii.gz"})
    (data / "datalist.json").write_text(json.dumps(lists))
    bundle = _copy_bundle("medurwkv_mni152_tissue_3d", tmp_path)
    own_data = ["--datalist_file", str(data / "datalist.json"), "--prepare_data", "False"]  # a datalist of one's own
    out = bundle_run(bundle, "run", "training", "--config_file", "configs/train.json", "--max_epochs", "1",
                     "--num_samples", "1", "--samples_per_epoch", "4", *own_data, *TINY_NET)
    assert "val_mean_dice_grey_matter" in out and "test_mean_dice" not in out  # training never reads the test split
    assert "[4/4]" in out and "[5/" not in out  # an epoch is samples_per_epoch draws, not one pass over 2 volumes
    assert not (bundle / "data").exists()
    state = torch.load(bundle / "models/model.pt", map_location="cpu", weights_only=True)
    MedURWKV(spatial_dims=3, in_channels=1, out_channels=3, img_size=[64, 64, 16], patch_size=[16, 16, 4],
             feature_size=16, bottleneck_depth=1, decoder_depths=(1, 1, 1)).load_state_dict(state)  # plain, strict
    bundle_run(bundle, "run", "--config_file", "['configs/train.json','configs/evaluate.json']", *own_data, *TINY_NET,
               env=NO_HUB)
    rows = list(csv.reader(open(bundle / "eval" / "test_mean_dice_raw.csv")))
    assert len(rows) == 1 + 2  # header + one row per test volume
    bundle_run(bundle, "run", "--config_file", "configs/inference.json", "--input_dir", str(data / "images"),
               "--output_dir", str(tmp_path / "pred"), *TINY_NET, env=NO_HUB)
    for src in sorted((data / "images").glob("*.nii.gz")):
        pred = nib.load(tmp_path / "pred" / src.name.replace(".nii.gz", "_seg.nii.gz"))
        assert pred.shape == nib.load(src).shape  # sliding window over the whole volume, original size
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
        np.testing.assert_allclose(pred.affine, nib.load(src).affine)


def _msd_task(root: Path, rng, modalities=("FLAIR", "T1w")) -> Path:
    task = root / "Task99_Synthetic"
    channels = len(modalities)
    training = []
    for i in range(6):
        img, lab = _volume((34 + 2 * i, 30, 18), rng, 3, channels=channels)
        _save(task / "imagesTr" / f"syn_{i:03d}.nii.gz", img)
        _save(task / "labelsTr" / f"syn_{i:03d}.nii.gz", lab)
        training.append({"image": f"./imagesTr/syn_{i:03d}.nii.gz", "label": f"./labelsTr/syn_{i:03d}.nii.gz"})
    img, _ = _volume((33, 29, 17), rng, 3, channels=channels)
    _save(task / "imagesTs" / "syn_100.nii.gz", img)
    (task / "imagesTr" / "._syn_000.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork in the archives
    (task / "dataset.json").write_text(json.dumps({
        "name": "Synthetic", "modality": {str(i): m for i, m in enumerate(modalities)},
        "labels": {"0": "background", "1": "core", "2": "rim"}, "numTraining": 6, "numTest": 1,
        "training": training, "test": ["./imagesTs/syn_100.nii.gz"]}))
    return task


def test_msd_reader_layout_and_errors(tmp_path):
    task = _msd_task(tmp_path, np.random.default_rng(1))
    assert msd.find_task(tmp_path) == task.resolve()
    dl = json.loads(Path(msd.prepare(tmp_path, tmp_path / "dl.json")).read_text())
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [4, 1, 1]
    names = {Path(c["image"]).name for k in ("training", "validation", "test") for c in dl[k]}
    assert len(names) == 6 and "._syn_000.nii.gz" not in names
    assert dl["official_test"] == [{"image": str((task / "imagesTs/syn_100.nii.gz").resolve())}]
    assert dl["labels"] == {"0": "background", "1": "core", "2": "rim"}
    (task / "labelsTr" / "syn_003.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="label './labelsTr/syn_003.nii.gz' listed in dataset.json"):
        msd.prepare(task)
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        msd.find_task(tmp_path / "Task99_Synthetic" / "imagesTr")


def test_msd_bundle_train_evaluate_infer(tmp_path):
    task = _msd_task(tmp_path / "data", np.random.default_rng(2), modalities=("CT",))
    bundle = _copy_bundle("medurwkv_msd", tmp_path)
    # the bundle is configured for Task09_Spleen (2 classes): another task must say its classes
    failed = bundle_run(bundle, "run", "training", "--config_file", "configs/train.json", "--dataset_dir", str(task),
                        "--max_epochs", "1", *TINY_NET, check=False)
    assert "MSD Task99_Synthetic has 3 labels ['background', 'core', 'rim']" in failed and "--out_channels 3" in failed
    task_ids = ["--class_names", "['background','core','rim']", "--out_channels", "3"]
    out = bundle_run(bundle, "run", "training", "--config_file", "configs/train.json", "--dataset_dir", str(task),
                     "--max_epochs", "1", "--num_samples", "1", *task_ids, *TINY_NET)
    assert "val_mean_dice_core" in out and "val_mean_dice_rim" in out
    state = torch.load(bundle / "models/model.pt", map_location="cpu", weights_only=True)
    assert state["encoder.patch_embed.projection.weight"].shape[1] == 1
    assert state["out.weight"].shape[0] == 3
    bundle_run(bundle, "run", "--config_file", "['configs/train.json','configs/evaluate.json']",
               "--dataset_dir", str(task), *task_ids, *TINY_NET, env=NO_HUB)
    assert len(list(csv.reader(open(bundle / "eval" / "test_mean_dice_raw.csv")))) == 2
    bundle_run(bundle, "run", "--config_file", "configs/inference.json", "--input_dir", str(task / "imagesTs"),
               "--out_channels", "3", "--output_dir", str(tmp_path / "pred"), *TINY_NET, env=NO_HUB)
    pred = nib.load(tmp_path / "pred" / "syn_100_seg.nii.gz")
    assert pred.shape == (33, 29, 17) and set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


def test_mni152_3d_multi_gpu_epoch_is_samples_per_epoch_over_the_ranks(tmp_path, monkeypatch):
    """The multi-GPU overlay keeps an epoch at ``samples_per_epoch`` draws in all, split over the ranks."""
    import torch.distributed as dist
    from monai.bundle import ConfigParser

    configs = REPO / "bundles" / "medurwkv_mni152_tissue_3d" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "multi_gpu_train.json")])
    parser["train#dataset"] = list(range(5))  # five training slabs
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        sampler = parser.get_parsed_content("train#sampler")
        assert len(list(iter(sampler))) == parser["samples_per_epoch"] == 30
        assert set(iter(sampler)) <= set(range(5))
    finally:
        dist.destroy_process_group()
