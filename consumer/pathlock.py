"""One uploader at a time per recording, without losing a request that arrives meanwhile.

An uploader that finds the path locked leaves a "dirty" mark (the strongest mode asked
for) and moves on; the holder sees the mark when it releases and runs another pass.
Acquire-or-mark and release-or-continue are each one Lua script, so no request falls
between a holder's last pass and its release.
"""

from __future__ import annotations

import uuid

from common.keys import Keys
from common.lease import RELEASE_SCRIPT, RENEW_SCRIPT
from common.log import Redis

SYNC = 1
FINAL = 2

_ACQUIRE_OR_MARK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local mark = tonumber(redis.call('GET', KEYS[2]) or '0')
  redis.call('DEL', KEYS[2])
  return {1, mark}
end
local mark = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[3]) > mark then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
end
return {0, 0}
"""

_RELEASE_OR_CONTINUE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local mark = tonumber(redis.call('GET', KEYS[2]) or '0')
if mark > 0 then
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return mark
end
redis.call('DEL', KEYS[1])
return 0
"""

MARK_TTL_MS = 24 * 3600 * 1000


class PathLock:
    def __init__(self, redis: Redis, keys: Keys, path: str, ttl_ms: int) -> None:
        self.keys = [keys.path_lock(path), keys.path_dirty(path)]
        self.token = uuid.uuid4().hex
        self.ttl_ms = ttl_ms
        self._acquire_or_mark = redis.register_script(_ACQUIRE_OR_MARK)
        self._release_or_continue = redis.register_script(_RELEASE_OR_CONTINUE)
        self._renew = redis.register_script(RENEW_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)

    async def acquire_or_mark(self, mode: int) -> int:
        """The mode to run with if acquired (at least `mode`), or 0 if someone else holds it."""
        acquired, mark = await self._acquire_or_mark(
            keys=self.keys, args=[self.token, self.ttl_ms, mode, MARK_TTL_MS]
        )
        return max(mode, int(mark)) if acquired else 0

    async def renew(self) -> bool:
        return bool(await self._renew(keys=self.keys[:1], args=[self.token, self.ttl_ms]))

    async def release_or_continue(self) -> int:
        """0 when released; the mode of a pass asked for meanwhile (lock kept); -1 if lost."""
        return int(await self._release_or_continue(keys=self.keys, args=[self.token, self.ttl_ms]))

    async def release(self) -> None:
        """Give the lock up, leaving any mark for the next holder."""
        await self._release(keys=self.keys[:1], args=[self.token])
