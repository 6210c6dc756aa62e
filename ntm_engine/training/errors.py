"""The two errors of a run: a configuration that cannot work, and a run that had to stop."""


class ConfigError(ValueError):
    """A configuration that cannot work; raised before any training work starts."""


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses; the run stopped."""
