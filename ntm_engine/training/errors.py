"""The two errors of a run: a configuration that cannot work, and a run that had to stop."""


class ConfigError(ValueError):
    """A configuration that cannot work; raised before any training work starts."""


class OptionError(ConfigError):
    """A bad value of one command-line option (the message names it and what came): the
    command line reports it in one line with exit status 2, like its own argument errors."""


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses; the run stopped."""
