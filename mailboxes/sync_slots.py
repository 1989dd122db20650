"""Fair sharing of the sync workers: counting semaphores in Redis.

A sync runs only while it holds a slot of its tenant (at most the tenant's
`max_concurrent_syncs`, `emailclient.core.limits`) and a slot of its mail
server's host name (at most `SYNC_MAX_CONCURRENT_PER_HOST`), counted across
every worker. A sync that cannot get both is queued again a little later
(`mailboxes.tasks`): it never waits on a worker, so one tenant's backlog, or a
host that answers slowly, cannot occupy every worker.

The semaphores are `emailclient.core.semaphores` (a holder per sync task
id; both slots taken together or not at all). A holder renews its lease
while it runs (a thread, every third of the lease); a worker killed without a
word stops renewing and its slot is free once the lease ends, at most
`LEASE_SECONDS` later.
"""

import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass

from django.core.exceptions import ValidationError

from emailclient.core.semaphores import (
    semaphore_key,
    semaphores_acquire,
    semaphores_held,
    semaphores_in_use,
    semaphores_release,
    semaphores_renew,
)
from emailclient.core.validators import validate_hostname

# How long a slot outlives its holder's last renewal.
LEASE_SECONDS = 60.0


def _host_name(host: str) -> str:
    """One name per server however it was typed: the API and the admin store
    host names normalised (lower-case, IDNA, no trailing dot), and a row
    saved before they did is normalised here the same way."""
    try:
        return validate_hostname(host)
    except ValidationError:
        return host.strip().lower().rstrip(".")


def _key(kind: str, name: str) -> str:
    return semaphore_key(f"sync:slots:{kind}:{name}")


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
    full = semaphores_acquire(keys=request.redis_keys(), limits=request.limits(), holder=holder, lease=lease)
    return request.describe(full) if full else ""


def slots_renew(*, request: SlotRequest, holder: str, lease: float = LEASE_SECONDS) -> int:
    return semaphores_renew(keys=request.redis_keys(), holder=holder, lease=lease)


def slots_release(*, request: SlotRequest, holder: str) -> None:
    semaphores_release(keys=request.redis_keys(), holder=holder)


def slots_in_use(*, request: SlotRequest) -> tuple[int, int]:
    """Slots held now (leases not yet ended) of the tenant and of the host."""
    tenant, host = semaphores_in_use(keys=request.redis_keys())
    return tenant, host


def slots_held(
    *, request: SlotRequest, holder: str, lease: float = LEASE_SECONDS
) -> AbstractContextManager[None]:
    """Keep the slots `holder` took renewed for the block, release them after."""
    return semaphores_held(keys=request.redis_keys(), holder=holder, lease=lease)
