"""The library's log: ``logging.getLogger("ntm_engine")``.

The library never prints; what it reports (progress of a run, warnings about a resumed config,
where files were written) goes to this logger at INFO (WARNING for warnings).  An application
that imports ``ntm_engine`` configures it as it configures any logger; the ``ntm`` command line
installs :func:`cli_handler`, which writes each message as it is to the current ``sys.stderr``.
"""
from __future__ import annotations

import logging
import sys

__all__ = ["logger", "log", "cli_handler"]

logger = logging.getLogger("ntm_engine")


def log(msg: str) -> None:
    """Report ``msg`` on the ``ntm_engine`` logger (WARNING when it starts with "warning")."""
    level = logging.WARNING if msg.lstrip().lower().startswith("warning") else logging.INFO
    logger.log(level, msg)


class _CurrentStderr(logging.Handler):
    """Writes each record's message to ``sys.stderr`` as it is at that moment (so a test's
    captured stderr, or a redirected one, receives it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:   # logging's contract: never raise from emit
            self.handleError(record)


def cli_handler() -> None:
    """Send the ``ntm_engine`` log at INFO and above to stderr, message only (once per
    process; what the ``ntm`` command line does)."""
    if any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        return
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
