"""multi_gpu_train.json under torchrun: 2 processes on CPU with the gloo backend."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from medurwkv_net.data import mni152

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "medurwkv_mni152_tissue"


def test_torchrun_two_ranks_gloo_one_checkpoint(tmp_path):
    bundle = tmp_path / "medurwkv_mni152_tissue"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("models", "eval", "data", "runs"))
    data = tmp_path / "data"
    mni152.prepare(data)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run",
        "--config_file", "['configs/train.json','configs/multi_gpu_train.json']",
        "--dataset_dir", str(data),
        "--max_epochs", "1", "--spatial_size", "[64,64]", "--num_samples", "1", "--batch_size", "1",
        "--train#dataset#data", "$monai.data.load_decathlon_datalist(@datalist_file, True, 'training')[::30]",
        "--validate#dataset#data", "$monai.data.load_decathlon_datalist(@datalist_file, True, 'validation')[::6]",
        "--validate#inferer#overlap", "0.0",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=900, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]  # torchrun fails unless every rank exits 0
    assert "rank 0 of 2 (gloo)" in out and "rank 1 of 2 (gloo)" in out
    assert out.count("Engine run finished") >= 2  # trainer finished on both ranks
    # reports and the best model come from rank 0 only
    assert out.count("val_mean_dice per class") == 1
    assert sorted(p.name for p in (bundle / "models").glob("*.pt")) == ["model.pt"]
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # the unwrapped network, loadable without DDP
    assert (bundle / "eval" / "curves.png").is_file()
