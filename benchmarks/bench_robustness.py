"""Robustness benchmark: the demo bundle's networks scored on clean and degraded MRI test slices.

Med-URWKV (the bundle's ``network_def``) and MONAI's BasicUNet are trained with the demo bundle's own
train.json (same data, augmentation chain, loss, optimiser and schedule) in the same run
(:func:`bench_demo.train_one`), then the bundle's evaluate.json scores each best checkpoint on the test
slices as prepared and on copies of them with one degradation applied. Every degradation is applied to
the whole 1 mm T1 template volume (so that blur and resampling act in 3D, as in an acquisition), then
the test slices are cut from it and saved as float32 NIfTI in place of the clean ones; labels are the
clean labels.

    python benchmarks/bench_robustness.py --out benchmarks/results

writes ``robustness_<time>.json`` and ``robustness_<time>.md``. The degradations (:data:`DEGRADATIONS`)
and how they differ from the training augmentations (``train#random_transforms``):

* ``bias``: a smooth multiplicative intensity non-uniformity, 40 % peak to peak over the brain (the
  field spans 0.8..1.2; BrainWeb's strongest "RF non-uniformity" level, about what an uncorrected
  1.5 T head scan shows). Built from random low-frequency 3D cosines (wavelengths of one to two
  fields of view). Training uses MONAI's ``RandBiasFieldd``: the exponential of a degree-3 Legendre
  polynomial in the 2D slice with coefficients in [-0.1, 0.1], at probability 0.1 (another family of
  fields, sampled per slice, never scaled to a fixed peak to peak).
* ``rician3`` / ``rician5``: Rician (magnitude) noise with sigma 3 % / 5 % of the volume's maximum,
  as in magnitude MR images. Training adds Gaussian noise (``RandGaussianNoised``, zero mean, std drawn
  in [0, 0.04] of the 0..1 range, probability 0.1), which is signed and leaves the background at zero
  mean; Rician noise lifts the background (a Rayleigh floor) and is signal dependent.
* ``2mm``: 2 mm isotropic acquisition: every 2x2x2 block of 1 mm voxels averaged (the signal a
  2 mm voxel measures), then resampled back to the 1 mm grid with trilinear interpolation. Training
  simulates low resolution in the 2D slice only (``RandSimulateLowResolutiond``: nearest-neighbour
  down-sampling by a zoom in [0.5, 1], bilinear up-sampling, probability 0.1), never by 3D block
  averaging.
* ``bias+rician3``: ``bias`` then ``rician3``.

``--set ID=VALUE`` (repeatable; VALUE read as JSON where it parses, else as a string) changes a config id of
train.json for training and evaluation alike, e.g. another normalisation:
``--set train#normalize_transforms#0#order=1 --set train#normalize_transforms#0#sigma=48``.

Evaluation reads the degraded slices through the bundle's own chain (``validate#preprocessing``: in the demo,
rescaling and ``train#normalize_transforms``), as inference would. Degradations are seeded (``--seed``), the
same for every network. The result files also list the training chains (:func:`recipe`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_demo import BUNDLE, NETWORKS, evaluate_one, train_one  # noqa: E402

BIAS_PEAK_TO_PEAK = 0.4


def bias_field(volume: np.ndarray, rng: np.random.Generator, peak_to_peak: float = BIAS_PEAK_TO_PEAK) -> np.ndarray:
    """Multiply by a smooth field spanning ``1 -+ peak_to_peak / 2`` over the non-zero voxels."""
    grids = np.meshgrid(*[np.linspace(0.0, 1.0, n) for n in volume.shape], indexing="ij")
    log_field = np.zeros(volume.shape, dtype=np.float64)
    for _ in range(6):
        freq = rng.uniform(0.5, 1.0, size=3) * rng.choice([-1.0, 1.0], size=3)
        phase = rng.uniform(0.0, 2 * np.pi)
        log_field += rng.uniform(0.5, 1.0) * np.cos(2 * np.pi * sum(f * g for f, g in zip(freq, grids)) + phase)
    inside = volume > 0
    lo, hi = log_field[inside].min(), log_field[inside].max()
    field = 1.0 + peak_to_peak * ((log_field - lo) / (hi - lo) - 0.5)
    return (volume * field).astype(np.float32)


def rician(volume: np.ndarray, rng: np.random.Generator, level: float) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of sigma ``level * max``."""
    sigma = level * float(volume.max())
    real = volume + rng.normal(0.0, sigma, volume.shape)
    imag = rng.normal(0.0, sigma, volume.shape)
    return np.sqrt(real**2 + imag**2).astype(np.float32)


def low_resolution(volume: np.ndarray, rng: np.random.Generator, factor: int = 2) -> np.ndarray:
    """Average ``factor``^3 blocks (edge-padded to a multiple), resample back to the grid trilinearly."""
    del rng
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    pad = [p for n in reversed(volume.shape) for p in (0, (-n) % factor)]
    coarse = F.avg_pool3d(F.pad(t, pad, mode="replicate"), factor)
    fine = F.interpolate(coarse, scale_factor=factor, mode="trilinear", align_corners=False)
    return fine[0, 0, : volume.shape[0], : volume.shape[1], : volume.shape[2]].numpy()


DEGRADATIONS: dict[str, tuple[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]]] = {
    "bias": ("bias field, 40 % peak to peak", bias_field),
    "rician3": ("Rician noise, sigma 3 % of max", lambda v, r: rician(v, r, 0.03)),
    "rician5": ("Rician noise, sigma 5 % of max", lambda v, r: rician(v, r, 0.05)),
    "2mm": ("2 mm isotropic (block average, trilinear back)", low_resolution),
    "bias+rician3": ("bias field 40 % + Rician 3 %", lambda v, r: rician(bias_field(v, r), r, 0.03)),
}


def write_degraded(dataset_dir: Path, out_dir: Path, name: str, seed: int) -> Path:
    """Copy the prepared demo data to ``out_dir`` with the test images replaced by their degraded twins."""
    import nibabel as nib

    from medurwkv_net.data import mni152

    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(dataset_dir, out_dir)
    t1 = mni152.load_template()[0].astype(np.float32)
    degraded = DEGRADATIONS[name][1](t1, np.random.default_rng(seed))
    for item in json.loads((out_dir / "datalist.json").read_text())["test"]:
        clean = nib.load(str(dataset_dir / item["image"]))
        img = nib.Nifti1Image(degraded[:, :, item["slice"]].astype(np.float32), clean.affine)
        img.header.set_xyzt_units("mm")
        nib.save(img, str(out_dir / item["image"]))
    return out_dir


def parse_overrides(items: list[str]) -> dict:
    """``["ID=VALUE", ...]`` -> ``{ID: VALUE}``; VALUE is read as JSON where it parses, else kept as a string."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected ID=VALUE, e.g. train#normalize_transforms#0#sigma=32")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def recipe(bundle: Path = BUNDLE) -> dict[str, list[str]]:
    """The bundle's training chains as ``Transform (p=probability)`` strings, for the result files."""
    train = json.loads((bundle / "configs" / "train.json").read_text())["train"]
    chains = ("random_transforms", "normalize_transforms")
    return {c: [t["_target_"].rsplit(".", 1)[-1] + (f" (p={t['prob']})" if "prob" in t else "")
                for t in train.get(c, [])] for c in chains if c in train}


def write_table(stem: Path, info: dict) -> str:
    """Write ``<stem>.json`` and ``<stem>.md``; return the table."""
    stem.with_suffix(".json").write_text(json.dumps(info, indent=1))
    names = ["clean", *DEGRADATIONS]
    lines = [
        f"{info['bundle']}, {info['device']}, torch {info['torch']}, {info['threads']} threads, "
        f"load average at end {info['load_average_at_end'][0]:.1f}; test mean Dice (GM / WM)",
        "",
        "| network | epochs | train wall (s) | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for r in info["results"]:
        cells = []
        for n in names:
            m = r["scores"].get(n)
            cells.append("" if m is None else f"**{m['test_mean_dice']:.3f}** ({m['test_mean_dice_grey_matter']:.3f}"
                         f" / {m['test_mean_dice_white_matter']:.3f})")
        lines.append(f"| {r['network']} | {r['epochs']} | {r['wall_s']} | " + " | ".join(cells) + " |")
    lines += ["", "Degradations: " + "; ".join(f"`{k}` {v[0]}" for k, v in DEGRADATIONS.items()) + "."]
    lines += ["", "Training recipe (the bundle's train.json): " + "; ".join(
        f"`{chain}`: " + ", ".join(info["recipe"][chain]) for chain in info["recipe"]) + "."]
    if info.get("overrides"):
        lines += ["", "Config overrides: " + ", ".join(f"`{k}={json.dumps(v)}`" for k, v in info["overrides"].items())
                  + "."]
    table = "\n".join(lines) + "\n"
    stem.with_suffix(".md").write_text(table)
    return table


def main() -> None:
    from medurwkv_net.data import mni152

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget_s", type=float, default=3600.0, help="training wall-clock budget per network")
    p.add_argument("--max_epochs", type=int, default=None, help="override the bundle's max_epochs")
    p.add_argument("--networks", nargs="+", default=["MedURWKV-T", "BasicUNet"], choices=list(NETWORKS))
    p.add_argument("--seed", type=int, default=2026, help="seed of the degradations")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--set", action="append", default=[], metavar="ID=VALUE",
                   help="override a train.json config id for training and evaluation (repeatable)")
    args = p.parse_args()
    overrides = parse_overrides(args.set)

    work = Path(tempfile.mkdtemp(prefix="bench_robustness_"))
    dataset_dir = work / "data"
    mni152.prepare(dataset_dir)
    degraded = {n: write_degraded(dataset_dir, work / f"data_{n.replace('+', '_')}", n, args.seed)
                for n in DEGRADATIONS}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"robustness_{time.strftime('%Y%m%d-%H%M%S')}"
    info = {"bundle": BUNDLE.name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.platform(),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "seed": args.seed,
            "degradations": {k: v[0] for k, v in DEGRADATIONS.items()}, "recipe": recipe(), "overrides": overrides,
            "results": []}
    for name in args.networks:
        row = train_one(name, NETWORKS[name], args.budget_s, str(dataset_dir), work, args.max_epochs, overrides)
        base = {**overrides, "bundle_root": str(BUNDLE), "ckpt_dir": str(work / name / "models")}
        if NETWORKS[name] is not None:
            base["network_def"] = NETWORKS[name]
        scores = {"clean": row["test"]}
        for n, folder in degraded.items():
            metrics = evaluate_one(BUNDLE, {**base, "dataset_dir": str(folder),
                                            "output_dir": str(work / name / f"eval_{folder.name}")})
            scores[n] = {k: round(float(v), 4) for k, v in metrics.items() if k.startswith("test_mean_dice")}
        row["scores"] = scores
        info["results"].append(row)
        info["load_average_at_end"] = os.getloadavg()
        print(write_table(stem, info))


if __name__ == "__main__":
    main()
