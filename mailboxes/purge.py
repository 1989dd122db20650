"""Purging soft-deleted accounts for good, after their retention period.

Deleting an account through the API or the admin is a soft delete: it stops
syncing and disappears, and its mail and credentials stay, so an operator
can undo a mistake. After `ACCOUNT_PURGE_RETENTION_DAYS` (default 30) days,
`accounts_purge_deleted()` (`manage.py purgeaccounts`, and the beat task
`mailboxes.tasks.purge_deleted_accounts` once a day) removes the account's
rows: messages (and their attachments) in batches, quarantine entries,
thread index, recorded changes, folders, then the account row itself with
its encrypted passwords and whatever else still points at it (drafts,
outbox items). The audit log keeps an `account.purge` entry; earlier
entries about the account stay (they name it by id only).

Blobs are shared within a tenant, so they are not deleted by key: once a
tenant's accounts are purged, the tenant's blob garbage collection runs
(`messages.blob_gc`, 24 hours' minimum age, as `gcblobs`), which removes
every blob no row refers to any more, and keeps those another account of the
tenant still stores.

It lives on the sync side because it takes the account's sync lock (a
write-back left over must not write into rows being deleted) and because
it is the sync's rows it removes. It lists accounts across tenants on the
admin alias, as `manage.py sync --all` does, and deletes inside each
account's tenant scope on the runtime role.
"""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.utils import timezone

from accounts.models import EmailAccount
from emailclient.core.models import Tenant
from emailclient.core.services import audit_log_record
from emailclient.core.tenancy import tenant_scope
from messages.blob_gc import blob_garbage_collect
from messages.blobs import BlobStore
from messages.locks import SyncAlreadyRunning, account_sync_lock
from messages.models import Folder, Message, MessageChange, QuarantinedMessage, ThreadRef

logger = logging.getLogger(__name__)

BLOB_MIN_AGE = 24 * 3600.0  # gcblobs' default: off any sync still writing rows


@dataclass
class PurgeReport:
    accounts: int = 0
    messages: int = 0
    busy: list[uuid.UUID] = field(default_factory=list)  # a sync or write-back held the lock
    blobs_removed: int = 0
    blob_bytes_removed: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "accounts": self.accounts,
            "messages": self.messages,
            "busy": len(self.busy),
            "blobs_removed": self.blobs_removed,
            "blob_bytes_removed": self.blob_bytes_removed,
            "dry_run": self.dry_run,
        }

    def __str__(self) -> str:
        if self.dry_run:
            return f"{self.accounts} account(s) to purge, with {self.messages} message(s)"
        return (
            f"{self.accounts} account(s) purged, with {self.messages} message(s); "
            f"{self.blobs_removed} blob(s) removed ({self.blob_bytes_removed} bytes)"
            + (f"; {len(self.busy)} busy, left for the next run" if self.busy else "")
        )


def accounts_purge_deleted(
    *,
    store: BlobStore,
    retention: timedelta,
    dry_run: bool = False,
    batch_size: int = 2000,
    log: Callable[[str], None] = lambda line: None,
) -> PurgeReport:
    """Remove every account soft-deleted more than `retention` ago, with its
    mail and credentials, then the blobs no row of its tenant needs."""
    report = PurgeReport(dry_run=dry_run)
    cutoff = timezone.now() - retention
    due = list(
        EmailAccount.objects.using("admin")
        .filter(is_deleted=True, deleted_at__lt=cutoff)
        .order_by("tenant_id", "deleted_at", "id")
        .values_list("id", "tenant_id", "email_address")
    )
    purged_tenants: list[uuid.UUID] = []
    for account_id, tenant_id, address in due:
        if dry_run:
            with tenant_scope(tenant_id):
                report.messages += Message.objects.filter(tenant_id=tenant_id, account_id=account_id).count()
            report.accounts += 1
            continue
        try:
            with account_sync_lock(account_id):
                report.messages += _account_purge(tenant_id, account_id, cutoff=cutoff, batch_size=batch_size)
        except SyncAlreadyRunning:
            report.busy.append(account_id)
            log(f"{address} ({account_id}): busy, left for the next run")
            continue
        report.accounts += 1
        log(f"{address} ({account_id}): purged")
        if tenant_id not in purged_tenants:
            purged_tenants.append(tenant_id)
    if purged_tenants:
        gc = blob_garbage_collect(store=store, min_age=BLOB_MIN_AGE, tenant_ids=purged_tenants)
        report.blobs_removed, report.blob_bytes_removed = gc.removed, gc.removed_bytes
    return report


def _account_purge(tenant_id: uuid.UUID, account_id: uuid.UUID, *, cutoff: datetime, batch_size: int) -> int:
    """Delete the account's rows, big tables in batches (one transaction
    each), the account row last; how many messages went. Nothing, when the
    account was restored since it was listed."""
    with tenant_scope(tenant_id):
        if not EmailAccount.objects.filter(id=account_id, is_deleted=True, deleted_at__lt=cutoff).exists():
            return 0
    messages = 0
    while True:
        with tenant_scope(tenant_id):
            ids = list(
                Message.objects.filter(tenant_id=tenant_id, account_id=account_id).values_list(
                    "id", flat=True
                )[:batch_size]
            )
            if not ids:
                break
            Message.objects.filter(id__in=ids).delete()  # with their attachments
            messages += len(ids)
    with tenant_scope(tenant_id):
        account = EmailAccount.objects.filter(id=account_id, is_deleted=True).first()
        if account is None:  # purged by another run meanwhile
            return messages
        for model in (QuarantinedMessage, ThreadRef, MessageChange):
            model.objects.filter(tenant_id=tenant_id, account_id=account_id).delete()
        Folder.objects.filter(tenant_id=tenant_id, account_id=account_id).delete()
        account.delete()  # the credentials with it, and drafts or outbox items left
        audit_log_record(
            tenant=Tenant.objects.get(id=tenant_id),
            actor=None,
            action="account.purge",
            object_type="email_account",
            object_id=account_id,
            changes={"messages": messages},
        )
    return messages
