"""The one exception type the entry points turn into a one-line message."""


class ConfigError(ValueError):
    """A bad name, parameter or configuration value, found before any training starts."""
