"""The exception types the entry points turn into a one-line message."""


class ConfigError(ValueError):
    """A bad name, parameter or configuration value, found before any training starts."""


class ContractError(ConfigError):
    """A layer (or a user's model) breaks the contract every layer must keep (layers/README.md)."""
