"""Errors a user can fix: the stage runner prints them as one message and exits non-zero."""


class KdpipeError(Exception):
    """A problem with the user's input (params, data, upstream files), not a bug."""


class ConfigError(KdpipeError):
    """params.yaml is missing, malformed or holds an invalid value."""


class DataError(KdpipeError):
    """Input data is missing, corrupt or laid out wrongly."""


class MissingInputError(KdpipeError):
    """An upstream output (prepared data, a checkpoint) is missing or unreadable."""
