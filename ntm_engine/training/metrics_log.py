"""``metrics.jsonl`` of a run folder: one JSON record per line, appended; a torn last line
(from a kill) is skipped on reading."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List

from .. import checkpoint as ckpt

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir) -> List[Dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a torn last line, from a kill, is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(run_dir, step: int) -> None:
    """Drop records written after ``step`` (by a run that was killed before checkpointing
    them), so a resumed run's curve continues without duplicates."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    keep = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    ckpt.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def append_metrics(run_dir, rec: Dict[str, Any], *, sync: bool = False) -> None:
    """Append one record (``sync``: fsync it, for records that must survive a kill)."""
    with open(Path(run_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        if sync:
            os.fsync(f.fileno())
