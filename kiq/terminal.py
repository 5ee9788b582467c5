"""Text from Redis made safe to print on a terminal.

Anything with write access to Redis chooses the queue names, hostnames, error messages and
backtraces that ``kiq dead show`` or a console log line print, and so would choose escape
sequences that retitle the operator's terminal, clear it, hide text or reorder it (bidi
controls). Such characters are shown as Python escapes instead (``\\x1b``), as ``repr`` would.
"""

from __future__ import annotations


def printable(text: str, keep: str = "") -> str:
    """``text`` with every character that ``str.isprintable`` refuses written as its escape,
    but those in ``keep`` (a line break in a multi-line backtrace)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char in keep else repr(char)[1:-1] for char in text)
