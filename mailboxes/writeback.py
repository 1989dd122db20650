"""Writing the API's changes to the mail server.

`account_write_back()` replays an account's pending `MessageChange`s on its
IMAP server (a POP3 account's changes are local: never sent, see
`_keep_local`), oldest first, holding the account's sync lock so that no sync
runs in between (a sync would otherwise fetch a moved message in its new
folder before we record its new UID, and store it twice):

* flags: `UID STORE +FLAGS/-FLAGS` where the message is now;
* move: `UID MOVE`, or `UID COPY` + `\\Deleted` + `UID EXPUNGE` without the
  MOVE extension; the new UIDs come from `COPYUID` (UIDPLUS) or, failing
  that, a search of the target folder for each message's Message-ID;
* expunge: `\\Deleted` + `UID EXPUNGE` (a plain EXPUNGE without UIDPLUS),
  then the row goes.

Consecutive changes of one kind and place go in one command: a bulk "mark
read" is a STORE per folder and flag set, a bulk move one MOVE per source
and target folder, a bulk delete for good one EXPUNGE per folder.

A change the server can never take (its folder gone, UIDVALIDITY changed,
the message gone) fails at once; other failures are retried, up to
`WRITEBACK_MAX_ATTEMPTS`. A failed change is undone in the database and
recorded in the audit log, and later changes go on.
"""

import itertools
import logging
import re
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeAlias

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from accounts.models import EmailAccount, Protocol
from accounts.services import account_credentials
from emailclient.core.services import audit_log_record_many
from emailclient.core.tenancy import tenant_scope
from messages.locks import account_change_lock, account_sync_lock
from messages.models import Folder, Message, MessageChange

from .imap import ImapSession, MailServerError
from .sync import server_config

logger = logging.getLogger(__name__)

_COPYUID = re.compile(rb"\[COPYUID (\d+) ([\d:,]+) ([\d:,]+)\]", re.IGNORECASE)
# A Message-ID as stored (no angle brackets) that a SEARCH can carry as it
# is: printable ASCII without brackets, quotes or backslashes.
_SEARCHABLE_ID = re.compile(r"^[\x21\x23-\x3b\x3d\x3f-\x5b\x5d-\x7e]{1,250}$")


class ChangeImpossible(Exception):
    """The server can never take this change as it stands."""


@dataclass
class WriteBackReport:
    written: int = 0
    failed: int = 0
    pending: int = 0


def account_write_back(*, tenant_id: uuid.UUID, account_id: uuid.UUID) -> WriteBackReport:
    """Write the account's pending changes. Raises `SyncAlreadyRunning`
    while a sync holds the account, `MailServerError` when the server could
    not be reached or changes are left to retry."""
    report = WriteBackReport()
    with tenant_scope(tenant_id):
        account = EmailAccount.objects.get(id=account_id)
    if account.protocol != Protocol.IMAP:
        report.written = _keep_local(account)
        return report
    with account_sync_lock(account.id):
        pending = _pending(account)
        if not pending:
            return report
        credentials = account_credentials(account=account)
        with ImapSession(server_config(account), credentials.username, credentials.password) as session:
            writer = _Writer(account, session)
            for group in _groups(pending):
                try:
                    impossible = writer.apply(group)
                except (IMAPClientAbortError, OSError) as exc:
                    for change in group:
                        _attempt_failed(change, exc)
                    raise MailServerError(f"connection to {account.hostname} failed: {exc}") from exc
                except IMAPClientError as exc:
                    given_up = [_attempt_failed(change, exc) for change in group]
                    if all(given_up):
                        report.failed += len(group)
                        continue
                    report.pending = len(_pending(account))
                    raise MailServerError(f"the server refused a change: {exc}") from exc
                for change, reason in impossible.items():
                    change_failed(change, reason)
                report.failed += len(impossible)
                report.written += len(group) - len(impossible)
    return report


def _keep_local(account: EmailAccount) -> int:
    """A POP3 account's changes are local (the protocol has no flags and no
    folders): never sent to any server. Changes left pending from when the
    account was IMAP are closed as they are, the database state kept."""
    with tenant_scope(account.tenant_id):
        return MessageChange.objects.filter(account=account, state=MessageChange.State.PENDING).update(
            state=MessageChange.State.DONE,
            last_error="POP3 account: the change is kept locally, not written to the server",
            finished_at=timezone.now(),
            updated_at=timezone.now(),
        )


def _groups(pending: list[MessageChange]) -> Iterator[list[MessageChange]]:
    """Consecutive changes that one command can carry: flag changes (one
    STORE per folder and flag set follows), moves from one folder to
    another, expunges in one folder. Order is kept: only neighbours join."""

    def key(change: MessageChange) -> tuple[str] | tuple[str, str, int | None, uuid.UUID | None]:
        if change.kind == MessageChange.Kind.FLAGS:
            return (change.kind,)
        return (change.kind, change.folder_name, change.uidvalidity, change.target_folder_id)

    for _, group in itertools.groupby(pending, key=key):
        yield list(group)


def give_up_pending(*, tenant_id: uuid.UUID, account_id: uuid.UUID, error: str) -> int:
    """Undo every pending change of the account (the server cannot be
    written to: credentials refused, or still failing after every retry)."""
    with tenant_scope(tenant_id):
        account = EmailAccount.objects.get(id=account_id)
    pending = _pending(account)
    for change in pending:
        change_failed(change, error)
    return len(pending)


def _pending(account: EmailAccount) -> list[MessageChange]:
    with tenant_scope(account.tenant_id):
        return list(
            MessageChange.objects.filter(account=account, state=MessageChange.State.PENDING)
            .select_related("target_folder")
            .order_by("created_at", "id")
        )


def _attempt_failed(change: MessageChange, exc: Exception) -> bool:
    """Count a failed attempt; give the change up (and undo it) at the last
    one. Returns whether it was given up."""
    change.attempts += 1
    change.last_error = str(exc)[:1000] or type(exc).__name__
    if change.attempts >= settings.WRITEBACK_MAX_ATTEMPTS:
        change_failed(change, change.last_error)
        return True
    with tenant_scope(change.tenant_id):
        change.save(update_fields=["attempts", "last_error", "updated_at"])
    return False


def change_failed(change: MessageChange, error: str) -> None:
    """Give the change up: restore the message's previous state in the
    database and record why."""
    logger.warning("write-back of %s change %s failed: %s", change.kind, change.id, error)
    with tenant_scope(change.tenant_id), transaction.atomic():
        account_change_lock(change.account_id)
        message = (
            Message.objects.select_for_update().filter(id=change.message_id).first()
            if change.message_id is not None
            else None  # the message was deleted (SET_NULL)
        )
        touched = set()
        if message is not None:
            touched.add(message.folder_id)
            _restore(message, change.previous)
            touched.add(message.folder_id)
        change.state = MessageChange.State.FAILED
        change.last_error = error[:1000]
        change.finished_at = timezone.now()
        change.save(update_fields=["state", "last_error", "finished_at", "attempts", "updated_at"])
        audit_log_record_many(
            tenant_id=change.tenant_id,
            actor_id=change.actor_id,
            action="message.change_failed",
            object_type="message",
            entries=[
                (
                    change.message_id,
                    {"kind": change.kind, "error": change.last_error, "restored": change.previous},
                )
            ],
        )
        from messages.services import folder_counts_refresh

        folder_counts_refresh(touched)


def _restore(message: Message, previous: dict[str, Any]) -> None:
    """`previous`: the JSON object of `MessageChange.previous`, field name → value."""
    fields = []
    for name, value in previous.items():
        if name == "folder_id":
            value = uuid.UUID(value)
            if not Folder.objects.filter(id=value).exists():
                continue  # the folder is gone; the next sync puts the message right
        elif name == "deleted_at":
            value = parse_datetime(value) if value else None
        setattr(message, name, value)
        fields.append(name)
    message.save(update_fields=[*fields, "updated_at"])


# The changes of one STORE: folder name, UIDVALIDITY, ((flag, on), ...).
_StoreKey: TypeAlias = tuple[str, int | None, tuple[tuple[str, bool], ...]]


class _Writer:
    def __init__(self, account: EmailAccount, session: ImapSession):
        self.account = account
        self.session = session
        self.client = session.client
        self.selected: tuple[str, int | None] | None = None  # (folder, UIDVALIDITY) open for writing
        self.can_move = self.client.has_capability("MOVE")
        self.uidplus = self.client.has_capability("UIDPLUS")

    def scope(self) -> AbstractContextManager[None]:
        return tenant_scope(self.account.tenant_id)

    def apply(self, group: list[MessageChange]) -> dict[MessageChange, str]:
        """Write a group of changes; returns those the server can never take,
        with the reason. Protocol errors propagate (for the whole group)."""
        match group[0].kind:
            case MessageChange.Kind.FLAGS:
                return self.flags(group)
            case MessageChange.Kind.MOVE:
                return self.moves(group)
        return self.expunges(group)

    def done(self, changes: list[MessageChange]) -> None:
        now = timezone.now()
        MessageChange.objects.filter(id__in=[c.id for c in changes]).update(
            state=MessageChange.State.DONE, finished_at=now, updated_at=now
        )

    def open(
        self, changes: list[MessageChange]
    ) -> tuple[list[tuple[MessageChange, int]], dict[MessageChange, str]]:
        """Select the changes' folder (one for all) for writing; the changes
        whose message is still there, each with its UID, and the others with
        the reason."""
        first = changes[0]
        if not first.folder_name:
            return [], {c: "the message has no place on the server" for c in changes}
        try:
            self.select(first.folder_name, first.uidvalidity)
        except ChangeImpossible as exc:
            return [], {c: str(exc) for c in changes}
        present = self.session.uids_in([c.imap_uid for c in changes if c.imap_uid is not None])
        todo: list[tuple[MessageChange, int]] = []
        impossible: dict[MessageChange, str] = {}
        for change in changes:
            if change.imap_uid is None:
                impossible[change] = "the message has no place on the server"
            elif change.imap_uid not in present:
                impossible[change] = "the message is no longer on the server"
            else:
                todo.append((change, change.imap_uid))
        return todo, impossible

    def select(self, folder_name: str, uidvalidity: int | None) -> None:
        if self.selected is None or self.selected[0] != folder_name:
            self.selected = None
            try:
                state = self.client.select_folder(folder_name)
            except IMAPClientAbortError:
                raise
            except IMAPClientError as exc:
                raise ChangeImpossible(f"folder {folder_name!r} cannot be opened: {exc}") from exc
            self.selected = (folder_name, state.get(b"UIDVALIDITY"))
        if self.selected[1] != uidvalidity:
            raise ChangeImpossible(f"folder {folder_name!r} was renumbered on the server")

    def status(self, folder_name: str, item: bytes) -> int | None:
        try:
            value = self.client.folder_status(folder_name, [item.decode()]).get(item)
        except IMAPClientAbortError:
            raise
        except IMAPClientError as exc:
            raise ChangeImpossible(f"folder {folder_name!r} cannot be opened: {exc}") from exc
        return value if isinstance(value, int) else None

    def flags(self, changes: list[MessageChange]) -> dict[MessageChange, str]:
        """STORE each change where its message is now, one command per
        folder and flag set."""
        with self.scope():
            messages = Message.objects.select_related("folder").in_bulk([c.message_id for c in changes])
        impossible: dict[MessageChange, str] = {}
        stores: dict[_StoreKey, list[tuple[MessageChange, int]]] = defaultdict(list)
        for change in changes:
            message = messages.get(change.message_id)
            if message is None:
                continue  # gone from the server and the database: nothing to write
            if message.imap_uid is None:
                impossible[change] = "the message has no place on the server"
                continue
            flags = tuple(sorted(change.flags.items()))
            stores[(message.folder.name, message.uidvalidity, flags)].append((change, message.imap_uid))
        for (folder_name, uidvalidity, flags), items in stores.items():
            try:
                self.select(folder_name, uidvalidity)
            except ChangeImpossible as exc:
                impossible.update((change, str(exc)) for change, _ in items)
                continue
            present = self.session.uids_in([uid for _, uid in items])
            impossible.update(
                (change, "the message is no longer on the server")
                for change, uid in items
                if uid not in present
            )
            uids = sorted(uid for _, uid in items if uid in present)
            add = [flag for flag, on in flags if on]
            remove = [flag for flag, on in flags if not on]
            if uids and add:
                self.client.add_flags(uids, add, silent=True)
            if uids and remove:
                self.client.remove_flags(uids, remove, silent=True)
        with self.scope():
            self.done([change for change in changes if change not in impossible])
        return impossible

    def moves(self, changes: list[MessageChange]) -> dict[MessageChange, str]:
        """One MOVE (or COPY + EXPUNGE) for messages of one folder going to
        one other; each row then takes its new UID."""
        target = changes[0].target_folder
        if target is None:
            return {c: "the destination folder is gone" for c in changes}
        try:
            uidnext = self.status(target.name, b"UIDNEXT")
        except ChangeImpossible as exc:
            return {c: str(exc) for c in changes}
        todo, impossible = self.open(changes)
        if not todo:
            return impossible
        uids = sorted(uid for _, uid in todo)
        if self.can_move:
            response = self.client.move(uids, target.name)
            response = b" ".join(
                [_bytes(response), *map(_bytes, self.client._imap.untagged_responses.pop("OK", []))]
            )
        else:
            response = self.client.copy_with_code(uids, target.name)
            self.client.add_flags(uids, ["\\Deleted"], silent=True)
            self._expunge_uids(uids)
        new_uids: dict[int, int | None] = dict(_copyuid_map(response, len(uids)))
        for change, uid in todo:
            if uid not in new_uids:
                new_uids[uid] = self.searched_uid(target, uidnext, change)
        target_validity = self.status(target.name, b"UIDVALIDITY")
        with self.scope(), transaction.atomic():
            account_change_lock(self.account.id)
            messages = Message.objects.select_for_update().in_bulk([c.message_id for c, _ in todo])
            for change, uid in todo:
                message = messages.get(change.message_id)
                if message is None:
                    continue
                new_uid = new_uids[uid]
                if new_uid is None:
                    # Moved, but its new UID is unknown: the next sync fetches
                    # it from the new folder; a row without a UID would stay twice.
                    message.delete()
                else:
                    message.imap_uid = new_uid
                    message.uidvalidity = target_validity
                    message.save(update_fields=["imap_uid", "uidvalidity", "updated_at"])
            self.done([c for c, _ in todo])
        return impossible

    def searched_uid(self, target: Folder, uidnext: int | None, change: MessageChange) -> int | None:
        """A moved message's new UID, found by its Message-ID among the
        target folder's UIDs from `uidnext` on (no COPYUID from the server)."""
        if change.message_id is None:  # the message was deleted (SET_NULL)
            return None
        with self.scope():
            message_id = (
                Message.objects.filter(id=change.message_id).values_list("message_id", flat=True).first()
            )
        if not message_id or not _SEARCHABLE_ID.match(message_id) or not uidnext:
            return None
        self.selected = None
        self.client.select_folder(target.name, readonly=True)
        # With its brackets: the search is a substring match, and <1@x>
        # must not find <11@x>.
        found = self.client.search(["UID", f"{uidnext}:*", "HEADER", "Message-ID", f"<{message_id}>"])
        found = [uid for uid in found if uid >= uidnext]
        return found[0] if len(found) == 1 else None

    def expunges(self, changes: list[MessageChange]) -> dict[MessageChange, str]:
        """Messages deleted for good from one folder: one EXPUNGE."""
        with self.scope():
            stored = set(
                Message.objects.filter(id__in=[c.message_id for c in changes]).values_list("id", flat=True)
            )
            gone = [c for c in changes if c.message_id not in stored]
            self.done(gone)  # the sync saw them expunged already
        changes = [c for c in changes if c.message_id in stored]
        if not changes:
            return {}
        todo, impossible = self.open(changes)
        if not todo:
            return impossible
        uids = sorted(uid for _, uid in todo)
        self.client.add_flags(uids, ["\\Deleted"], silent=True)
        self._expunge_uids(uids)
        with self.scope(), transaction.atomic():
            account_change_lock(self.account.id)
            Message.objects.filter(id__in=[c.message_id for c, _ in todo], is_deleted=True).delete()
            self.done([c for c, _ in todo])
        return impossible

    def _expunge_uids(self, uids: list[int]) -> None:
        if self.uidplus:
            self.client.uid_expunge(uids)
        else:
            self.client.expunge()  # also removes other \\Deleted messages, as any client's would


def _copyuid_map(response: bytes, most: int) -> dict[int, int]:
    """{source UID: new UID} from the COPYUID codes in a COPY or MOVE
    response (RFC 4315: the two sets pair up in order). A code whose sets
    differ in size, or hold more UIDs than were moved, is ignored."""
    pairs: dict[int, int] = {}
    for match in _COPYUID.finditer(response):
        source = _ordered_uids(match.group(2).decode(), most)
        target = _ordered_uids(match.group(3).decode(), most)
        if source is not None and target is not None and len(source) == len(target):
            pairs.update(zip(source, target, strict=True))
    return pairs


def _ordered_uids(text: str, most: int) -> list[int] | None:
    """The UIDs of a sequence set in its order, or None past `most` of them."""
    uids: list[int] = []
    for item in text.split(","):
        low, _, high = item.partition(":")
        if not low:
            return None
        a, b = int(low), int(high or low)
        if abs(b - a) + 1 > most - len(uids):
            return None
        uids.extend(range(min(a, b), max(a, b) + 1))
    return uids


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return b" ".join(_bytes(v) for v in value)
    return b""
