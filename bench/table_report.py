"""The ending the evaluation scripts share: print a result's markdown table and, with an
output prefix, write it as ``PREFIX.md`` next to the result as ``PREFIX.json``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def finish(res: dict, table: str, out: Optional[str]) -> int:
    """Print ``table``; with ``out``, write ``out + ".md"`` (the table) and ``out + ".json"``
    (``res``); the exit status 0."""
    print(table)
    if out:
        Path(out + ".md").write_text(table)
        Path(out + ".json").write_text(json.dumps(res, indent=1))
    return 0
