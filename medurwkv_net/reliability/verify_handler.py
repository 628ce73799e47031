"""The ignite handler that verifies a training's data before the first iteration."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from ignite.engine import Engine, Events

from medurwkv_net.core.errors import DataVerificationError

from .verify_data import already_verified, verify_datalist
from .verify_report import VerificationReport

__all__ = ["VerifyDataHandler"]

logger = logging.getLogger(__name__)


class VerifyDataHandler:
    """Runs :func:`verify_datalist` at ``Events.STARTED`` and refuses to train on bad data.

    Usable as a MONAI bundle ``train#handlers`` entry::

        {"_target_": "medurwkv_net.reliability.VerifyDataHandler", "datalist": "@train#dataset#data",
         "num_classes": 3, "enabled": "@verify_data"}

    Raises :class:`DataVerificationError` (message: the per-case summary) before the first iteration.
    Verification runs once per handler (a resumed ``run`` does not repeat it) unless ``every_run``.

    Args:
        datalist: the cases (a list, a ``{"train": [...], ...}`` mapping, a MONAI ``Dataset``, or a callable
            returning one of these).
        num_classes: allowed label values are ``range(num_classes)``.
        enabled: ``False`` skips the check.
        image_key: key of the image of each case.
        label_key: key of the label of each case.
        every_run: verify again at every ``Events.STARTED`` (default: once).
        kwargs: passed to :func:`verify_datalist`.
    """

    def __init__(
        self,
        datalist: Any,
        num_classes: int | None = None,
        enabled: bool = True,
        image_key: str = "image",
        label_key: str = "label",
        every_run: bool = False,
        **kwargs: Any,
    ):
        self.datalist = datalist
        self.num_classes = num_classes
        self.enabled = bool(enabled)
        self.image_key = image_key
        self.label_key = label_key
        self.every_run = every_run
        self.kwargs = kwargs
        self.report: VerificationReport | None = None

    def attach(self, engine: Engine) -> None:
        """Run at ``Events.STARTED`` of ``engine`` (once, however often it is attached)."""
        if not engine.has_event_handler(self, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> VerificationReport | None:
        """Verify the data (unless disabled or done); return the report.

        Raises:
            DataVerificationError: a case failed (the message lists each one with its file and the reason).
        """
        if not self.enabled or (self.report is not None and not self.every_run):
            return self.report
        data = self.datalist() if callable(self.datalist) else self.datalist
        if hasattr(data, "data") and not isinstance(data, (list, tuple, Mapping)):
            data = data.data  # a MONAI Dataset
        cases = [c for v in data.values() for c in v] if isinstance(data, Mapping) else list(data)
        if already_verified(cases, self.image_key, self.label_key):
            logger.info(f"{len(cases)} case(s) already verified before loading (verify_datalist_file)")
            self.report = VerificationReport([])
            return self.report
        report = verify_datalist(
            data, self.num_classes, image_key=self.image_key, label_key=self.label_key, **self.kwargs
        )
        self.report = report
        if not report.ok:
            raise DataVerificationError(
                "training refused: the dataset failed verification (switch off with enabled=False)\n"
                + report.summary(),
                report=report,
            )
        logger.info(report.summary(max_cases=20))
        return report
