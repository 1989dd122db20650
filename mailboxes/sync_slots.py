"""Fair sharing of the sync workers: counting semaphores in Redis.

A sync runs only while it holds a slot of its tenant (at most the tenant's
`max_concurrent_syncs`, `emailclient.core.limits`) and a slot of its mail
server's host name (at most `SYNC_MAX_CONCURRENT_PER_HOST`), counted across
every worker. A sync that cannot get both is queued again a little later
(`mailboxes.tasks`): it never waits on a worker, so one tenant's backlog, or a
host that answers slowly, cannot occupy every worker.

Each semaphore is a sorted set: a member per holder (the sync's task id),
scored with the time its lease ends. Taking and releasing are one Lua script
each, so both slots are taken together or not at all. A holder renews its
lease while it runs (a thread, every third of the lease); a worker killed
without a word stops renewing and its slot is free once the lease ends, at
most `LEASE_SECONDS` later. Time is Redis's own clock, the same for every
worker.
"""

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.core.cache import cache
from django.core.exceptions import ValidationError

from emailclient.core.cache import redis_client
from emailclient.core.validators import validate_hostname

logger = logging.getLogger(__name__)

# How long a slot outlives its holder's last renewal.
LEASE_SECONDS = 60.0

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


def _client():  # redis-py, of the cache's Redis
    return redis_client()


def _host_name(host: str) -> str:
    """One name per server however it was typed: the API and the admin store
    host names normalised (lower-case, IDNA, no trailing dot), and a row
    saved before they did is normalised here the same way."""
    try:
        return validate_hostname(host)
    except ValidationError:
        return host.strip().lower().rstrip(".")


def _key(kind: str, name: str) -> str:
    return cache.make_key(f"sync:slots:{kind}:{name}")


@dataclass(frozen=True)
class SlotRequest:
    """The slots a sync needs: its tenant's and its host's, with their caps."""

    tenant_id: uuid.UUID
    tenant_limit: int
    host: str
    host_limit: int

    def redis_keys(self) -> list[str]:
        return [_key("tenant", str(self.tenant_id)), _key("host", _host_name(self.host))]

    def limits(self) -> list[int]:
        return [self.tenant_limit, self.host_limit]

    def describe(self, index: int) -> str:
        """What a sync waits for when semaphore `index` (1-based) is full."""
        if index == 1:
            return f"the tenant's {self.tenant_limit} concurrent syncs are running (max_concurrent_syncs)"
        return f"{self.host_limit} syncs with {self.host} are running (SYNC_MAX_CONCURRENT_PER_HOST)"


def slots_acquire(*, request: SlotRequest, holder: str, lease: float = LEASE_SECONDS) -> str:
    """Take both slots for `holder`, or neither. Returns "" when taken, else
    what the sync waits for. Taking slots already held renews them."""
    full = int(_client().eval(_ACQUIRE, 2, *request.redis_keys(), lease, holder, *request.limits()))
    return request.describe(full) if full else ""


def slots_renew(*, request: SlotRequest, holder: str, lease: float = LEASE_SECONDS) -> int:
    return int(_client().eval(_RENEW, 2, *request.redis_keys(), lease, holder))


def slots_release(*, request: SlotRequest, holder: str) -> None:
    client = _client()
    for key in request.redis_keys():
        client.zrem(key, holder)


def slots_in_use(*, request: SlotRequest) -> tuple[int, int]:
    """Slots held now (leases not yet ended) of the tenant and of the host."""
    client = _client()
    seconds, micros = client.time()
    now = seconds + micros / 1_000_000
    tenant_key, host_key = request.redis_keys()
    return (
        int(client.zcount(tenant_key, now, "+inf")),
        int(client.zcount(host_key, now, "+inf")),
    )


@contextmanager
def slots_held(*, request: SlotRequest, holder: str, lease: float = LEASE_SECONDS) -> Iterator[None]:
    """Keep the slots `holder` took renewed for the block, release them after."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease / 3):
            try:
                slots_renew(request=request, holder=holder, lease=lease)
            except Exception:  # Redis away a moment: the lease covers two misses
                logger.warning("could not renew the sync slots of %s", holder, exc_info=True)

    thread = threading.Thread(target=renew, name="sync-slots", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        slots_release(request=request, holder=holder)
