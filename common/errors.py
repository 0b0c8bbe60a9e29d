"""The exception tree of cefmp4: every error it raises on purpose is one of these.

CefError                 base of everything cefmp4 raises on purpose
├── ConfigError          a setting is missing or wrong; the process stops at start
├── StorageError         an S3 call failed; `retryable` tells whether trying again can help
├── LogError             a Redis call failed (the log, the state, the coordination keys)
│   └── LogUnavailable   Redis is down, restarting or not answering in time: wait it out
├── CorruptEvent         a log entry cannot be decoded into an event
├── SnapshotError        the retention snapshot cannot be read; replay cannot start from it
├── Stopping             the process is stopping; unfinished work was left for later
├── LeaseLost            a lease, lock or claim lapsed while its holder still worked
├── FileChanged          the file changed under a pass; the change brings another pass
├── ProjectionBehind     the projection has not reached a path's last recorded step yet
└── OfferWithdrawn       the uploader holding a stream took it back; helpers leave it

Errors from the libraries cefmp4 talks through (botocore, redis-py) are wrapped where the
call is made (common/s3.py, common/eventlog.py), raised `from` the original so the cause
stays. A failing disk read is an OSError and stays one: it is not an outage to wait out.
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


class LogUnavailable(LogError):
    pass


class CorruptEvent(CefError):
    pass


class SnapshotError(CefError):
    pass


class Stopping(CefError):
    pass


class LeaseLost(CefError):
    pass


class StateMoved(LeaseLost):
    """The projected state is not at the position its writer left it: a failover lost the
    writer's latest writes (or another writer slipped in). Start again from what is there."""


class FileChanged(CefError):
    pass


class ProjectionBehind(CefError):
    pass


class OfferWithdrawn(CefError):
    pass
