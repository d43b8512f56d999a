"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class EdgeRuntimeError(Exception):
    """Something a user can act on: the message names the file, shape or value at fault.

    It derives from ``Exception`` only; bad arguments to library calls raise ``ValueError``
    subclasses below so that callers may catch either.
    """


class InputError(EdgeRuntimeError, ValueError):
    """Bad input data: wrong shape, dtype, width, NaN, an unreadable image or file."""


class PayloadError(InputError):
    """Bytes that do not fit their format (a bridge message, a fleet payload): nothing was applied.

    ``kind`` names the failure for counters and logs: ``malformed`` unless said otherwise (the
    fleet also uses ``unsigned``, ``bad_signature``, ``oversized``, ``wrong_model``); given
    explicitly, it leads the message.

    >>> str(PayloadError("3 bytes after the last array", kind="malformed"))
    'malformed: 3 bytes after the last array'
    """

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(f"{kind}: {message}" if kind else message)
        self.kind = kind or "malformed"
