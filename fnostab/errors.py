"""Exceptions that carry a message meant for the user.

The CLI turns an :class:`InputError` into exit code 2 with its message on one line and no traceback;
library callers catch it like any ``ValueError``.
"""


class FnostabError(Exception):
    """Base class of every error fnostab raises on purpose."""


class InputError(FnostabError, ValueError):
    """Bad input from the user: a file, a value or a combination of options.

    The message names the file, key or field, what was expected and what was found.
    """


class ConfigError(InputError):
    """A configuration that cannot be built (for example a model geometry that does not fit N)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a scheduler, a CI cancel, ``kill``): stop as on Ctrl-C, but exit 143.

    A KeyboardInterrupt subclass so that every ``except KeyboardInterrupt`` cleanup (Lightning's
    included) runs for it exactly as for Ctrl-C.
    """
