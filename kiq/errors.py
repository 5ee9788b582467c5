"""The error a bad setting raises, wherever it is read: the config file and flags (kiq.config),
or a periodic entry declared in the file or in Python (kiq.periodic). It names the key, so
that ``kiq start`` can print one clear line and exit with code 2."""

from __future__ import annotations

import reprlib
from typing import Any

SHOWN_MAX = 100  # characters of a value in an error message
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = SHOWN_MAX
_SHORT.maxlevel = 2


def shown(value: Any) -> str:
    """``repr(value)`` cut short, for an error message: a value from a config file may be a
    string of megabytes, or a small YAML file whose aliases make a list of billions."""
    try:
        text = _SHORT.repr(value)
    except ValueError:  # an int of more digits than Python converts to a string
        return f"an {type(value).__name__} too long to show"
    return text if len(text) <= SHOWN_MAX else text[:SHOWN_MAX - 3] + "..."


class ConfigError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
