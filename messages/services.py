"""Changes to messages made through the API: read/flagged, move, delete.

Each applies to the database at once, records a pending `MessageChange` for
the write-back to the mail server (IMAP accounts), keeps the folders' counts
true and writes one audit entry per message. The write-back task is queued
when the transaction commits.

Moves collapse: a message moved again before the first move reached the
server gets one change, from where it is on the server to where it is now
(none at all when it is back where it started).
"""

import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from functools import partial
from typing import Any

from celery import current_app
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, F, Q
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts.models import Protocol
from emailclient.core.exceptions import ApplicationError, Conflict
from emailclient.core.models import Tenant
from emailclient.core.services import audit_log_record_many

from .locks import account_change_lock
from .models import Folder, FolderType, Message, MessageChange

# The sync side's task that writes pending changes to the server, queued by
# name so that the store never imports the layer above it.
WRITE_BACK_TASK = "mailboxes.tasks.write_back"

FLAG_FIELDS = {"is_read": "\\Seen", "is_flagged": "\\Flagged"}


# Who made a change: a user, or nobody (a change the service made itself).
Actor = User | None
# An audit entry: the message's id and its changed fields.
AuditEntry = tuple[uuid.UUID, dict[str, Any]]


def _audit(
    tenant: Tenant, actor: Actor, action: str, entries: list[AuditEntry], ip_address: str | None
) -> None:
    audit_log_record_many(
        tenant_id=tenant.id,
        actor_id=getattr(actor, "pk", None),
        action=action,
        object_type="message",
        entries=entries,
        ip_address=ip_address,
    )


def _write_back_on_commit(tenant: Tenant, messages: Iterable[Message]) -> None:
    """Queue the sync side's write-back of the accounts' pending changes, by
    name: the store records changes, the layer above writes them."""
    for account_id in {m.account_id for m in messages if m.account.protocol == Protocol.IMAP}:
        transaction.on_commit(partial(_queue_write_back, tenant.id, account_id))


def _queue_write_back(tenant_id: uuid.UUID, account_id: uuid.UUID) -> None:
    current_app.send_task(WRITE_BACK_TASK, args=[str(tenant_id), str(account_id)])


# Where a message is on the server: folder name, UIDVALIDITY, UID.
Location = tuple[str, int | None, int | None]


def _change(
    tenant: Tenant,
    actor: Actor,
    message: Message,
    kind: str,
    *,
    location: Location | None = None,
    **fields: Any,
) -> MessageChange:
    """A pending change of `message`, made where it is on the server now
    (or at `location`: folder name, UIDVALIDITY, UID)."""
    folder_name, uidvalidity, imap_uid = location or (
        message.folder.name,
        message.uidvalidity,
        message.imap_uid,
    )
    return MessageChange(
        tenant=tenant,
        account_id=message.account_id,
        message=message,
        actor=actor,
        kind=kind,
        folder_name=folder_name,
        uidvalidity=uidvalidity,
        imap_uid=imap_uid,
        **fields,
    )


def _writes_back(message: Message) -> bool:
    return message.account.protocol == Protocol.IMAP


class _FolderCounts:
    """Folder count changes, applied as increments: no COUNT over a folder
    of any size on each click. `leave()` before a message changes, `enter()`
    after; the sync recounts each folder it visits anyway."""

    def __init__(self) -> None:
        self.deltas: dict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0])

    def _add(self, message: Message, sign: int) -> None:
        if message.is_deleted:
            return
        delta = self.deltas[message.folder_id]
        delta[0] += sign
        delta[1] += sign * (not message.is_read)

    def leave(self, message: Message) -> None:
        self._add(message, -1)

    def enter(self, message: Message) -> None:
        self._add(message, +1)

    def save(self) -> None:
        for folder_id, (total, unread) in sorted(self.deltas.items()):
            if total or unread:
                Folder.objects.filter(id=folder_id).update(
                    total_count=Greatest(F("total_count") + total, 0),
                    unread_count=Greatest(F("unread_count") + unread, 0),
                    updated_at=timezone.now(),
                )


def folder_counts_refresh(folder_ids: Iterable[uuid.UUID]) -> None:
    for folder_id in set(folder_ids):
        counts = Message.objects.filter(folder_id=folder_id, is_deleted=False).aggregate(
            total=Count("id"), unread=Count("id", filter=Q(is_read=False))
        )
        Folder.objects.filter(id=folder_id).update(
            total_count=counts["total"], unread_count=counts["unread"], updated_at=timezone.now()
        )


def messages_flag(
    *,
    tenant: Tenant,
    actor: Actor,
    messages: list[Message],
    is_read: bool | None = None,
    is_flagged: bool | None = None,
    ip_address: str | None = None,
) -> None:
    wanted = {"is_read": is_read, "is_flagged": is_flagged}
    with transaction.atomic():
        account_change_lock(*(m.account_id for m in messages))
        changed: list[Message] = []
        changes: list[MessageChange] = []
        audit: list[AuditEntry] = []
        counts = _FolderCounts()
        for message in messages:
            diff = {f: v for f, v in wanted.items() if v is not None and getattr(message, f) != v}
            if not diff:
                continue
            previous = {f: getattr(message, f) for f in diff} | {"flags": list(message.flags)}
            counts.leave(message)
            flags = set(message.flags)
            for field, value in diff.items():
                setattr(message, field, value)
                (flags.add if value else flags.discard)(FLAG_FIELDS[field])
            message.flags = sorted(flags)
            counts.enter(message)
            changed.append(message)
            audit.append((message.id, diff))
            if _writes_back(message):
                server_flags = {FLAG_FIELDS[f]: v for f, v in diff.items()}
                changes.append(
                    _change(
                        tenant,
                        actor,
                        message,
                        MessageChange.Kind.FLAGS,
                        flags=server_flags,
                        previous=previous,
                    )
                )
        Message.objects.bulk_update(changed, ["is_read", "is_flagged", "flags", "updated_at"])
        MessageChange.objects.bulk_create(changes)
        counts.save()
        _audit(tenant, actor, "message.update", audit, ip_address)
        _write_back_on_commit(tenant, changed)


def _pending_move(message: Message) -> MessageChange | None:
    return (
        MessageChange.objects.filter(
            message=message, kind=MessageChange.Kind.MOVE, state=MessageChange.State.PENDING
        )
        .select_for_update()
        .first()
    )


def _cancel(change: MessageChange, reason: str) -> None:
    """A pending change made pointless by a later one: nothing to write."""
    change.state = MessageChange.State.DONE
    change.last_error = f"cancelled: {reason}"
    change.finished_at = timezone.now()
    change.save(update_fields=["state", "last_error", "finished_at", "updated_at"])


def _relocate(
    tenant: Tenant, actor: Actor, message: Message, folder: Folder, *, deleted_at: datetime | None = None
) -> None:
    """Point the row at `folder` and record (or re-aim) its pending move."""
    pending = _pending_move(message) if message.imap_uid is None else None
    previous = {
        "folder_id": str(message.folder_id),
        "imap_uid": message.imap_uid,
        "uidvalidity": message.uidvalidity,
        "deleted_at": message.deleted_at.isoformat() if message.deleted_at else None,
    }
    if pending is not None:
        if pending.target_folder_id and folder.name == pending.folder_name:
            # Back where the server has it: nothing left to write.
            _cancel(pending, "moved back before it was written")
            message.imap_uid, message.uidvalidity = pending.imap_uid, pending.uidvalidity
        else:
            pending.target_folder = folder
            pending.save(update_fields=["target_folder", "updated_at"])
    elif _writes_back(message):
        _change(
            tenant, actor, message, MessageChange.Kind.MOVE, target_folder=folder, previous=previous
        ).save()
        # The UID in the new folder is the server's to give.
        message.imap_uid = message.uidvalidity = None
    message.folder = folder
    message.deleted_at = deleted_at


def messages_move(
    *, tenant: Tenant, actor: Actor, messages: list[Message], folder: Folder, ip_address: str | None = None
) -> None:
    if any(m.account_id != folder.account_id for m in messages):
        raise ApplicationError(
            "A message can only move to a folder of its own account.",
            fields={"folder": ["This folder belongs to another account."]},
        )
    if not folder.is_selectable:
        raise ApplicationError("This folder cannot hold messages.", fields={"folder": ["Not selectable."]})
    with transaction.atomic():
        account_change_lock(folder.account_id)
        moved: list[Message] = []
        audit: list[AuditEntry] = []
        counts = _FolderCounts()
        for message in messages:
            if message.folder_id == folder.id:
                continue
            audit.append((message.id, {"folder": [str(message.folder_id), str(folder.id)]}))
            counts.leave(message)
            _relocate(tenant, actor, message, folder)
            counts.enter(message)
            moved.append(message)
        Message.objects.bulk_update(moved, ["folder", "imap_uid", "uidvalidity", "deleted_at", "updated_at"])
        counts.save()
        _audit(tenant, actor, "message.move", audit, ip_address)
        _write_back_on_commit(tenant, moved)


def messages_delete(
    *,
    tenant: Tenant,
    actor: Actor,
    messages: list[Message],
    permanent: bool = False,
    ip_address: str | None = None,
) -> None:
    """Move to the account's Trash; messages already in Trash, or all of
    them with `permanent`, are deleted from the server for good (the rows
    stay, `is_deleted`, until the server has expunged them). An account
    that does not write back (POP3) has nothing to expunge: its rows go at
    once, and stop counting against the quota (its sync's unique-id mapping
    and cursor keep it from being downloaded again)."""
    with transaction.atomic():
        account_change_lock(*(m.account_id for m in messages))
        trash = {
            f.account_id: f
            for f in Folder.objects.filter(
                account_id__in={m.account_id for m in messages}, type=FolderType.TRASH, is_selectable=True
            ).order_by("name")
        }
        now = timezone.now()
        trashed: list[Message] = []
        expunged: list[Message] = []
        audit: list[AuditEntry] = []
        counts = _FolderCounts()
        for message in messages:
            counts.leave(message)
            if permanent or message.folder.type == FolderType.TRASH:
                expunged.append(message)
                audit.append((message.id, {"expunged": True}))
                continue
            if message.account_id not in trash:
                raise Conflict(
                    "The account has no Trash folder: "
                    "delete with permanent=true to remove the message for good.",
                    fields={"permanent": ["Required: this account has no Trash folder."]},
                )
            target = trash[message.account_id]
            audit.append((message.id, {"folder": [str(message.folder_id), str(target.id)]}))
            _relocate(tenant, actor, message, target, deleted_at=now)
            counts.enter(message)
            trashed.append(message)
        for message in expunged:
            _expunge(tenant, actor, message, now)
        Message.objects.bulk_update(
            [*trashed, *expunged],
            ["folder", "imap_uid", "uidvalidity", "is_deleted", "deleted_at", "updated_at"],
        )
        local = [m.id for m in expunged if not _writes_back(m)]
        if local:
            Message.objects.filter(id__in=local).delete()
        counts.save()
        _audit(tenant, actor, "message.delete", audit, ip_address)
        _write_back_on_commit(tenant, [*trashed, *expunged])


def _expunge(tenant: Tenant, actor: Actor, message: Message, now: datetime) -> None:
    deleted_at = message.deleted_at.isoformat() if message.deleted_at else None
    previous = {"is_deleted": False, "deleted_at": deleted_at}
    if _writes_back(message):
        pending = _pending_move(message) if message.imap_uid is None else None
        if pending is not None:
            # Never reached its new folder: expunge it where the server has it.
            _cancel(pending, "deleted before it was written")
            message.folder_id = uuid.UUID(pending.previous["folder_id"])
            message.imap_uid, message.uidvalidity = pending.imap_uid, pending.uidvalidity
            location: Location | None = (pending.folder_name, pending.uidvalidity, pending.imap_uid)
        else:
            location = None  # where it is
        _change(
            tenant, actor, message, MessageChange.Kind.EXPUNGE, location=location, previous=previous
        ).save()
    message.is_deleted = True
    message.deleted_at = now
