"""Several uploaders sending different parts of one recording at once.

The uploader holding a path offers its stream while a pass has more whole parts to send
than it has upload slots; uploaders with spare slots take parts of it. Every part is
claimed before it is read: a claim has a deadline, is renewed while the part is sent,
and turns "done" once the part is recorded, so no part is sent by two uploaders at once
and none twice. Before it finalizes, the holder withdraws the offer and waits until no
claim is in flight: from then on only the holder touches the upload.

An offer lapses unless the holder keeps claiming parts, so a crashed holder's offer goes
away by itself. Deadlines use Redis's clock, so uploaders' clocks need not agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import cast

import msgspec

from cefmp4.common.errors import LogUnavailable, OfferWithdrawn
from cefmp4.common.eventlog import Redis
from cefmp4.common.keys import Keys
from cefmp4.common.lease import Held

logger = logging.getLogger(__name__)

CLAIMS_TTL_MS = 24 * 3600 * 1000
DONE = "done"

_NOW = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
"""

# KEYS: offers, claims. ARGV: stream id, ttl ms, encoded offer, claims ttl ms.
_OFFER = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], 'offer', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
"""
)

# KEYS: offers. Returns the stream ids of live offers.
_LIVE_OFFERS = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
)

# KEYS: offers, claims. ARGV: stream id, part, token, ttl ms, 'helper' or 'holder',
# claims ttl ms. Returns 1 if claimed, 0 if the part is done or claimed by someone else,
# -1 if a helper asks for a stream no longer offered. A holder's claim keeps its offer.
_CLAIM = (
    _NOW
    + """
local ttl = tonumber(ARGV[4])
if ARGV[5] == 'helper' then
  local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not deadline or tonumber(deadline) < now then return -1 end
else
  redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[1])
end
local held = redis.call('HGET', KEYS[2], ARGV[2])
if held then
  if held == 'done' then return 0 end
  local deadline = tonumber(string.match(held, ' (%d+)$'))
  if deadline > now then return 0 end
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3] .. ' ' .. (now + ttl))
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 1
"""
)

# KEYS: claims. ARGV: part, token, ttl ms.
_RENEW = (
    _NOW
    + """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held or string.sub(held, 1, #ARGV[2] + 1) ~= ARGV[2] .. ' ' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. (now + tonumber(ARGV[3])))
return 1
"""
)

# KEYS: claims. ARGV: part, token, 'done' or 'release'.
_FINISH = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held or string.sub(held, 1, #ARGV[2] + 1) ~= ARGV[2] .. ' ' then return 0 end
if ARGV[3] == 'done' then
  redis.call('HSET', KEYS[1], ARGV[1], 'done')
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
"""

# KEYS: offers, claims. ARGV: stream id. Ends the offer; returns the number of claims
# still in flight, then the numbers of the parts done.
_WITHDRAW = (
    _NOW
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
local in_flight = 0
local done = {}
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  local name, held = fields[i], fields[i + 1]
  if name ~= 'offer' then
    if held == 'done' then
      table.insert(done, name)
    elseif tonumber(string.match(held, ' (%d+)$')) > now then
      in_flight = in_flight + 1
    end
  end
end
return {in_flight, unpack(done)}
"""
)


class Offer(msgspec.Struct, frozen=True):
    """What a helper needs to send parts of a stream without reading its state."""

    stream_id: str
    path: str
    s3_key: str
    upload_id: str
    inode: int
    device: int
    part_size: int
    offered_at_ms: int  # tells a new offer (of the same stream) from one already served


WITHDRAW_POLL_S = 0.02


class PartClaims:
    def __init__(self, redis: Redis, keys: Keys, ttl_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = ttl_ms
        self._offer = redis.register_script(_OFFER)
        self._live_offers = redis.register_script(_LIVE_OFFERS)
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._finish = redis.register_script(_FINISH)
        self._withdraw = redis.register_script(_WITHDRAW)

    async def offer(self, offer: Offer) -> None:
        await self._offer(
            keys=[self.keys.offers, self.keys.part_claims(offer.stream_id)],
            args=[offer.stream_id, self.ttl_ms, msgspec.json.encode(offer), CLAIMS_TTL_MS],
        )

    async def retract(self, stream_id: str) -> None:
        """End the offer without waiting for the claims in flight."""
        await self.redis.zrem(self.keys.offers, stream_id)

    async def forget(self, stream_id: str) -> None:
        """Drop the claims of a finished stream (best effort: they expire anyway)."""
        with contextlib.suppress(LogUnavailable):
            await self.redis.unlink(self.keys.part_claims(stream_id))

    async def live_offers(self) -> list[Offer]:
        stream_ids = cast(list[bytes], await self._live_offers(keys=[self.keys.offers]))
        offers: list[Offer] = []
        for stream_id in stream_ids:
            raw = await self.redis.hget(self.keys.part_claims(stream_id.decode()), "offer")
            if raw is None:
                continue
            try:
                offers.append(msgspec.json.decode(raw, type=Offer))
            except msgspec.DecodeError as exc:
                logger.warning("ignoring an unreadable offer of %s: %s", stream_id.decode(), exc)
        return offers

    async def withdraw(self, stream_id: str) -> set[int]:
        """End the offer and wait until no claim on the stream is in flight.

        Returns the parts done by anyone, helpers included.
        """
        while True:
            reply = await self._withdraw(
                keys=[self.keys.offers, self.keys.part_claims(stream_id)], args=[stream_id]
            )
            if int(reply[0]) == 0:
                return {int(number) for number in reply[1:]}
            await asyncio.sleep(WITHDRAW_POLL_S)

    @contextlib.asynccontextmanager
    async def held(self, stream_id: str, part: int, *, helper: bool) -> AsyncIterator[Held | None]:
        """Hold the claim on `part` for the block (None: not ours to send).

        If the claim lapses, the block is cancelled and LeaseLost raised from it; the part
        counts as done only if the block ends without an error. Raises OfferWithdrawn for a
        helper once the stream is no longer offered.
        """
        claims = self.keys.part_claims(stream_id)
        token = uuid.uuid4().hex
        claimed = int(
            await self._claim(
                keys=[self.keys.offers, claims],
                args=[
                    stream_id,
                    part,
                    token,
                    self.ttl_ms,
                    "helper" if helper else "holder",
                    CLAIMS_TTL_MS,
                ],
            )
        )
        if claimed < 0:
            raise OfferWithdrawn(stream_id)
        if not claimed:
            yield None
            return

        async def renew() -> bool:
            return bool(await self._renew(keys=[claims], args=[part, token, self.ttl_ms]))

        # Just claimed: renewed as of now.
        claim = Held(
            renew, self.ttl_ms, f"the claim on part {part} of {claims}", renewed_at=time.monotonic()
        )
        outcome = "release"
        try:
            async with claim.kept():
                yield claim
            outcome = DONE
        finally:
            await self._finish(keys=[claims], args=[part, token, outcome])
