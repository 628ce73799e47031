"""Random states of a data pipeline: MONAI ``Randomizable`` transforms and ``torch.Generator`` objects.

A MONAI ``DataLoader`` seeds the random transforms of its dataset once, when it is built; each transform then
draws from its own ``numpy.random.RandomState`` (``Randomizable.R``). A resumed run builds the pipeline again
and starts those states from the beginning, so its augmentations differ from those of an uninterrupted run
unless the states are saved and restored: :func:`capture_data_rng` and :func:`restore_data_rng` do that
for every ``Randomizable`` and every ``torch.Generator`` reachable from a data loader, in a fixed order.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import Randomizable

__all__ = ["capture_data_rng", "restore_data_rng", "random_components"]

logger = logging.getLogger(__name__)

_SKIP = (str, bytes, int, float, bool, type(None), torch.Tensor, np.ndarray, torch.nn.Module)
_MAX_DEPTH = 16


def random_components(root: Any) -> list[tuple[str, Any]]:
    """``(path, object)`` of every ``Randomizable`` and ``torch.Generator`` reachable from ``root``.

    Args:
        root: a data loader, dataset or transform; its attributes, lists, tuples and dict values are walked
            in their (deterministic) order, each object once.
    """
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def walk(obj: Any, path: str, depth: int) -> None:
        if isinstance(obj, _SKIP) or id(obj) in seen or depth > _MAX_DEPTH:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Generator):
            found.append((path, obj))
            return
        if isinstance(obj, Randomizable):
            found.append((path, obj))
        if isinstance(obj, (list, tuple)):
            if obj and all(isinstance(x, _SKIP) for x in obj[:8]) and len(obj) > 8:
                return  # plain data (e.g. a list of file names or cached tensors)
            for i, x in enumerate(obj):
                walk(x, f"{path}[{i}]", depth + 1)
        elif isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, f"{path}[{k!r}]", depth + 1)
        elif hasattr(obj, "__dict__"):
            for k, v in vars(obj).items():
                if not k.startswith("__"):
                    walk(v, f"{path}.{k}", depth + 1)

    walk(root, "loader", 0)
    return found


def _state_of(obj: Any) -> dict:
    if isinstance(obj, torch.Generator):
        return {"kind": "torch.Generator", "state": obj.get_state()}
    _, key, pos, has_gauss, gauss = obj.R.get_state()
    return {
        "kind": type(obj).__name__,
        "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def capture_data_rng(root: Any) -> list[dict]:
    """Random states of every component :func:`random_components` finds, as tensors and plain types."""
    return [dict(_state_of(obj), path=path) for path, obj in random_components(root)]


def restore_data_rng(root: Any, states: Sequence[Mapping], source: str = "the checkpoint") -> bool:
    """Restore states captured by :func:`capture_data_rng` into the pipeline reachable from ``root``.

    Args:
        root: the data loader of the resumed run (built from the same config).
        states: the captured states.
        source: where the states come from, for the warning.

    Returns:
        True if every state was restored; False (with a warning naming the difference) if the pipeline has
        other random components than the one the states were captured from.
    """
    components = random_components(root)
    got = [(p, "torch.Generator" if isinstance(o, torch.Generator) else type(o).__name__) for p, o in components]
    want = [(s.get("path"), s.get("kind")) for s in states]
    if got != want:
        diff = next(((w, g) for w, g in zip(want, got) if w != g), (want[len(got) :][:1], got[len(want) :][:1]))
        logger.warning(
            f"the data pipeline has {len(got)} random component(s), {source} holds states of {len(want)} "
            f"(first difference: saved {diff[0]}, now {diff[1]}): random transform states not restored, the "
            "resumed run will see other augmentations than an uninterrupted one"
        )
        return False
    for (_, obj), s in zip(components, states):
        if isinstance(obj, torch.Generator):
            obj.set_state(s["state"])
        else:
            obj.R.set_state(("MT19937", s["key"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"]))
    return True
