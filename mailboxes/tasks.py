"""Celery tasks of the sync side: thin, JSON arguments, ids only. Names are
the module path."""

import logging
import random
import uuid
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.core.cache import cache

from accounts.models import EmailAccount
from accounts.selectors import AccountNotSyncable, account_for_sync
from emailclient.core.limits import tenant_limit
from emailclient.core.metrics import sync_failure_observed
from emailclient.core.retry import backoff_countdown
from messages.blobs import default_store
from messages.locks import SyncAlreadyRunning

from .imap import AddressNotAllowed, AuthenticationFailed, DeadlineExceeded, InsecureServer, MailServerError
from .purge import accounts_purge_deleted
from .services import account_sync_run
from .sync_slots import SlotRequest, slots_acquire, slots_held
from .sync_status import (
    FAILED,
    IDLE,
    OVER_QUOTA,
    QUEUED,
    RUNNING,
    WAITING,
    sync_claim,
    sync_release,
    sync_rerun_take,
    sync_status_set,
)
from .writeback import account_write_back, give_up_pending

logger = logging.getLogger(__name__)

# Retrying cannot fix these: the account's settings or credentials must change.
# A deadline is not retried either: a server that trickled past it would hold
# a worker that long again at once; the next periodic sync tries again.
PERMANENT = (AuthenticationFailed, InsecureServer, AddressNotAllowed, DeadlineExceeded)

_UNLIMITED = 2**31 - 1


def slot_request(account: EmailAccount) -> SlotRequest:
    """The slots a sync of `account` needs (see `sync_slots`)."""
    per_tenant = tenant_limit(account.tenant, "max_concurrent_syncs")
    per_host = settings.SYNC_MAX_CONCURRENT_PER_HOST
    return SlotRequest(
        tenant_id=account.tenant_id,
        tenant_limit=_UNLIMITED if per_tenant is None else per_tenant,
        host=account.hostname,
        host_limit=per_host if per_host and per_host > 0 else _UNLIMITED,
    )


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
        target = account_for_sync(tenant_id=tenant, account_id=account)
    except EmailAccount.DoesNotExist:
        logger.info("sync of account %s skipped: no such account", account)
        sync_release(account, task_id)
        sync_status_set(account, state=IDLE)
        return {"result": "missing"}
    except AccountNotSyncable as exc:
        logger.info("sync of account %s skipped: %s", account, exc.message)
        sync_release(account, task_id)
        sync_status_set(account, state=IDLE, detail=exc.message)
        return {"result": "skipped", "reason": exc.message}

    slots = slot_request(target)
    try:
        waiting_for = slots_acquire(request=slots, holder=task_id)
    except Exception as exc:  # Redis away: fail now, or triggers would join this task for hours
        _failed(account, task_id, exc)
        raise
    if waiting_for:
        return _wait(self, tenant, account, task_id, waiting_for)

    try:
        with slots_held(request=slots, holder=task_id):
            sync_status_set(account, state=RUNNING, task_id=task_id, detail="")
            report = account_sync_run(tenant_id=tenant, account_id=account, progress=progress)
    except (EmailAccount.DoesNotExist, AccountNotSyncable):
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
            sync_status_set(account, state=QUEUED, error=str(exc), detail="")
            raise self.retry(exc=exc, countdown=backoff_countdown(self.request.retries)) from exc
        _failed(account, task_id, exc)
        return {"result": "failed", "error": str(exc)}
    except Exception as exc:
        _failed(account, task_id, exc)
        raise
    sync_release(account, task_id)
    if report.over_quota:
        sync_status_set(
            account,
            state=OVER_QUOTA,
            error=report.folder_errors_text(),
            detail=report.over_quota,
            last_summary=report.summary(),
        )
    else:
        sync_status_set(
            account,
            state=IDLE,
            error=report.folder_errors_text(),
            detail=report.notice,  # a POP3 server without UIDL
            last_summary=report.summary(),
        )
    if sync_rerun_take(account):  # the server changed while this one ran (a Sent copy)
        _sync_again(tenant, account)
    return {"result": "over_quota" if report.over_quota else "ok", "summary": report.summary()}


def _wait(task, tenant_id: uuid.UUID, account_id: uuid.UUID, task_id: str, waiting_for: str) -> dict:
    """No slot free: queue this sync again a little later instead of waiting
    on the worker. The same task id goes again, so triggers keep joining it;
    a periodic sync (which comes without a claim) that finds another one
    queued for the account leaves it to that one, so waiting syncs never
    pile up: one per account at most."""
    holder = sync_claim(account_id, task_id)
    if holder is not None and holder != task_id:
        logger.info("sync of account %s waits in task %s already; this one ends", account_id, holder)
        return {"result": "joined"}
    wait = settings.SYNC_SLOT_WAIT_SECONDS
    countdown = wait * random.uniform(1.0, 1.5)  # noqa: S311  # jitter, not security
    sync_status_set(account_id, state=WAITING, task_id=task_id, detail=f"Waiting: {waiting_for}.")
    try:
        task.apply_async(
            kwargs={"tenant_id": str(tenant_id), "account_id": str(account_id)},
            task_id=task_id,
            countdown=countdown,
            retries=task.request.retries,  # the network retries so far still count
        )
    except Exception:
        sync_release(account_id, task_id)
        sync_status_set(account_id, state=FAILED, error="task queue unavailable", detail="")
        raise
    return {"result": "waiting", "reason": waiting_for}


def _sync_again(tenant_id: uuid.UUID, account_id: uuid.UUID) -> None:
    task_id = str(uuid.uuid4())
    if sync_claim(account_id, task_id) is None:
        sync_status_set(account_id, state=QUEUED, task_id=task_id, error="", detail="")
        sync_account_task.apply_async(
            kwargs={"tenant_id": str(tenant_id), "account_id": str(account_id)}, task_id=task_id
        )


def _failed(account_id: uuid.UUID, task_id: str, exc: Exception) -> None:
    """The run recorded the error on the account; the live status says it too."""
    message = str(exc) or type(exc).__name__
    logger.warning("sync of account %s failed: %s", account_id, message)
    sync_failure_observed(exc)  # the metrics' failures by reason
    sync_release(account_id, task_id)
    sync_status_set(account_id, state=FAILED, error=message, detail="")


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
    that keeps failing is undone (see `writeback`). A deactivated tenant or
    an owner no longer a member writes nothing (the changes stay pending).
    It talks to the same server as the sync, so it takes the same slots (see
    `sync_slots`): without one it is queued again a little later, one
    waiting write-back per account at most."""
    tenant, account = uuid.UUID(tenant_id), uuid.UUID(account_id)
    task_id = self.request.id or ""
    try:
        target = account_for_sync(tenant_id=tenant, account_id=account)
    except EmailAccount.DoesNotExist:
        logger.info("write-back of account %s skipped: no such account", account)
        return {"result": "missing"}
    except AccountNotSyncable as exc:
        logger.info("write-back of account %s skipped: %s", account, exc.message)
        return {"result": "skipped", "reason": exc.message}
    slots = slot_request(target)
    waiting_for = slots_acquire(request=slots, holder=task_id)
    if waiting_for:
        return _write_back_wait(self, tenant, account, task_id, waiting_for)
    _write_back_waiting_done(account, task_id)
    try:
        with slots_held(request=slots, holder=task_id):
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


def _write_back_waiting_key(account_id: uuid.UUID) -> str:
    return f"sync:writeback-waiting:{account_id}"


def _write_back_wait(
    task, tenant_id: uuid.UUID, account_id: uuid.UUID, task_id: str, waiting_for: str
) -> dict:
    """No slot: queue this write-back again later, unless another one of the
    account already waits (it writes every pending change when it runs)."""
    key = _write_back_waiting_key(account_id)
    timeout = int(settings.SYNC_SLOT_WAIT_SECONDS * 10) + 60
    if not cache.add(key, task_id, timeout=timeout) and cache.get(key) != task_id:
        return {"result": "joined"}
    cache.set(key, task_id, timeout=timeout)  # renewed while it waits
    task.apply_async(
        args=[str(tenant_id), str(account_id)],
        task_id=task_id,
        countdown=settings.SYNC_SLOT_WAIT_SECONDS * random.uniform(1.0, 1.5),  # noqa: S311  # jitter
        retries=task.request.retries,
    )
    return {"result": "waiting", "reason": waiting_for}


def _write_back_waiting_done(account_id: uuid.UUID, task_id: str) -> None:
    key = _write_back_waiting_key(account_id)
    if cache.get(key) == task_id:
        cache.delete(key)


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
