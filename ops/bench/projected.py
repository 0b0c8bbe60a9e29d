"""What cefmp4's projected state says of a run's recordings, for the benchmark.

Read through cefmp4's own StateReader (so the layout of the state stays that module's
business), from the benchmark's synchronous code: a small event loop of its own.
"""

from __future__ import annotations

import asyncio

from cefmp4.common.eventlog import connect_url
from cefmp4.common.keys import Keys
from cefmp4.common.statestore import StateReader, StreamSummary


class Projected:
    def __init__(self, redis_url: str, keys: Keys) -> None:
        self._runner = asyncio.Runner()
        self._redis = connect_url(redis_url)
        self._reader = StateReader(self._redis, keys)

    def latest(self, rels: list[str]) -> list[StreamSummary | None]:
        """The latest stream of each path, in order (None: not started yet)."""
        return self._runner.run(self._reader.latest_summaries(rels))

    def close(self) -> None:
        self._runner.run(self._redis.aclose())
        self._runner.close()
