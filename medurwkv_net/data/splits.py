"""Datalists of the releases: the official or seeded train/validation/test split, the check that decodes every
file of every split (with the pair check of :mod:`medurwkv_net.data.pairs`), and the idempotent writing of the
datalist file."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

from medurwkv_net.core.atomic import atomic_write_json

from .releases import get_release

__all__ = [
    "DEFAULT_FRACTIONS",
    "SPLIT_KEYS",
    "build_datalist",
    "check_cases",
    "check_pairs",
    "ensure_datalist",
    "ensure_with_report",
    "seeded_split",
    "write_datalist",
]

SPLIT_KEYS = ("training", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def _check_fractions(fractions) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(
            f"fractions must be three non-negative numbers (train, validation, test) summing to 1, got {fractions!r}"
        )
    return fr


def seeded_split(
    cases: Sequence[dict], fractions=DEFAULT_FRACTIONS, seed: int = 0, stratify: str | None = "subset"
) -> dict[str, list[dict]]:
    """Shuffle ``cases`` with ``random.Random(seed)`` (separately per ``stratify`` group) and cut them
    into training / validation / test by ``fractions``. Every non-zero fraction gets at least one case
    of each group that has enough cases; the order inside each split is by case id."""
    fr = _check_fractions(fractions)
    groups: dict[str, list[dict]] = {}
    for c in sorted(cases, key=lambda c: c["case"]):
        groups.setdefault(str(c.get(stratify, "")) if stratify else "", []).append(c)
    out: dict[str, list[dict]] = {k: [] for k in SPLIT_KEYS}
    for name in sorted(groups):
        items = list(groups[name])
        random.Random(f"{seed}:{name}").shuffle(items)
        n = len(items)
        n_val = round(n * fr[1])
        n_test = round(n * fr[2])
        if fr[1] > 0 and n_val == 0 and n >= 3:
            n_val = 1
        if fr[2] > 0 and n_test == 0 and n >= 3:
            n_test = 1
        n_val = min(n_val, n)
        n_test = min(n_test, n - n_val)
        out["validation"] += items[:n_val]
        out["test"] += items[n_val : n_val + n_test]
        out["training"] += items[n_val + n_test :]
    for k in out:
        out[k].sort(key=lambda c: c["case"])
    return out


def build_datalist(dataset: str, dataset_dir, seed: int = 0, fractions=DEFAULT_FRACTIONS, **reader_kwargs) -> dict:
    """Read the release under ``dataset_dir`` and return its datalist (see the module docstring)."""
    spec = get_release(dataset)
    release = spec.reader(dataset_dir, **reader_kwargs)
    fr = _check_fractions(fractions)
    split_info: dict = {"seed": int(seed)}
    lists: dict[str, list[dict]] = {k: [] for k in SPLIT_KEYS}
    if release.official:
        for key, subsets in release.official.items():
            for s in subsets:
                lists[key] += release.subsets[s]
        split_info["official"] = {k: v for k, v in release.official.items()}
        carved = [k for k in ("validation", "test") if not lists[k]]
        if carved:
            # carve the missing official splits from the training cases, with the seed
            want = {
                "training": fr[0],
                "validation": fr[1] if "validation" in carved else 0.0,
                "test": fr[2] if "test" in carved else 0.0,
            }
            total = sum(want.values())
            sub = seeded_split(lists["training"], [want[k] / total for k in SPLIT_KEYS], seed)
            for k in SPLIT_KEYS:
                if k == "training" or k in carved:
                    lists[k] = sub[k]
            split_info["seeded_from_training"] = carved
            split_info["fractions"] = [want[k] / total for k in SPLIT_KEYS]
        split_info["method"] = "official" if not carved else "official+seeded"
    else:
        all_cases = [c for cs in release.subsets.values() for c in cs]
        lists = seeded_split(all_cases, fr, seed)
        split_info.update(method="seeded", fractions=list(fr), stratified_by="subset")
    return {
        "name": spec.title,
        "dataset": spec.name,
        "dataset_dir": str(release.root),
        "layout": spec.layout,
        "label_threshold": spec.label_threshold,
        "split": split_info,
        "notes": release.notes,
        "numTraining": len(lists["training"]),
        **lists,
    }


def write_datalist(datalist: dict, output) -> Path:
    """Write ``datalist`` as JSON to ``output`` (atomically); return the path."""
    return atomic_write_json(output, datalist, indent=2)


def check_cases(datalist: dict, max_problems: int = 10) -> dict:
    """Decode every image and mask of every split, so that a bad release fails before training with the
    files named: unreadable (truncated, corrupt) files, masks whose size differs from their image (all masks
    of a case, for BUSI), masks refused by the label conversion. Returns ``{split: {"cases": n,
    "empty_masks": [case ids]}}`` (empty masks are valid: BUSI normal, edentulous TDD cases).

    Raises:
        ValueError: listing up to ``max_problems`` problems, each with its split, case and file.
    """
    from .pairs import LabelPart, check_pair
    from .readers import load_file

    name = datalist.get("dataset", "")
    threshold = datalist.get("label_threshold")
    problems: list[str] = []
    report: dict = {}
    for key in SPLIT_KEYS:
        cases = datalist.get(key, [])
        report[key] = {"cases": len(cases), "empty_masks": []}
        for case in cases:
            where = f"{name} {key} case '{case['case']}'"
            try:
                image = load_file(case["image"])
            except Exception as e:  # readers raise many types for corrupt data; all mean "unreadable"
                problems.append(
                    f"{where}: image '{case['image']}' cannot be read (truncated or corrupt?): {_first_line(e)}"
                )
                continue
            parts = []
            for lab in case["label"] if isinstance(case["label"], list) else [case["label"]]:
                try:
                    parts.append(LabelPart(load_file(lab), f"mask '{lab}'", str(lab)))
                except Exception as e:
                    problems.append(f"{where}: mask '{lab}' cannot be read (truncated or corrupt?): {_first_line(e)}")
                    break
            else:
                pair = check_pair(image, parts, mask=True, threshold=threshold, image_what=f"image '{case['image']}'")
                if pair.errors:
                    problems.append(f"{where}: {pair.errors[0][1]}")
                elif not pair.foreground:
                    report[key]["empty_masks"].append(case["case"])
    if problems:
        more = f"\n... and {len(problems) - max_problems} more" if len(problems) > max_problems else ""
        raise ValueError(
            f"{name}: {len(problems)} problem(s) in the release; replace the named files with "
            "intact copies from the archive (or remove those cases):\n" + "\n".join(problems[:max_problems]) + more
        )
    return report


check_pairs = check_cases  # the former name


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def ensure_with_report(
    dataset: str,
    dataset_dir,
    datalist_file,
    seed: int = 0,
    fractions=DEFAULT_FRACTIONS,
    always_check: bool = False,
    **reader_kwargs,
) -> tuple[dict, dict | None]:
    """:func:`ensure_datalist` that also returns the :func:`check_cases` report (None when the file was up to
    date and ``always_check`` is false)."""
    datalist = build_datalist(dataset, dataset_dir, seed=seed, fractions=fractions, **reader_kwargs)
    path = Path(datalist_file)
    if path.is_file():
        try:
            if json.loads(path.read_text()) == datalist:
                return datalist, (check_cases(datalist) if always_check else None)
        except json.JSONDecodeError:
            pass  # rewritten below
    report = check_cases(datalist)
    write_datalist(datalist, path)
    return datalist, report


def ensure_datalist(
    dataset: str, dataset_dir, datalist_file, seed: int = 0, fractions=DEFAULT_FRACTIONS, **reader_kwargs
) -> dict:
    """Build the datalist of the release under ``dataset_dir`` and return it, writing it to
    ``datalist_file`` when that file is missing or differs (idempotent: an up-to-date file is left
    untouched). Every file is decoded and checked with :func:`check_cases` whenever the file is (re)written."""
    return ensure_with_report(dataset, dataset_dir, datalist_file, seed=seed, fractions=fractions, **reader_kwargs)[0]
