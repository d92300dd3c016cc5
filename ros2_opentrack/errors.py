"""Exceptions with messages meant for users: they name the input and what was expected."""


class OpenTrackError(Exception):
    """Base of every error this package raises on purpose."""


class InputError(OpenTrackError, ValueError):
    """A frame, message, file or parameter is not what the pipeline expects (and the message says so)."""


class ConfigError(InputError):
    """A configuration file or parameter is malformed, unknown or out of range."""


class BackendUnavailable(OpenTrackError, RuntimeError):
    """A model backend cannot run here: missing package, missing weights while offline, no device."""
