"""Errors the user can fix. Entry points print them as one line and exit non-zero."""


class EmbedexpError(Exception):
    """Base class: a problem with the user's config, data or model folder."""


class ConfigError(EmbedexpError):
    """A config key has a value we cannot use."""


class DataError(EmbedexpError):
    """A data file is missing or malformed; the message names the file and line."""


class ModelError(EmbedexpError):
    """A model folder cannot be loaded."""


class NumericalError(EmbedexpError):
    """Training produced a NaN/inf loss or gradient; the message names the step and the last checkpoint."""
