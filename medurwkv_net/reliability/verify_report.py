"""The results of :func:`medurwkv_net.reliability.verify_datalist`: findings per case, and the report that
prints them (a per-split table, a per-case summary) and writes them as JSON."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from medurwkv_net.core.errors import DataVerificationError

__all__ = ["CaseReport", "Finding", "VerificationReport", "describe"]


@dataclass
class Finding:
    """One problem of a case: its check code (``missing``, ``shape``, ``empty_label``, ...) and the message."""

    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"


@dataclass
class CaseReport:
    """The findings of one case (``<list>[<index>]``), its image and label entries and the label's classes."""

    case_id: str
    image: Any = None
    label: Any = None
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    label_classes: list[int] | None = None  # class values present in the label (None: not read)

    @property
    def ok(self) -> bool:
        """True when the case has no error (warnings allowed)."""
        return not self.errors

    def error(self, check: str, message: str) -> None:
        """Record an error of check ``check``."""
        self.errors.append(Finding(check, message))

    def warn(self, check: str, message: str) -> None:
        """Record a warning of check ``check``."""
        self.warnings.append(Finding(check, message))

    def to_dict(self) -> dict:
        """The case as JSON-ready data (paths as strings, arrays by shape)."""
        return {
            "case": self.case_id,
            "image": describe(self.image),
            "label": describe(self.label),
            "errors": [vars(f) for f in self.errors],
            "warnings": [vars(f) for f in self.warnings],
        }


@dataclass
class VerificationReport:
    """The cases of a verification and the problems not tied to one case (e.g. an empty list)."""

    cases: list[CaseReport]
    num_classes: int | None = None
    problems: list[str] = field(default_factory=list)  # errors not tied to one case (e.g. empty list)

    @property
    def ok(self) -> bool:
        """True when no case has an error and there is no problem."""
        return not self.problems and all(c.ok for c in self.cases)

    @property
    def failed(self) -> list[CaseReport]:
        """The cases with errors."""
        return [c for c in self.cases if not c.ok]

    @property
    def warned(self) -> list[CaseReport]:
        """The cases with warnings."""
        return [c for c in self.cases if c.warnings]

    def counts(self) -> dict[str, int]:
        """Number of findings per check code (errors and warnings)."""
        out: dict[str, int] = {}
        for c in self.cases:
            for f in c.errors + c.warnings:
                out[f.check] = out.get(f.check, 0) + 1
        return out

    def table(self) -> str:
        """Cases, cases with errors and cases with warnings per split (the datalist key of each case)."""
        rows: dict[str, list[int]] = {}
        for c in self.cases:
            row = rows.setdefault(c.case_id.rsplit("[", 1)[0], [0, 0, 0])
            row[0] += 1
            row[1] += bool(c.errors)
            row[2] += bool(c.warnings)
        width = max([5] + [len(k) for k in rows])
        lines = [f"{'split':<{width}}  {'cases':>6}  {'errors':>6}  {'warnings':>8}"]
        lines += [f"{k:<{width}}  {a:>6}  {b:>6}  {w:>8}" for k, (a, b, w) in rows.items()]
        return "\n".join(lines)

    def summary(self, max_cases: int = 100) -> str:
        """Counts, then each case with a finding (at most ``max_cases``) with its files and messages."""
        lines = [
            f"verify-data: {len(self.cases)} case(s), {len(self.failed)} with errors, "
            f"{len(self.warned)} with warnings" + (f"; findings per check: {self.counts()}" if self.counts() else "")
        ]
        lines += [f"ERROR {p}" for p in self.problems]
        shown = 0
        for c in self.cases:
            if not (c.errors or c.warnings):
                continue
            if shown >= max_cases:
                lines.append(f"... {len(self.failed) + len(self.warned) - shown} more case(s) not shown")
                break
            shown += 1
            tag = "ERROR" if c.errors else "WARN "
            lines.append(f"{tag} {c.case_id} (image={describe(c.image)}, label={describe(c.label)})")
            lines += [f"    - {f}" for f in c.errors]
            lines += [f"    ~ {f}" for f in c.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The report as JSON-ready data (only the cases with findings are listed)."""
        return {
            "ok": self.ok,
            "problems": list(self.problems),
            "num_cases": len(self.cases),
            "num_failed": len(self.failed),
            "num_warned": len(self.warned),
            "counts": self.counts(),
            "cases": [c.to_dict() for c in self.cases if c.errors or c.warnings],
        }

    def raise_if_failed(self) -> None:
        """Raise :class:`DataVerificationError` (message: :meth:`summary`) when the report is not ok."""
        if not self.ok:
            raise DataVerificationError(self.summary(), report=self)


def describe(x: Any) -> Any:
    """How a report names an image or label entry: the path, a list of them, or the shape of an array."""
    if x is None or isinstance(x, (str, os.PathLike)):
        return None if x is None else str(x)
    if isinstance(x, (list, tuple)):
        return [describe(v) for v in x]
    if hasattr(x, "shape"):
        return f"<array {tuple(x.shape)}>"
    return repr(x)
