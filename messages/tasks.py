"""Celery tasks of the messages app: JSON arguments, ids only."""

import logging
import uuid

from celery import shared_task
from django.conf import settings

from emailclient.core.retry import backoff_countdown
from mailboxes.imap import AddressNotAllowed, AuthenticationFailed, InsecureServer, MailServerError
from mailboxes.sync import SyncAlreadyRunning
from mailboxes.writeback import account_write_back, give_up_pending

from .blob_gc import blob_garbage_collect
from .blobs import default_store
from .indexing import search_index_pending

logger = logging.getLogger(__name__)


@shared_task(name="mail.index_search", acks_late=True, ignore_result=True)
def search_index_task(tenant_id: str) -> int:
    return search_index_pending(tenant_id=uuid.UUID(tenant_id))


@shared_task(
    name="mail.write_back",
    bind=True,
    acks_late=True,
    max_retries=None,  # bounded below: busy accounts wait, failures count
    time_limit=settings.CELERY_TASK_TIME_LIMIT,
    soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
)
def write_back_task(self, tenant_id: str, account_id: str) -> dict:
    """Write the account's pending changes to its server. Waits for a
    running sync; retries with backoff while the server fails; a change
    that keeps failing is undone (see `mailboxes.writeback`)."""
    tenant_id, account_id = uuid.UUID(tenant_id), uuid.UUID(account_id)
    try:
        report = account_write_back(tenant_id=tenant_id, account_id=account_id)
    except SyncAlreadyRunning as exc:
        raise self.retry(exc=exc, countdown=5) from exc
    except (AuthenticationFailed, InsecureServer, AddressNotAllowed) as exc:
        # Nothing will change until the account does: undo now, say why.
        give_up_pending(tenant_id=tenant_id, account_id=account_id, error=str(exc))
        return {"result": "failed", "error": str(exc)}
    except MailServerError as exc:
        if self.request.retries < settings.WRITEBACK_MAX_ATTEMPTS:
            raise self.retry(exc=exc, countdown=backoff_countdown(self.request.retries)) from exc
        give_up_pending(tenant_id=tenant_id, account_id=account_id, error=str(exc))
        return {"result": "failed", "error": str(exc)}
    return {"result": "ok", "written": report.written, "failed": report.failed}


@shared_task(name="mail.gc_blobs", ignore_result=False)
def blob_gc_task(min_age_hours: float = 24.0) -> dict:
    """`manage.py gcblobs` for a schedule: give `mail.gc_blobs` a periodic
    task in the admin (django-celery-beat). A run killed by the time limit
    leaves nothing lost (the next one puts set-aside blobs back)."""
    # A periodic task's kwargs are JSON typed in the admin: "24" is 24.
    report = blob_garbage_collect(store=default_store(), min_age=float(min_age_hours) * 3600)
    logger.info("blob garbage collection: %s", report)
    return report.as_dict()
