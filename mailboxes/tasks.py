"""Celery tasks of the sync side: thin, JSON arguments, ids only. Names are
the module path."""

import logging
import uuid
from datetime import timedelta

from celery import shared_task
from django.conf import settings

from accounts.models import EmailAccount
from emailclient.core.retry import backoff_countdown
from messages.blobs import default_store
from messages.locks import SyncAlreadyRunning

from .imap import AddressNotAllowed, AuthenticationFailed, InsecureServer, MailServerError
from .purge import accounts_purge_deleted
from .services import account_sync_run
from .sync_status import (
    FAILED,
    IDLE,
    QUEUED,
    RUNNING,
    sync_claim,
    sync_release,
    sync_rerun_take,
    sync_status_set,
)
from .writeback import account_write_back, give_up_pending

logger = logging.getLogger(__name__)

# Retrying cannot fix these: the account's settings or credentials must change.
PERMANENT = (AuthenticationFailed, InsecureServer, AddressNotAllowed)


@shared_task(
    name="mailboxes.tasks.sync_account",
    bind=True,
    acks_late=True,
    max_retries=None,  # bounded by SYNC_MAX_RETRIES below, read at run time
    time_limit=settings.CELERY_TASK_TIME_LIMIT,
    soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
)
def sync_account_task(self, tenant_id: str, account_id: str) -> dict:
    tenant, account = uuid.UUID(tenant_id), uuid.UUID(account_id)
    task_id = self.request.id or ""

    def progress(folder: str, done: int, total: int) -> None:
        sync_status_set(account, state=RUNNING, task_id=task_id, folder=folder, done=done, total=total)

    try:
        report = account_sync_run(tenant_id=tenant, account_id=account, progress=progress)
    except EmailAccount.DoesNotExist:
        logger.info("sync of account %s skipped: no such account", account)
        sync_release(account, task_id)
        sync_status_set(account, state=IDLE)
        return {"result": "missing"}
    except SyncAlreadyRunning:
        logger.info("sync of account %s already running; this trigger joins it", account)
        sync_release(account, task_id)  # or the next trigger would "join" this finished task
        return {"result": "joined"}
    except PERMANENT as exc:
        _failed(account, task_id, exc)
        return {"result": "failed", "error": str(exc)}
    except MailServerError as exc:
        if self.request.retries < settings.SYNC_MAX_RETRIES:
            sync_status_set(account, state=QUEUED, error=str(exc))
            raise self.retry(exc=exc, countdown=backoff_countdown(self.request.retries)) from exc
        _failed(account, task_id, exc)
        return {"result": "failed", "error": str(exc)}
    except Exception as exc:
        _failed(account, task_id, exc)
        raise
    sync_release(account, task_id)
    sync_status_set(account, state=IDLE, error=report.folder_errors_text(), last_summary=report.summary())
    if sync_rerun_take(account):  # the server changed while this one ran (a Sent copy)
        _sync_again(tenant, account)
    return {"result": "ok", "summary": report.summary()}


def _sync_again(tenant_id: uuid.UUID, account_id: uuid.UUID) -> None:
    task_id = str(uuid.uuid4())
    if sync_claim(account_id, task_id) is None:
        sync_status_set(account_id, state=QUEUED, task_id=task_id, error="")
        sync_account_task.apply_async(
            kwargs={"tenant_id": str(tenant_id), "account_id": str(account_id)}, task_id=task_id
        )


def _failed(account_id: uuid.UUID, task_id: str, exc: Exception) -> None:
    """The run recorded the error on the account; the live status says it too."""
    message = str(exc) or type(exc).__name__
    logger.warning("sync of account %s failed: %s", account_id, message)
    sync_release(account_id, task_id)
    sync_status_set(account_id, state=FAILED, error=message)


@shared_task(
    name="mailboxes.tasks.write_back",
    bind=True,
    acks_late=True,
    max_retries=None,  # bounded below: busy accounts wait, failures count
    time_limit=settings.CELERY_TASK_TIME_LIMIT,
    soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
)
def write_back_task(self, tenant_id: str, account_id: str) -> dict:
    """Write the account's pending changes to its server. Waits for a
    running sync; retries with backoff while the server fails; a change
    that keeps failing is undone (see `writeback`)."""
    tenant, account = uuid.UUID(tenant_id), uuid.UUID(account_id)
    try:
        report = account_write_back(tenant_id=tenant, account_id=account)
    except SyncAlreadyRunning as exc:
        raise self.retry(exc=exc, countdown=5) from exc
    except (AuthenticationFailed, InsecureServer, AddressNotAllowed) as exc:
        # Nothing will change until the account does: undo now, say why.
        give_up_pending(tenant_id=tenant, account_id=account, error=str(exc))
        return {"result": "failed", "error": str(exc)}
    except MailServerError as exc:
        if self.request.retries < settings.WRITEBACK_MAX_ATTEMPTS:
            raise self.retry(exc=exc, countdown=backoff_countdown(self.request.retries)) from exc
        give_up_pending(tenant_id=tenant, account_id=account, error=str(exc))
        return {"result": "failed", "error": str(exc)}
    return {"result": "ok", "written": report.written, "failed": report.failed}


@shared_task(
    name="mailboxes.tasks.purge_deleted_accounts",
    time_limit=settings.CELERY_TASK_TIME_LIMIT,
    soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
)
def purge_deleted_accounts_task() -> dict:
    """Daily (CELERY_BEAT_SCHEDULE): accounts soft-deleted more than
    ACCOUNT_PURGE_RETENTION_DAYS ago go for good (see `purge`). Safe to run
    twice: a purged account is no longer listed; a busy one waits a day."""
    report = accounts_purge_deleted(
        store=default_store(), retention=timedelta(days=settings.ACCOUNT_PURGE_RETENTION_DAYS)
    )
    return report.as_dict()
