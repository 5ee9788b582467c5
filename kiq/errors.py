"""The error a bad setting raises, wherever it is read: the config file and flags (kiq.config),
or a periodic entry declared in the file or in Python (kiq.periodic). It names the key, so
that ``kiq start`` can print one clear line and exit with code 2."""

from __future__ import annotations


class ConfigError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
