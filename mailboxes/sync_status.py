"""Live sync status of each account, in Redis (the Django cache).

`state` is one of idle, queued, waiting (queued, but its tenant's or its
mail server's concurrent syncs are all running: `detail` says which, see
`sync_slots`), running, failed, and over_quota (the sync ran but stored no
new mail past the tenant's quota: `detail` says which). The `active` key
holds the id of the sync task that is queued, waiting or running, so that a
second trigger joins it instead of starting another.
"""

import uuid

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

IDLE, QUEUED, RUNNING, FAILED = "idle", "queued", "running", "failed"
WAITING, OVER_QUOTA = "waiting", "over_quota"
STATES = (IDLE, QUEUED, WAITING, RUNNING, FAILED, OVER_QUOTA)


def _status_key(account_id) -> str:
    return f"sync:status:{account_id}"


def _active_key(account_id) -> str:
    return f"sync:active:{account_id}"


def _active_timeout() -> int:
    return settings.CELERY_TASK_TIME_LIMIT * (settings.SYNC_MAX_RETRIES + 1) + 60


def sync_status_get(account_id: uuid.UUID) -> dict:
    return cache.get(_status_key(account_id)) or {"state": IDLE}


def sync_status_set(account_id: uuid.UUID, **fields) -> dict:
    status = {**sync_status_get(account_id), **fields, "updated_at": timezone.now().isoformat()}
    cache.set(_status_key(account_id), status, timeout=None)
    return status


def sync_claim(account_id: uuid.UUID, task_id: str) -> str | None:
    """Mark `task_id` as the account's active sync. Returns None on success,
    or the id of the sync already queued or running."""
    if cache.add(_active_key(account_id), task_id, timeout=_active_timeout()):
        return None
    return cache.get(_active_key(account_id)) or None


def sync_release(account_id: uuid.UUID, task_id: str | None = None) -> None:
    if task_id is None or cache.get(_active_key(account_id)) == task_id:
        cache.delete(_active_key(account_id))


def _rerun_key(account_id: uuid.UUID) -> str:
    return f"sync:rerun:{account_id}"


def sync_rerun_mark(account_id: uuid.UUID) -> None:
    """Ask for one more sync of the account after the one queued or running
    (which may have passed the folder a caller just changed)."""
    cache.set(_rerun_key(account_id), 1, timeout=_active_timeout())


def sync_rerun_take(account_id: uuid.UUID) -> bool:
    """Whether a sync was asked for after the current one (and forget it)."""
    return bool(cache.delete(_rerun_key(account_id)))
