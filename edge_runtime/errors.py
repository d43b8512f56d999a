"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class EdgeRuntimeError(Exception):
    """Something a user can act on: the message names the file, shape or value at fault.

    It derives from ``Exception`` only; bad arguments to library calls raise ``ValueError``
    subclasses below so that callers may catch either.
    """


class InputError(EdgeRuntimeError, ValueError):
    """Bad input data: wrong shape, dtype, width, NaN, an unreadable image or file."""
