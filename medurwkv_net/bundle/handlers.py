"""Ignite handlers of the Med-URWKV training recipe and its reports.

All follow the MONAI handler convention (constructor arguments from the config, ``attach(engine)``
called by the MONAI workflow for every entry of ``train#handlers`` / ``validate#handlers``):

* :class:`EncoderFreezeHandler` (trainer): encoder frozen for the first ``freeze_epochs`` epochs
  (paper recipe: 5 with the pretrained encoder), decided from the epoch number so resumed runs agree.
* :class:`ClassMetricReport` (evaluator): per-class values of a metric (e.g. Dice of grey and white
  matter), logged and added to ``engine.state.metrics`` as ``<metric>_<class>`` so that
  ``StatsHandler``, ``TensorBoardStatsHandler`` and the curve plot pick them up. List it *before* those.
* :class:`CurvePlotter` (trainer): PNG of the training loss and validation metric curves plus a
  JSON copy of the numbers, rewritten after every epoch.
* :class:`OverlayWriter` (evaluator): PNG of the first cases: image, ground truth and prediction.
* :class:`SubsetMetricReport` (evaluator): per-case metrics averaged per subset of the data (GlaS
  Test A / Test B), logged and written as CSV.
* :class:`ProgressBar` (any engine): ignite's tqdm progress bar showing the loss.

Per-case CSV files and their summaries come from MONAI's own ``MetricsSaver``; see evaluate.json.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medurwkv_net.reliability.atomic import atomic_write, atomic_write_json, atomic_write_text

__all__ = [
    "ClassMetricReport",
    "CurvePlotter",
    "EncoderFreezeHandler",
    "OverlayWriter",
    "ProgressBar",
    "SubsetMetricReport",
]

logger = logging.getLogger(__name__)


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if hasattr(network, "module") and isinstance(network.module, torch.nn.Module) else network


class EncoderFreezeHandler:
    """Freeze the network's encoder during epochs ``1..freeze_epochs``, unfreeze it afterwards.

    Args:
        network: a model with ``freeze_encoder()`` and ``unfreeze_encoder()`` (``MedURWKV``), possibly
            wrapped in ``DistributedDataParallel``. With ``freeze_epochs=0`` any network is accepted
            and nothing happens (training from scratch).
        freeze_epochs: number of leading epochs with a frozen encoder.

    Frozen parameters get no gradient, so the optimizer (AdamW) leaves them unchanged.
    Note for DDP: construct DDP with ``find_unused_parameters=True`` when ``freeze_epochs > 0``.
    """

    def __init__(self, network: torch.nn.Module, freeze_epochs: int = 5):
        if freeze_epochs < 0:
            raise ValueError(f"freeze_epochs must be >= 0, got {freeze_epochs}")
        self.freeze_epochs = int(freeze_epochs)
        self.network = network
        if self.freeze_epochs:
            net = _unwrap(network)
            missing = [m for m in ("freeze_encoder", "unfreeze_encoder") if not callable(getattr(net, m, None))]
            if missing:
                raise TypeError(
                    f"EncoderFreezeHandler(freeze_epochs={freeze_epochs}): network {type(net).__name__} has no "
                    f"{' / '.join(missing)}; set freeze_epochs to 0 for networks without an encoder to freeze"
                )
        self.frozen: bool | None = None

    def attach(self, engine: Engine) -> None:
        """Run at the start of every epoch of ``engine`` (the trainer).

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.freeze_epochs:
            return
        freeze = engine.state.epoch <= self.freeze_epochs
        if freeze != self.frozen:
            # __init__ checked that the network has both methods
            getattr(_unwrap(self.network), "freeze_encoder" if freeze else "unfreeze_encoder")()
            self.frozen = freeze
            logger.info(f"epoch {engine.state.epoch}: encoder {'frozen' if freeze else 'trainable'}")


class ClassMetricReport:
    """Per-class means of a MONAI metric handler's per-image details.

    Args:
        metric_name: name of a metric attached to the evaluator with ``save_details=True`` (MONAI's
            default), e.g. ``"val_mean_dice"``.
        class_names: names of the classes the metric reports, in channel order (without background
            when the metric excludes it).
    """

    def __init__(self, metric_name: str, class_names: Sequence[str]):
        self.metric_name = metric_name
        self.class_names = list(class_names)
        self._warned: set[str] = set()

    def attach(self, engine: Engine) -> None:
        """Report at the end of every run of ``engine``.

        Args:
            engine: the evaluator holding the metric.
        """
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {}).get(self.metric_name)
        if details is None:
            raise KeyError(
                f"ClassMetricReport: no per-image details for metric '{self.metric_name}' "
                f"(attached: {sorted(getattr(engine.state, 'metric_details', {}))}); "
                "the metric handler needs save_details=True"
            )
        values = torch.as_tensor(details, dtype=torch.float64).reshape(-1, details.shape[-1])
        if values.shape[1] != len(self.class_names):
            raise ValueError(
                f"ClassMetricReport: metric '{self.metric_name}' has {values.shape[1]} classes, "
                f"class_names has {len(self.class_names)}: {self.class_names}"
            )
        finite = torch.isfinite(values)
        means = torch.where(finite, values, 0).sum(0) / finite.sum(0).clamp(min=1)
        means[finite.sum(0) == 0] = float("nan")
        parts = []
        for name, v in zip(self.class_names, means.tolist()):
            engine.state.metrics[f"{self.metric_name}_{name}"] = v
            parts.append(f"{name} {v:.4f}")
        logger.info(f"{self.metric_name} per class: " + ", ".join(parts))
        undefined = [n for n, v in zip(self.class_names, means.tolist()) if math.isnan(v)]
        new = [n for n in undefined if n not in self._warned]
        if new:
            self._warned.update(new)
            if len(undefined) == len(self.class_names):
                shown = engine.state.metrics.get(self.metric_name)
                effect = f"no class can be rated: {self.metric_name} reads {shown} and cannot select a best model"
            else:
                effect = f"{self.metric_name} is the mean over the other classes"
            logger.warning(
                f"{self.metric_name}: no case of this evaluation ({values.shape[0]} case(s)) has foreground of "
                f"{', '.join(repr(n) for n in new)}: its value is undefined (NaN); {effect}. Check the labels of "
                "this split (the data check names the cases)"
            )


def _scalar_items(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float, np.floating)) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


class CurvePlotter:
    """Plot training metrics (e.g. the epoch loss) and validation metrics per epoch to a PNG.

    Args:
        output_file: PNG path; ``<output_file without .png>.json`` receives the numbers.
        evaluator: the validation evaluator whose ``state.metrics`` are recorded each time it completes.
    """

    def __init__(self, output_file: str, evaluator: Engine | None = None):
        self.output_file = output_file
        self.evaluator = evaluator
        self.history: dict[str, dict[str, list]] = {"train": {}, "validation": {}}
        self._trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        """Record the trainer's metrics after each epoch, and the evaluator's after each validation.

        Args:
            engine: the trainer.
        """
        self._trainer = engine
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._on_train_epoch)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._on_validation)

    def _record(self, part: str, epoch: int, metrics: dict) -> None:
        for k, v in _scalar_items(metrics).items():
            series = self.history[part].setdefault(k, [[], []])
            if series[0] and series[0][-1] == epoch:
                series[1][-1] = v
            else:
                series[0].append(epoch)
                series[1].append(v)

    def _on_train_epoch(self, engine: Engine) -> None:
        self._record("train", engine.state.epoch, engine.state.metrics)
        self.write()

    def _on_validation(self, engine: Engine) -> None:
        epoch = self._trainer.state.epoch if self._trainer is not None else engine.state.epoch
        self._record("validation", epoch, engine.state.metrics)
        self.write()

    def write(self) -> None:
        """Write the curves recorded so far: the PNG and its numbers (JSON beside it)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, part, title in ((axes[0], "train", "training"), (axes[1], "validation", "validation")):
            for name, (epochs, values) in sorted(self.history[part].items()):
                ax.plot(epochs, values, marker="o", markersize=3, label=name)
            ax.set_xlabel("epoch")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            if self.history[part]:
                ax.legend(fontsize=8)
        fig.tight_layout()
        try:
            atomic_write(self.output_file, lambda f: fig.savefig(f, format="png", dpi=100))
        finally:
            plt.close(fig)
        atomic_write_json(os.path.splitext(self.output_file)[0] + ".json", self.history, indent=1)


def _to_display(img: np.ndarray, source: str) -> np.ndarray:
    """Channel-first MONAI array -> array for ``imshow`` (origin upper)."""
    img = img[:3] if img.shape[0] >= 3 else img[:1]
    img = np.moveaxis(img, 0, -1)  # (X, Y, C)
    img = np.swapaxes(img, 0, 1)  # (Y, X, C): rows follow the second array axis
    if source.lower().endswith((".nii", ".nii.gz")):
        img = img[::-1]  # NIfTI: anterior / superior up
    return img[..., 0] if img.shape[-1] == 1 else img


class OverlayWriter:
    """PNG grid of ``num_cases`` cases spread over an evaluator's data: image | ground truth | prediction.

    Reads ``image``, ``label`` and ``pred`` from the evaluator's decollated output (after
    postprocessing; one-hot masks are turned back into indices).

    Args:
        output_file: PNG path.
        num_cases: rows of the grid (cases spread evenly over the data).
        class_names: names of the classes (the colour map has at least as many colours).
    """

    def __init__(self, output_file: str, num_cases: int = 4, class_names: Sequence[str] | None = None):
        if num_cases < 1:
            raise ValueError(f"num_cases must be >= 1, got {num_cases}")
        self.output_file = output_file
        self.num_cases = num_cases
        self.class_names = list(class_names) if class_names else None
        self.cases: list[tuple] = []

    def attach(self, engine: Engine) -> None:
        """Pick the cases during each run of ``engine`` and write the grid at its end.

        Args:
            engine: the evaluator.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def _start(self, engine: Engine) -> None:
        """Spread the shown cases over the whole dataset (every ``stride``-th case)."""
        self.cases.clear()
        self._seen = 0
        loader: Any = engine.state.dataloader  # a DataLoader, or any iterable (no .dataset: AttributeError)
        try:
            total = len(loader.dataset)
        except (AttributeError, TypeError):
            total = engine.state.epoch_length or self.num_cases
        self._stride = max(1, total // self.num_cases)

    def _collect(self, engine: Engine) -> None:
        output: Any = engine.state.output  # ignite annotates State.output as Optional[int]
        for item in output:
            index, self._seen = self._seen, self._seen + 1
            if len(self.cases) >= self.num_cases or index % self._stride:
                continue
            masks: list[np.ndarray | None] = []
            for key in ("label", "pred"):
                m = item.get(key)
                if m is None:
                    masks.append(None)
                    continue
                m = torch.as_tensor(m).detach().cpu()
                m = m.argmax(0) if m.shape[0] > 1 else m[0]
                masks.append(m.numpy()[None])
            image = item["image"]
            source = str(getattr(image, "meta", {}).get("filename_or_obj", ""))
            image = torch.as_tensor(image).detach().cpu().float()
            shape = next((m.shape[1:] for m in masks if m is not None), image.shape[1:])
            if tuple(image.shape[1:]) != tuple(shape):  # evaluation in the original space: the image is resized
                image = torch.nn.functional.interpolate(image[None], size=tuple(shape), mode="bilinear")[0]
            self.cases.append((image.numpy(), masks[0], masks[1], source))

    def write(self, engine: Engine | None = None) -> None:
        """Write the grid of the cases picked in this run (nothing when no case was picked).

        Args:
            engine: the evaluator (unused; ignite passes it).
        """
        if not self.cases:
            return
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap

        n_classes = max(int(max(m.max() for m in c[1:3] if m is not None)) for c in self.cases) + 1
        n_classes = max(n_classes, len(self.class_names or []), 2)
        colours = plt.get_cmap("tab10")(np.arange(n_classes) % 10)
        colours[0, 3] = 0.0  # background transparent
        cmap = ListedColormap(colours)
        fig, axes = plt.subplots(len(self.cases), 3, figsize=(9, 3 * len(self.cases)), squeeze=False)
        for row, (image, label, pred, source) in zip(axes, self.cases):
            shown = _to_display(image, source)
            lo, hi = np.percentile(shown, [0.5, 99.5])
            shown = np.clip((shown - lo) / max(hi - lo, 1e-6), 0, 1)
            for ax, mask, title in zip(row, (None, label, pred), ("image", "ground truth", "prediction")):
                ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
                if mask is not None:
                    ax.imshow(
                        _to_display(mask, source),
                        cmap=cmap,
                        vmin=0,
                        vmax=n_classes - 1,
                        alpha=0.45,
                        interpolation="nearest",
                    )
                ax.set_title(f"{title}: {os.path.basename(source)}" if title == "image" else title, fontsize=8)
                ax.axis("off")
        if self.class_names:
            handles = [plt.Rectangle((0, 0), 1, 1, color=colours[i]) for i in range(1, len(self.class_names))]
            fig.legend(handles, self.class_names[1:], loc="lower center", ncol=len(handles), fontsize=8)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        try:
            atomic_write(self.output_file, lambda f: fig.savefig(f, format="png", dpi=100))
        finally:
            plt.close(fig)


class SubsetMetricReport:
    """Means of per-case metrics for each subset of the evaluated data, and over all cases.

    Some test sets are reported per subset (GlaS: Test A and Test B). Every case of the datalist carries
    its subset name under ``subset_key``; the per-case values come from MONAI metric handlers
    (``save_details=True``, the default), averaged over classes, NaN cases left out.

    Args:
        metric_names: metrics attached to the evaluator, e.g. ``["test_mean_dice", "test_hd95"]``.
        subset_key: the datalist key that names each case's subset.
        output_file: CSV written at the end of each run (``subset,cases,<metric>...``; ``all`` last).

    The means are also added to ``engine.state.metrics`` as ``<metric>_<subset>``.
    """

    def __init__(self, metric_names: Sequence[str], subset_key: str = "subset", output_file: str | None = None):
        if not metric_names:
            raise ValueError("SubsetMetricReport: metric_names is empty")
        self.metric_names = list(metric_names)
        self.subset_key = subset_key
        self.output_file = output_file
        self.subsets: list[str] = []

    def attach(self, engine: Engine) -> None:
        """Collect the cases' subsets during each run of ``engine`` and report at its end.

        Args:
            engine: the evaluator holding the metrics.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.subsets.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _collect(self, engine: Engine) -> None:
        batch: Any = engine.state.batch  # ignite annotates State.batch as Optional[int]
        items = batch if isinstance(batch, (list, tuple)) else [batch]
        for item in items:
            if self.subset_key not in item:
                raise KeyError(
                    f"SubsetMetricReport: a case has no '{self.subset_key}' key (keys: {sorted(item)}); "
                    "the datalist must name each case's subset"
                )
            value = item[self.subset_key]
            self.subsets.append(str(value[0] if isinstance(value, (list, tuple)) else value))

    def __call__(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {})
        names = sorted(set(self.subsets)) + ["all"]
        table: dict[str, dict[str, float]] = {n: {} for n in names}
        counts = {n: (self.subsets.count(n) if n != "all" else len(self.subsets)) for n in names}
        for metric in self.metric_names:
            if metric not in details:
                raise KeyError(f"SubsetMetricReport: no per-case details for '{metric}' (attached: {sorted(details)})")
            per_case = torch.as_tensor(details[metric], dtype=torch.float64).reshape(len(self.subsets), -1)
            finite = torch.isfinite(per_case)
            case_mean = torch.where(finite, per_case, 0).sum(1) / finite.sum(1).clamp(min=1)
            case_mean[finite.sum(1) == 0] = float("nan")
            for n in names:
                sel = [i for i, s in enumerate(self.subsets) if n == "all" or s == n]
                vals = case_mean[sel]
                vals = vals[torch.isfinite(vals)]
                table[n][metric] = float(vals.mean()) if vals.numel() else float("nan")
                if n != "all":
                    engine.state.metrics[f"{metric}_{n}"] = table[n][metric]
        for n in names:
            logger.info(f"{n} ({counts[n]} cases): " + ", ".join(f"{m} {table[n][m]:.4f}" for m in self.metric_names))
        if self.output_file:
            lines = ["subset,cases," + ",".join(self.metric_names)]
            lines += [f"{n},{counts[n]}," + ",".join(f"{table[n][m]:.6f}" for m in self.metric_names) for n in names]
            atomic_write_text(self.output_file, "\n".join(lines) + "\n")


class ProgressBar:
    """ignite's tqdm progress bar, attachable from a config (shows the running loss).

    Args:
        output_transform: turns the engine's output into the loss shown (``None``: no loss shown).
        persist: keep the bar on screen when the epoch ends.
        desc: text before the bar.
    """

    def __init__(self, output_transform: Callable | None = None, persist: bool = False, desc: str | None = None):
        from ignite.handlers import ProgressBar as _Bar

        self.bar = _Bar(persist=persist, desc=desc)
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        """Show the bar for ``engine``, with the running loss when ``output_transform`` is set.

        Args:
            engine: the trainer or evaluator.
        """
        transform = self.output_transform
        if transform is None:
            self.bar.attach(engine)
        else:
            self.bar.attach(engine, output_transform=lambda out: {"loss": float(transform(out))})
