"""A TensorBoard sink for the records of ``metrics.jsonl`` (``ntm train --tensorboard``).

Every number of a record is written as a scalar ``<type>/<key>`` at the record's ``step``
(``train/loss``, ``train/terms/nll``, ``eval/test_bpd``, ...), so TensorBoard shows what the
JSON log holds; ``metrics.jsonl`` stays the run's own record.  Needs the ``tensorboard``
package (``pip install 'ntm_engine[tensorboard]'``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple, Union

from .errors import ConfigError

__all__ = ["TensorBoardSink", "scalars"]


def scalars(rec: Dict[str, Any], prefix: str = "") -> Iterator[Tuple[str, float]]:
    """``(tag, value)`` of every finite number in ``rec``, nested dicts as ``a/b``."""
    for key, value in rec.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from scalars(value, tag + "/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value) and key != "step":
            yield tag, float(value)


class TensorBoardSink:
    """``sink(record)`` writes the record's numbers to an event file in ``log_dir`` (made on
    the first record, so only the process that writes the run's records makes one)."""

    def __init__(self, log_dir: Union[str, Path]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install "
                              f"'ntm_engine[tensorboard]' ({e})") from None
        self.log_dir = Path(log_dir)
        self._make = SummaryWriter
        self.writer = None

    def __call__(self, rec: Dict[str, Any]) -> None:
        step = rec.get("step")
        if step is None:
            return
        if self.writer is None:
            self.writer = self._make(log_dir=str(self.log_dir))
        kind = rec.get("type", "record")
        for tag, value in scalars(rec):
            self.writer.add_scalar(f"{kind}/{tag}", value, int(step))
        if kind != "train":
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
