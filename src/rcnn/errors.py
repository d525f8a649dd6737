"""Errors a user can fix: a flag, a file, the data.

The command line prints them as ``rcnn COMMAND: error: MESSAGE`` with exit status 2 and no
traceback (``-v`` adds it); any other exception is a bug and keeps its traceback. They derive
from ``ValueError`` so that library callers can catch them as such.
"""


class RcnnError(ValueError):
    """A failure the user can fix; the message names the flag or file and what to do."""


class ConfigError(RcnnError):
    """A flag has a value the command cannot use; the message names the flag."""
