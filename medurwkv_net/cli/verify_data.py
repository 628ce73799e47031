"""``medurwkv-net verify-data``: check every image/label pair a bundle config reads."""

from __future__ import annotations

import sys
from typing import Any, Sequence

from medurwkv_net.bundle.verify_config import verify_bundle_data
from medurwkv_net.core.atomic import atomic_write_json

__all__ = ["verify_data_cli"]


def verify_data_cli(
    config_file: str | Sequence[str],
    dataset_dir: str | None = None,
    meta_file: str | None = None,
    num_classes: int | None = None,
    image_channels: int | None = None,
    allowed_channels: Sequence[int] | None = None,
    label_mode: str | None = None,
    label_threshold: float | None = None,
    sections: str | Sequence[str] | None = None,
    report_file: str | None = None,
    max_cases: int = 100,
    **override: Any,
) -> None:
    """Check every image/label pair that a bundle config reads (``verify-data --config_file configs/train.json``).

    Reads the bundle config with ``monai.bundle.ConfigParser`` (``--key value`` pairs override config
    entries like ``monai.bundle run``), runs its ``prepare_data`` and verifies every split of its
    ``datalist_file`` (training, validation and test) together, so that a case in two splits is reported;
    configs without a datalist file (or with ``--sections``) are verified through ``<section>#dataset#data``.
    Prints a table (cases, errors and warnings per split), then every problem with its file. Settings, first found wins:
    the command line; the ``VerifyDataHandler`` entry of ``train#handlers``; the config's ``label_mode``,
    ``label_threshold``; ``metadata.json`` next to the config (channel_def, input num_channels). What the
    datalist file declares about its own lists wins over these: ``spatial_dims`` per list (e.g. 2D slices and
    3D volumes of one preparation) and ``empty_labels_expected``; files in the datalist's folder (written by
    the preparation) count as inside the dataset folder.
    Prints the per-case summary, optionally writes it as JSON, and exits with status 1 on any error.

    Args:
        config_file: the bundle config(s), e.g. ``configs/train.json`` (a list or comma-separated to merge).
        dataset_dir: overrides the config's ``dataset_dir``.
        meta_file: the bundle's ``metadata.json`` (default: beside the config).
        num_classes: classes of the labels (default: from the metadata's ``channel_def``).
        image_channels: channels the network takes (default: from the metadata).
        allowed_channels: image channel counts accepted as input (converted by the bundle).
        label_mode: how labels are read (the config's ``label_mode``).
        label_threshold: threshold of binary masks (the config's ``label_threshold``).
        sections: config sections whose ``dataset#data`` is checked instead of the datalist file's splits
            (default: the datalist file when the config has ``datalist_file``, else ``train,validate``).
        report_file: also write the per-case report as JSON here.
        max_cases: how many problem cases to print.
        **override: ``--key value`` pairs that override config entries.
    """
    report = verify_bundle_data(
        config_file,
        dataset_dir=dataset_dir,
        meta_file=meta_file,
        num_classes=num_classes,
        image_channels=image_channels,
        allowed_channels=allowed_channels,
        label_mode=label_mode,
        label_threshold=label_threshold,
        sections=sections,
        **override,
    )
    print(report.table())
    print(report.summary(max_cases=max_cases))
    if report_file:
        atomic_write_json(report_file, report.to_dict(), indent=2)
    if not report.ok:
        sys.stdout.flush()
        raise SystemExit(1)
