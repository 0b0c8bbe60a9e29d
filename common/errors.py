"""The exception tree of cefmp4.

CefError               base of everything cefmp4 raises on purpose
├── ConfigError        a setting is missing or wrong; the process stops at start
├── StorageError       an S3 call failed; `retryable` tells whether trying again can help
├── LogError           the Redis log could not be read or written
├── CorruptEvent       a log entry cannot be decoded into an event
└── Stopping           the process is stopping; unfinished work was left for later
"""

from __future__ import annotations


class CefError(Exception):
    pass


class ConfigError(CefError):
    pass


class StorageError(CefError):
    def __init__(self, message: str, *, code: str = "", retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class LogError(CefError):
    pass


class CorruptEvent(CefError):
    pass


class Stopping(CefError):
    pass
