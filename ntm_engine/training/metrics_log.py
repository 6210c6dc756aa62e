"""``metrics.jsonl`` of a run folder: one JSON record per line, appended; a torn last line
(from a kill) is skipped on reading."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import checkpoint as ckpt

METRICS_FILE = "metrics.jsonl"


def _parse(path: Path) -> Tuple[List[Dict[str, Any]], List[int]]:
    """``(records, numbers of the lines that are not a JSON record)`` of a metrics file."""
    out, bad = [], []
    if not path.exists():
        return out, bad
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
        elif line.strip():
            bad.append(n)
    return out, bad


def read_metrics(run_dir) -> List[Dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a torn last line, from a kill, is skipped)."""
    return _parse(Path(run_dir) / METRICS_FILE)[0]


def truncate_metrics(run_dir, step: int, log: Optional[Callable[[str], None]] = None) -> None:
    """Drop records written after ``step`` (by a run that was killed before checkpointing
    them), so a resumed run's curve continues without duplicates; lines that are not a
    record (a torn last line, from a kill while writing) are dropped too, with a warning to
    ``log``."""
    path = Path(run_dir) / METRICS_FILE
    records, bad = _parse(path)
    if bad and log is not None:
        log(f"warning: {path}: dropped {len(bad)} unreadable line(s) (line "
            f"{', '.join(map(str, bad))} of {len(records) + len(bad)}; a torn last line is "
            "what a kill while writing leaves)")
    if not path.exists():
        return
    keep = [r for r in records if r.get("step", 0) <= step]
    ckpt.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def append_metrics(run_dir, rec: Dict[str, Any], *, sync: bool = False) -> None:
    """Append one record (``sync``: fsync it, for records that must survive a kill)."""
    with open(Path(run_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        if sync:
            os.fsync(f.fileno())
