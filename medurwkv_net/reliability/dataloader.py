"""A data loader whose worker processes cannot hang a run forever.

With worker processes, PyTorch waits for a batch without limit: a worker stopped (SIGSTOP), blocked on a hung
network file system or stuck in a transform keeps inference or training waiting with no message.
:class:`TimeoutDataLoader` (MONAI's ``DataLoader``) sets a timeout and, when it expires, names the batch and,
for loaders that do not shuffle, the cases the stuck worker was loading.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from monai.data import DataLoader
from torch.utils.data import SequentialSampler
from torch.utils.data._utils.signal_handling import _remove_worker_pids

__all__ = ["TimeoutDataLoader"]


class TimeoutDataLoader(DataLoader):
    """MONAI ``DataLoader`` with a worker timeout that names the stuck cases.

    Args:
        dataset: the dataset.
        num_workers: worker processes; the timeout applies only with workers (without, the main process
            loads the data itself).
        timeout: seconds to wait for one batch from the workers before giving up.
        kwargs: passed to MONAI's ``DataLoader``.
    """

    def __init__(self, dataset: Any, num_workers: int = 0, timeout: float = 300.0, **kwargs: Any):
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.worker_timeout = float(timeout)
        super().__init__(dataset, num_workers=num_workers, timeout=self.worker_timeout if num_workers else 0, **kwargs)

    def _cases(self, first: int, count: int) -> str:
        """The batches ``first .. first + count - 1`` and, for a loader that does not shuffle, their cases."""
        last = first + count - 1
        which = f"batch {first}" if count == 1 else f"one of the batches {first}..{last}"
        data = getattr(self.dataset, "data", None)
        if not isinstance(self.sampler, SequentialSampler) or self.batch_size is None:
            return f"{which} (shuffled: their cases are not known)"
        indices = range(first * self.batch_size, (last + 1) * self.batch_size)
        if not isinstance(data, (list, tuple)):
            return f"{which} (dataset indices {indices.start}..{indices.stop - 1})"
        names = []
        for i in indices:
            if i < len(data):
                item = data[i]
                item = item.get("image", item) if isinstance(item, Mapping) else item
                names.append(f"'{item}'" if isinstance(item, str) else f"index {i}")
        return f"{which} ({', '.join(names)})"

    # a generator over torch's iterator, not a _BaseDataLoaderIter: callers only iterate it (for, next)
    def __iter__(self) -> Iterator:  # type: ignore[override]
        inner: Any = super().__iter__()  # reads private attributes of the multi-process iterator
        workers = list(getattr(inner, "_workers", []))
        in_flight = max(1, self.num_workers * (self.prefetch_factor or 1))
        index = 0
        while True:
            expired = threading.Event()

            def stop_workers() -> None:
                # a stopped worker also blocks the hand-over of batches it already made (their shared memory
                # goes through the worker): end the workers so that the waiting call returns
                expired.set()
                if getattr(inner, "_worker_pids_set", False):
                    # torch reports a killed worker from its SIGCHLD handler, at a random later moment of the
                    # main thread: unregister the workers first, this loader reports the failure itself
                    _remove_worker_pids(id(inner))
                    inner._worker_pids_set = False
                for w in workers:
                    if w.is_alive() and w.pid is not None:
                        os.kill(w.pid, signal.SIGKILL)

            timer = threading.Timer(self.worker_timeout, stop_workers) if workers else None
            if timer is not None:
                timer.daemon = True
                timer.start()
            try:
                batch = next(inner)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - what a killed or timed-out worker raises varies
                if not (expired.is_set() or "timed out" in str(e)):
                    raise
                shutdown = getattr(inner, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()
                raise RuntimeError(
                    f"no data for {self.worker_timeout:g} s: a data loader worker is stuck on "
                    f"{self._cases(index, in_flight)} (stopped process, hung file system or a transform that does "
                    "not return). Check those files and the storage, or raise the timeout for very slow cases."
                ) from e
            finally:
                if timer is not None:
                    timer.cancel()
            index += 1
            yield batch
