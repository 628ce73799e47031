"""Demo bundle benchmark: MONAI's BasicUNet vs Med-URWKV, same recipe, same wall-clock budget, same run.

Every network is trained with the demo bundle's own train.json (data, transforms, AdamW + poly LR,
Dice + CE, validation, best-checkpoint selection); only ``network_def`` differs. Training stops at
``max_epochs`` or after the last epoch that fits the budget (validated and checkpointed as usual;
ignite's ``TimeLimit`` at twice the budget is a hard stop), then the bundle's evaluate.json scores the best
checkpoint on the test slices. Speeds are reported as ratios to BasicUNet measured in the
same process, so they compare on whatever machine this runs.

    python benchmarks/bench_demo.py --budget_s 600 --out benchmarks/results

writes ``demo_<time>.json`` and ``demo_<time>.md`` (a table) under ``--out``. :func:`run` is the same
benchmark for any bundle with the demo's ids (``benchmarks/bench_demo_3d.py`` runs it on the 3D demo).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from ignite.engine import Events
from ignite.handlers import TimeLimit

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "medurwkv_mni152_tissue"
NETWORKS = {
    "BasicUNet": {"_target_": "monai.networks.nets.BasicUNet", "spatial_dims": 2, "in_channels": "@in_channels",
                  "out_channels": "@out_channels"},
    "MedURWKV-T": None,  # the bundle's own network_def
}


def train_one(name: str, network_def, budget_s: float, dataset_dir: str, work: Path, max_epochs: int | None,
              extra: dict, bundle: Path = BUNDLE) -> dict:
    from monai.bundle import ConfigWorkflow

    overrides = {**extra, "bundle_root": str(bundle), "dataset_dir": dataset_dir,
                 "ckpt_dir": str(work / name / "models"), "output_dir": str(work / name / "eval")}
    if network_def is not None:
        overrides["network_def"] = network_def
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
    wf = ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), workflow_type="train",
                        logging_file=str(bundle / "configs" / "logging.conf"), **overrides)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    times: list[float] = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: times.append(time.perf_counter()))
    start = time.perf_counter()
    epoch_ends = [start]

    def stop_before_budget(engine):
        """After validation: stop when another epoch like the last one would exceed the budget."""
        now = time.perf_counter()
        if now - start + (now - epoch_ends[-1]) > budget_s:
            engine.terminate()
        epoch_ends.append(now)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, stop_before_budget)  # after the bundle's ValidationHandler
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(limit_sec=int(2 * budget_s)))  # hard stop
    wf.run()
    wall = time.perf_counter() - start
    val = wf.parser.get_parsed_content("validate#evaluator").state
    curves_file = work / name / "eval" / "curves.json"  # written by the bundle's CurvePlotter
    validation = json.loads(curves_file.read_text())["validation"] if curves_file.is_file() else {}
    steps = [b - a for a, b in zip(times[1:], times[2:])]
    net = wf.parser.get_parsed_content("network")
    wf.finalize()
    test = evaluate_one(bundle, overrides)
    return {
        "network": name,
        "parameters_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
        "iterations": trainer.state.iteration,
        "epochs": trainer.state.epoch,
        "wall_s": round(wall, 1),
        "median_s_per_iteration": round(sorted(steps)[len(steps) // 2], 4) if steps else None,
        "best_val_mean_dice": round(float(val.best_metric), 4) if val.best_metric != -1 else None,
        "test": {k: round(float(v), 4) for k, v in test.items() if k.startswith("test_mean_dice")},
        "validation_curve": {k: [round(float(v), 4) for v in series[1]] for k, series in validation.items()
                             if k.startswith("val_mean_dice")},
    }


def evaluate_one(bundle: Path, overrides: dict) -> dict:
    """Run the bundle's evaluate.json (best checkpoint in ``overrides["ckpt_dir"]``); return the test metrics."""
    from monai.bundle import ConfigWorkflow

    configs = [str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")]
    ev = ConfigWorkflow(config_file=configs, workflow_type=None, logging_file=str(bundle / "configs" / "logging.conf"),
                        **overrides)
    ev.initialize()
    ev.run()
    test = dict(ev.parser.get_parsed_content("validate#evaluator").state.metrics)
    ev.finalize()
    return test


def run(bundle: Path, networks: dict, prepare: Callable[[str], object], tag: str, description: str) -> None:
    """Parse the command line, train and test every network of ``networks`` on ``bundle``, write the table.

    Args:
        bundle: bundle folder with the demo's config ids (``network_def``, ``max_epochs``, ``dataset_dir``, ...).
        networks: display name -> ``network_def`` override (``None``: the bundle's own network), or
            ``{"network_def": ..., "overrides": {id: value}}`` for a network that also needs other ids changed
            (e.g. a patch size it accepts). The first entry is the baseline of the speed ratios.
        prepare: writes the bundle's data into a folder (the bundle's ``prepare_data``).
        tag: file name prefix of the results (``<tag>_<time>.json`` / ``.md``).
        description: first line of the command-line help.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--budget_s", type=float, default=600.0, help="training wall-clock budget per network")
    p.add_argument("--max_epochs", type=int, default=None, help="override the bundle's max_epochs")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--dataset_dir", default=None, help="demo data folder (prepared if needed)")
    p.add_argument("--networks", nargs="+", default=list(networks), choices=list(networks),
                   help="networks to train (default: all, in this order)")
    p.add_argument("--override", action="append", default=[], metavar="ID=JSON",
                   help="extra config override for every network, e.g. 'num_samples=2' (repeatable)")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix=f"bench_{tag}_"))
    dataset_dir = args.dataset_dir or str(work / "data")
    prepare(dataset_dir)
    extra = {}
    for item in args.override:
        key, _, value = item.partition("=")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value  # e.g. a "$expression"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows: list[dict] = []
    for n in args.networks:
        spec = networks[n]
        if isinstance(spec, dict) and "network_def" in spec:
            net_def, own = spec["network_def"], {**extra, **spec.get("overrides", {})}
        else:
            net_def, own = spec, extra
        rows.append(train_one(n, net_def, args.budget_s, dataset_dir, work, args.max_epochs, own, bundle))
        rows[-1]["overrides"] = {k: v for k, v in own.items() if k not in extra}
        table = write_results(out / f"{tag}_{stamp}", bundle, args.budget_s, extra, rows)  # after every network
    print(table)


def write_results(stem: Path, bundle: Path, budget_s: float, extra: dict, rows: list[dict]) -> str:
    """Write ``<stem>.json`` and ``<stem>.md`` (speed ratios to the first row); return the table."""
    base = rows[0]
    ratio_key = f"time_per_iteration_vs_{base['network']}"
    for r in rows:
        if base["median_s_per_iteration"] and r["median_s_per_iteration"]:
            r[ratio_key] = round(r["median_s_per_iteration"] / base["median_s_per_iteration"], 3)
    info = {"bundle": bundle.name, "budget_s": budget_s, "overrides": extra, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.platform(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "load_average_at_end": os.getloadavg(), "results": rows}
    stem.with_suffix(".json").write_text(json.dumps(info, indent=1))
    lines = [f"{bundle.name}, {info['device']}, budget {budget_s:.0f} s per network, torch {torch.__version__}, "
             f"{info['threads']} threads, load average at end {info['load_average_at_end'][0]:.1f}", "",
             f"| network | params (M) | epochs | iterations | s/iter (x {base['network']}) | best val Dice "
             "| lowest val class Dice after epoch 5 | test Dice GM | test Dice WM | test mean |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["test"]
        late = [v for k, series in r["validation_curve"].items() if k != "val_mean_dice" for v in series[5:]]
        lines.append(f"| {r['network']} | {r['parameters_M']} | {r['epochs']} | {r['iterations']} | "
                     f"{r['median_s_per_iteration']} ({r.get(ratio_key)}) | "
                     f"{r['best_val_mean_dice']} | {min(late) if late else None} | "
                     f"{t.get('test_mean_dice_grey_matter')} | {t.get('test_mean_dice_white_matter')} | "
                     f"{t.get('test_mean_dice')} |")
    table = "\n".join(lines) + "\n"
    stem.with_suffix(".md").write_text(table)
    return table


def main() -> None:
    from medurwkv_net.data import mni152

    run(BUNDLE, NETWORKS, mni152.prepare, "demo", __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
