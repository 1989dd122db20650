"""Counting semaphores in Redis, shared by every process of the service.

Each semaphore is a sorted set: a member per holder, scored with the time its
lease ends (Redis's own clock, the same for every process). Taking several
at once is one Lua script, so a holder gets all of them or none; a holder
that dies without a word keeps its place only until its lease ends. Used by
the sync's fair shares (`mailboxes.sync_slots`), a tenant's sending runs
(`compose.outbox.outbox_send_in_turn`) and the account verifications a user
or a tenant may run at once (`accounts.verification`).
"""

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from django.core.cache import cache

from .cache import redis_client

logger = logging.getLogger(__name__)

# KEYS: the semaphores. ARGV: lease (s), holder, then one limit per key.
# Returns 0 when every slot was taken, else the (1-based) index of the first
# full semaphore (nothing taken then).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if not redis.call('ZSCORE', key, ARGV[2]) then
    if redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then
      return i
    end
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, ARGV[2])
  redis.call('EXPIRE', key, math.ceil(lease) * 2)
end
return 0
"""

# KEYS: the semaphores. ARGV: lease (s), holder. Extends the holder's lease
# where it still holds a slot; returns how many it still holds.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = 0
for _, key in ipairs(KEYS) do
  held = held + redis.call('ZADD', key, 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[2])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[1])) * 2)
end
return held
"""


def semaphore_key(name: str) -> str:
    """The Redis key of semaphore `name` (the cache's prefix and version)."""
    return cache.make_key(name)


def semaphores_acquire(*, keys: Sequence[str], limits: Sequence[int], holder: str, lease: float) -> int:
    """Take a slot of each of `keys` (at most `limits` holders each) for
    `holder`, or none. 0 when taken, else the 1-based index of the first full
    one. Taking slots already held renews them."""
    return int(redis_client().eval(_ACQUIRE, len(keys), *keys, lease, holder, *limits))


def semaphores_renew(*, keys: Sequence[str], holder: str, lease: float) -> int:
    """Extend `holder`'s leases; how many slots it still holds."""
    return int(redis_client().eval(_RENEW, len(keys), *keys, lease, holder))


def semaphores_release(*, keys: Sequence[str], holder: str) -> None:
    client = redis_client()
    for key in keys:
        client.zrem(key, holder)


def semaphores_in_use(*, keys: Sequence[str]) -> list[int]:
    """Slots held now (leases not yet ended), per key."""
    client = redis_client()
    seconds, micros = client.time()
    now = seconds + micros / 1_000_000
    return [int(client.zcount(key, now, "+inf")) for key in keys]


@contextmanager
def semaphores_held(*, keys: Sequence[str], holder: str, lease: float) -> Iterator[None]:
    """Keep the slots `holder` took renewed for the block (a thread, every
    third of the lease), and release them after."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease / 3):
            try:
                semaphores_renew(keys=keys, holder=holder, lease=lease)
            except Exception:  # Redis away a moment: the lease covers two misses
                logger.warning("could not renew the slots of %s", holder, exc_info=True)

    thread = threading.Thread(target=renew, name="semaphores", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        try:
            semaphores_release(keys=keys, holder=holder)
        except Exception:  # Redis away: the lease ends on its own
            logger.warning("could not release the slots of %s", holder, exc_info=True)
