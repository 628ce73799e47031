"""3D demo bundle benchmark: Med-URWKV-3D, MONAI's 3D BasicUNet and SwinUNETR, same recipe, same budget, same run.

Every network is trained with the 3D demo bundle's own train.json (slabs of the MNI152 template, patches,
transforms, AdamW + poly LR, Dice + CE, validation every epoch, best-checkpoint selection); only
``network_def`` differs. Training stops at ``max_epochs`` or after the last epoch that fits the budget, then
the bundle's evaluate.json scores the best checkpoint on the test slab (mechanics: ``bench_demo.py``).
SwinUNETR uses ``feature_size=24`` (48 does not fit a 2-core CPU budget) and needs every axis of its input
divisible by 32, so it trains and validates on the bundle's patch rounded up to 32 in depth (the slabs are
zero padded by the bundle's ``SpatialPadd`` and the sliding window); the other networks take any size.

    python benchmarks/bench_demo_3d.py --budget_s 900 --out benchmarks/results

writes ``demo3d_<time>.json`` and ``demo3d_<time>.md`` (a table with the lowest per-class validation Dice
after epoch 5, the stability criterion of the 3D demo) under ``--out``.
"""
from __future__ import annotations

import json
from pathlib import Path

from bench_demo import run

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "medurwkv_mni152_tissue_3d"
SPATIAL_SIZE = json.loads((BUNDLE / "configs" / "train.json").read_text())["spatial_size"]
NETWORKS = {
    "MedURWKV-3D-T": None,  # the bundle's own network_def
    "BasicUNet-3D": {"_target_": "monai.networks.nets.BasicUNet", "spatial_dims": 3, "in_channels": "@in_channels",
                     "out_channels": "@out_channels"},
    "SwinUNETR-24": {
        "network_def": {"_target_": "monai.networks.nets.SwinUNETR", "spatial_dims": 3,
                        "in_channels": "@in_channels", "out_channels": "@out_channels", "feature_size": 24},
        "overrides": {"spatial_size": "$[-(-s // 32) * 32 for s in " + repr(SPATIAL_SIZE) + "]"},
    },
}


def main() -> None:
    from medurwkv_net.data import mni152_volume

    run(BUNDLE, NETWORKS, mni152_volume.prepare, "demo3d", __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
