"""Errors raised on user mistakes. Each names the file, row or option at fault."""


class ChestKDError(Exception):
    """Base class: a problem with the user's input, not a bug in chestkd."""


class DataError(ChestKDError):
    """A dataset file, row or image is missing or malformed."""


class ConfigError(ChestKDError):
    """An option or configuration value is unknown or invalid."""
