"""Helpers of ``multi_gpu_train.json`` (``torchrun``; NCCL on GPUs, gloo on CPU)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.distributed as dist

__all__ = ["RANK_ZERO_HANDLERS", "handlers_for_this_rank", "init_distributed"]

logger = logging.getLogger(__name__)

#: class names of handlers that write files or print reports: they run on rank 0 only
RANK_ZERO_HANDLERS = (
    "StatsHandler",
    "TensorBoardStatsHandler",
    "CheckpointSaver",
    "BestModelSaver",
    "RunLock",
    "MetricsSaver",
    "ProgressBar",
    "CurvePlotter",
    "OverlayWriter",
    "ClassMetricReport",
)


def init_distributed(backend: str, device: torch.device | str | None = None) -> int:
    """Join the process group ``torchrun`` describes (idempotent); return this process's rank.

    Called from the first expression of ``run`` rather than ``initialize`` (MONAI Label skips the
    latter), before the ``DistributedDataParallel`` network is built.
    """
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_device(device)
    logger.info(f"rank {dist.get_rank()} of {dist.get_world_size()} ({backend})")
    return dist.get_rank()


def handlers_for_this_rank(handlers: Sequence | None) -> list:
    """All ``handlers`` on rank 0; on other ranks those whose class is in :data:`RANK_ZERO_HANDLERS` are dropped.

    Filtering by type (not by position) keeps entries other tools insert, e.g. the
    ``CheckpointLoader`` MONAI Label puts first, which every rank needs.
    """
    handlers = list(handlers or [])
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        return handlers
    return [h for h in handlers if type(h).__name__ not in RANK_ZERO_HANDLERS]
