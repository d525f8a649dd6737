"""Errors a user can fix: a flag, a file, the data.

The command line prints them as ``rcnn COMMAND: error: MESSAGE`` with exit status 2 and no
traceback (``-v`` adds it); any other exception is a bug and keeps its traceback. They derive
from ``ValueError`` so that library callers can catch them as such.
"""

import dataclasses
import math


class RcnnError(ValueError):
    """A failure the user can fix; the message names the flag or file and what to do."""


class ConfigError(RcnnError):
    """A flag has a value the command cannot use; the message names the flag."""


def check_numbers(settings, flags: dict[str, str] | None = None) -> None:
    """Refuses a NaN in a float field of the dataclass ``settings``, naming its flag (``--`` and
    the field's name, or ``flags[name]``). Every comparison with NaN is false, so a NaN
    threshold passes a check such as ``if x < 0: raise`` and then keeps nothing (or all)."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, float) and math.isnan(value):
            flag = (flags or {}).get(f.name, "--" + f.name.replace("_", "-"))
            raise ConfigError(f"{flag} must be a number, got nan")
