"""Writes around a sync: requesting one, running one and recording how it went."""

import uuid

from django.utils import timezone

from accounts.models import EmailAccount
from accounts.selectors import AccountNotSyncable, account_for_sync
from emailclient.core.exceptions import ApplicationError
from emailclient.core.tenancy import tenant_scope
from messages.indexing import search_index_pending
from messages.locks import SyncAlreadyRunning
from messages.models import MessageChange
from messages.tasks import search_index_task

from .sync import Progress, SyncReport, account_sync
from .sync_status import FAILED, QUEUED, sync_claim, sync_release, sync_rerun_mark, sync_status_set


class QueueUnavailable(ApplicationError):
    status_code = 503
    code = "queue_unavailable"


def sync_request(
    *, account: EmailAccount, countdown: float | None = None, again_if_joined: bool = False
) -> tuple[str, bool]:
    """Queue a sync of the account, or join the one queued or running.
    Returns the task id and whether it joined an existing sync. With
    `countdown`, the sync starts that many seconds later and every request
    until then joins it (the outbox's syncs after sending: one per burst).
    `again_if_joined`: the caller changed the server just now, and a running
    sync may have passed that folder already: one more sync follows it.

    Enqueued at once rather than on commit: the task reads only the account,
    which is committed already, and the claim lives in Redis, not in the
    request's transaction."""
    from .tasks import sync_account_task

    task_id = str(uuid.uuid4())
    existing = sync_claim(account.id, task_id)
    if existing:
        if again_if_joined:
            sync_rerun_mark(account.id)
        return existing, True
    sync_status_set(account.id, state=QUEUED, task_id=task_id, error="", detail="")
    try:
        sync_account_task.apply_async(
            kwargs={"tenant_id": str(account.tenant_id), "account_id": str(account.id)},
            task_id=task_id,
            countdown=countdown or 0,
        )
    except Exception as exc:
        sync_release(account.id, task_id)
        sync_status_set(account.id, state=FAILED, error="task queue unavailable")
        raise QueueUnavailable("The task queue is unavailable; try again later.") from exc
    return task_id, False


def account_sync_started(*, tenant_id: uuid.UUID, account_id: uuid.UUID) -> None:
    with tenant_scope(tenant_id):
        EmailAccount.objects.filter(id=account_id).update(is_syncing=True)


def account_sync_finished(
    *, tenant_id: uuid.UUID, account_id: uuid.UUID, error: str, succeeded: bool
) -> None:
    fields = {"is_syncing": False, "last_sync_error": error[:2000]}
    if succeeded:
        fields["last_sync_at"] = timezone.now()
    with tenant_scope(tenant_id):
        EmailAccount.objects.filter(id=account_id).update(**fields)


def pending_changes(*, tenant_id: uuid.UUID, account_id: uuid.UUID) -> bool:
    """Whether API changes of the account still wait to be written to its server."""
    with tenant_scope(tenant_id):
        return MessageChange.objects.filter(account_id=account_id, state=MessageChange.State.PENDING).exists()


def account_sync_run(
    *,
    tenant_id: uuid.UUID,
    account_id: uuid.UUID,
    progress: Progress | None = None,
    index_inline: bool = False,
) -> SyncReport:
    """Sync the account and record the run on it: `is_syncing` meanwhile,
    then the time of success or the error. After a success, index what the
    sync stored for search (here with `index_inline`, else by a queued task)
    and queue the write-back of changes still pending (normally queued by the
    change itself; this catches a task that was lost).

    A tenant that was deactivated, or an owner no longer an active member,
    stops it before any login (`AccountNotSyncable`, recorded on the account).
    A tenant over its storage quota gets a sync that stores no new mail past
    it (`SyncReport.over_quota`, recorded as the account's error).

    Raises what `account_sync` raises. `EmailAccount.DoesNotExist` and
    `SyncAlreadyRunning` leave the account as it is (there is none, or the
    other run records its own end); any other error is recorded first."""
    try:
        account_for_sync(tenant_id=tenant_id, account_id=account_id)
    except AccountNotSyncable as exc:
        account_sync_finished(tenant_id=tenant_id, account_id=account_id, error=exc.message, succeeded=False)
        raise
    try:
        account_sync_started(tenant_id=tenant_id, account_id=account_id)
        report = account_sync(tenant_id=tenant_id, account_id=account_id, progress=progress)
    except (EmailAccount.DoesNotExist, SyncAlreadyRunning):
        raise
    except Exception as exc:
        account_sync_finished(
            tenant_id=tenant_id, account_id=account_id, error=str(exc) or type(exc).__name__, succeeded=False
        )
        raise
    error = "; ".join(text for text in (report.over_quota, report.folder_errors_text()) if text)
    account_sync_finished(tenant_id=tenant_id, account_id=account_id, error=error, succeeded=True)
    if report.new:
        if index_inline:
            search_index_pending(tenant_id=tenant_id)
        else:
            search_index_task.delay(str(tenant_id))
    if pending_changes(tenant_id=tenant_id, account_id=account_id):
        from .tasks import write_back_task

        write_back_task.delay(str(tenant_id), str(account_id))
    return report
