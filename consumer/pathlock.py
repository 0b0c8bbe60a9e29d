"""One uploader at a time per recording, without losing a request that arrives meanwhile.

An uploader that finds the path locked leaves a mark: the strongest pass mode asked for
(consumer/pass_decision.py's Mode, as a number) and a count of marks. The holder, before
it lets go, takes what was marked since it last looked and runs another pass for it.

Each step is one Lua script, and each can be tried again after its reply was lost (Redis
went down between running a script and answering it) with the same outcome: a holder that
asks again for the lock it already has gets it, and a pass handed out but not answered is
handed out again. A mark is removed only when the lock is let go with nothing new marked,
so a holder that dies leaves its last pass to the next one.
"""

from __future__ import annotations

import uuid

from cefmp4.common.eventlog import Redis
from cefmp4.common.keys import Keys
from cefmp4.common.lease import RELEASE_SCRIPT, RENEW_SCRIPT, Held

# The marks hash: `seq` counts marks, `mode` is the strongest asked for since the holder
# last took them; `given_seq` and `given_mode` are what the holder took last, so a take
# whose reply was lost gives the same again.
_TAKE = """
local function take(seen)
  local given_seq = tonumber(redis.call('HGET', KEYS[2], 'given_seq') or '0')
  if given_seq > seen then
    return {tonumber(redis.call('HGET', KEYS[2], 'given_mode')), given_seq}
  end
  local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
  if seq > seen then
    local mode = redis.call('HGET', KEYS[2], 'mode') or '0'
    redis.call('HSET', KEYS[2], 'given_seq', seq, 'given_mode', mode, 'mode', 0)
    return {tonumber(mode), seq}
  end
  return {0, seen}
end
"""

# KEYS: lock, marks. ARGV: token, ttl ms, mode, marks ttl ms.
# Returns {1, mode taken, seq} when held by this token, else {0, 0, 0} (marked).
_ACQUIRE_OR_MARK = (
    _TAKE
    + """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] or (not owner and redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  local taken = take(0)
  return {1, taken[1], taken[2]}
end
redis.call('HINCRBY', KEYS[2], 'seq', 1)
if tonumber(ARGV[3]) > tonumber(redis.call('HGET', KEYS[2], 'mode') or '0') then
  redis.call('HSET', KEYS[2], 'mode', ARGV[3])
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {0, 0, 0}
"""
)

# KEYS: lock, marks. ARGV: token, ttl ms, seq seen. Returns {-1, 0} if the lock is not
# this token's, {mode, seq} of a pass to run now (lock kept), or {0, seq} (let go).
_RELEASE_OR_CONTINUE = (
    _TAKE
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {-1, 0}
end
local taken = take(tonumber(ARGV[3]))
if taken[1] > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return taken
end
redis.call('DEL', KEYS[1], KEYS[2])
return {0, taken[2]}
"""
)

MARK_TTL_MS = 24 * 3600 * 1000


class PathLock(Held):
    def __init__(self, redis: Redis, keys: Keys, path: str, ttl_ms: int) -> None:
        super().__init__(self._renew_lock, ttl_ms, f"the lock on {path}")
        self.path = path
        self.keys = [keys.path_lock(path), keys.path_dirty(path)]
        self.token = uuid.uuid4().hex
        self._seen = 0  # the count of marks this holder has taken up to
        self._acquire_or_mark = redis.register_script(_ACQUIRE_OR_MARK)
        self._release_or_continue = redis.register_script(_RELEASE_OR_CONTINUE)
        self._renew = redis.register_script(RENEW_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)

    async def acquire_or_mark(self, mode: int) -> int:
        """The mode to run with if acquired (at least `mode`), or 0 if someone else holds it."""
        acquired, marked, seq = await self._acquire_or_mark(
            keys=self.keys, args=[self.token, self.ttl_ms, int(mode), MARK_TTL_MS]
        )
        if not acquired:
            return 0
        self._seen = int(seq)
        return max(int(mode), int(marked))

    @property
    def key(self) -> str:
        return self.keys[0]

    async def _renew_lock(self) -> bool:
        return bool(await self._renew(keys=self.keys[:1], args=[self.token, self.ttl_ms]))

    async def release_or_continue(self) -> int:
        """0 when released; the mode of a pass asked for meanwhile (lock kept); -1 if lost."""
        mode, seq = await self._release_or_continue(
            keys=self.keys, args=[self.token, self.ttl_ms, self._seen]
        )
        if int(mode) > 0:
            self._seen = int(seq)
        return int(mode)

    async def release(self) -> None:
        """Give the lock up, leaving the marks (and the pass last taken) to the next holder."""
        await self._release(keys=self.keys[:1], args=[self.token])
