"""Celery tasks of compose: thin, JSON arguments, ids only (never a body or a
credential). Names are the module path.

`send` keeps no retry state of its own: a temporary failure puts the item
back to `queued` with `next_attempt_at` in the row, and the outbox queues
the task again with that countdown once the row is committed, so the
dispatcher (`dispatch_due`, every minute) can always recover a task that
was lost on the way.
"""

import logging
import uuid
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.utils import timezone

from emailclient.core.models import Tenant
from emailclient.core.retry import backoff_countdown
from emailclient.core.tenancy import tenant_scope
from mailboxes.imap import AddressNotAllowed, AuthenticationFailed, InsecureServer, MailServerError
from messages.locks import SyncAlreadyRunning

from .drafts_folder import draft_copy_sync
from .idempotency import idempotency_keys_purge
from .outbox import outbox_dispatch_due, outbox_send_in_turn

logger = logging.getLogger(__name__)

# One message: the SMTP timeouts bound each step; this bounds them all.
SEND_TIME_LIMIT = 900
# A Drafts copy waits for a running sync this often, then gives up (the
# next edit or send queues it again).
DRAFT_COPY_BUSY_RETRIES = 360
DRAFT_COPY_MAX_RETRIES = 8


@shared_task(
    name="compose.tasks.send",
    ignore_result=True,  # the outcome is in the row; a result per send only filled Redis
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=SEND_TIME_LIMIT,
    soft_time_limit=SEND_TIME_LIMIT - 60,
)
def send_task(
    tenant_id: str,
    draft_id: str,
    account_id: str | None = None,
    helper: int | None = None,
    drain: str | None = None,
) -> dict[str, str]:
    """Deliver a queued draft once, and the account's other due items, in
    the tenant's turn (see `compose.outbox`)."""
    outcome = outbox_send_in_turn(
        tenant_id=uuid.UUID(tenant_id),
        draft_id=uuid.UUID(draft_id),
        account_id=uuid.UUID(account_id) if account_id else None,
        helper=helper,
        drain=drain,
    )
    return {"result": outcome}


@shared_task(name="compose.tasks.dispatch_due", time_limit=300, soft_time_limit=240)
def dispatch_due_task() -> dict[str, int]:
    """Beat, every minute: queue the sends that are due and re-queue those a
    lost task left behind; then delete the Idempotency-Keys past their 24
    hours (`idx_idempotency_keys_created`: one index range a tenant)."""
    queued = outbox_dispatch_due(now=timezone.now())
    purged = 0
    for tenant in Tenant.objects.filter(is_active=True):
        with tenant_scope(tenant.id):
            purged += idempotency_keys_purge(tenant=tenant)
    return {"queued": queued, "idempotency_keys_purged": purged}


@shared_task(
    name="compose.tasks.save_draft_copy",
    bind=True,
    acks_late=True,
    max_retries=None,  # bounded below: a busy account waits, failures count
    time_limit=settings.CELERY_TASK_TIME_LIMIT,
    soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
)
def save_draft_copy_task(self: Task[Any, Any], tenant_id: str, draft_id: str) -> dict[str, str]:
    """Bring the draft's copy in the server's Drafts folder in step (see
    `compose.drafts_folder`)."""
    try:
        outcome = draft_copy_sync(tenant_id=uuid.UUID(tenant_id), draft_id=uuid.UUID(draft_id))
    except SyncAlreadyRunning as exc:
        if self.request.retries < DRAFT_COPY_BUSY_RETRIES:
            raise self.retry(exc=exc, countdown=10) from exc
        logger.warning("Drafts copy of %s given up: the account stays busy", draft_id)
        return {"result": "busy"}
    except (AuthenticationFailed, InsecureServer, AddressNotAllowed) as exc:
        return {"result": "failed", "error": str(exc)}  # recorded on the draft; the account must change
    except MailServerError as exc:
        if self.request.retries < DRAFT_COPY_MAX_RETRIES:
            raise self.retry(exc=exc, countdown=backoff_countdown(self.request.retries)) from exc
        return {"result": "failed", "error": str(exc)}
    return {"result": outcome}
