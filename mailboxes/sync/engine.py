"""The sync engine: `account_sync()` and the `_Engine` it runs, folder by
folder: the cheap STATUS check, flag changes and expunges among the stored
UIDs, new UIDs fetched, parsed and stored in batches, and each folder's
wrap-up. The package's docstring tells the whole flow."""

import imaplib
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, cast

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from accounts.models import EmailAccount
from accounts.models import Protocol as AccountProtocol
from accounts.services import account_credentials
from emailclient.core.tenancy import tenant_scope
from mailboxes.imap import FetchedMessage, FolderState, ImapSession, MailServerError
from mailboxes.sync.config import server_config
from mailboxes.sync.folders import folder_list_sync
from mailboxes.sync.inflight import Group, InFlight, Mark
from mailboxes.sync.pipeline import _BlobWriter, _Pipeline
from mailboxes.sync.quota import StorageQuota
from mailboxes.sync.storage import (
    _Batch,
    _RematchPool,
    advance_cursor,
    attachment_row,
    copy_rows,
    flag_fields,
    message_row,
)
from messages.blobs import BlobStore, blob_key, default_store
from messages.locks import account_change_lock, account_sync_lock
from messages.models import Attachment, Folder, Message, MessageChange, QuarantinedMessage
from messages.parsing import MessageRejected, parse_limits, parse_message
from messages.threads import assign_threads

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


class _Session(Protocol):
    """What fetching a batch needs of a session: `ImapSession`, or the POP3
    flow's `mailboxes.sync.pop3._Pop3Fetcher`."""

    def fetch_full(self, uids: list[int]) -> dict[int, FetchedMessage]: ...

    def uids_in(self, uids: list[int]) -> set[int]: ...


# UIDs per FLAGS fetch when checking known messages: bounds memory and the
# size of the IN (...) lists on folders of any size.
FLAG_RANGE = 20_000


@dataclass
class SyncReport:
    folders: int = 0
    new: int = 0
    updated: int = 0
    expunged: int = 0
    quarantined: int = 0
    bodies_fetched: int = 0
    folder_errors: dict[str, str] = field(default_factory=dict)
    over_quota: str = ""  # why new mail was left on the server (mailboxes.sync.quota)
    deleted_on_server: int = 0  # POP3: stored messages deleted from the server
    notice: str = ""  # what the account's status should say besides (a POP3 server without UIDL)

    def summary(self) -> str:
        text = (
            f"{self.folders} folders, {self.new} new, {self.updated} flag changes, "
            f"{self.expunged} expunged, {self.quarantined} quarantined"
        )
        if self.deleted_on_server:
            text += f", {self.deleted_on_server} deleted on the server"
        if self.over_quota:
            text += ", over quota: new mail not stored"
        if self.folder_errors:
            text += f", {len(self.folder_errors)} folder(s) refused: " + ", ".join(sorted(self.folder_errors))
        return text

    def folder_errors_text(self) -> str:
        """The folders the server refused, with its answers; empty if none."""
        return "; ".join(f"{name}: {error}" for name, error in self.folder_errors.items())


def account_sync(
    *,
    tenant_id: uuid.UUID,
    account_id: uuid.UUID,
    progress: Progress | None = None,
    store: BlobStore | None = None,
) -> SyncReport:
    """Sync one account, over IMAP or POP3 (`mailboxes.sync.pop3`) as its
    protocol says. Raises `SyncAlreadyRunning`, `imap.MailServerError` (and
    its subclasses) and `EmailAccount.DoesNotExist`."""
    with tenant_scope(tenant_id):
        account = EmailAccount.objects.select_related("tenant").get(id=account_id, is_deleted=False)
    if account.protocol == AccountProtocol.POP3:
        from mailboxes.sync.pop3 import pop3_account_sync

        return pop3_account_sync(account=account, store=store or default_store(), progress=progress)
    with account_sync_lock(account.id):
        engine = _Engine(account, store or default_store(), progress)
        engine.progress("", 0, 0)
        credentials = account_credentials(account=account)
        with ImapSession(server_config(account), credentials.username, credentials.password) as session:
            try:
                engine.run(session)
            except MailServerError:
                raise
            except (OSError, imaplib.IMAP4.error, IMAPClientError) as exc:
                # The connection broke mid-sync: what was committed stays.
                raise MailServerError(f"connection to {account.hostname} failed: {exc}") from exc
        return engine.report


class _Engine:
    def __init__(self, account: EmailAccount, store: BlobStore, progress: Progress | None) -> None:
        self.account = account
        self.tenant_id = account.tenant_id
        self.store = store
        self.progress = progress or (lambda folder, done, total: None)
        self.limits = parse_limits()
        self.batch_messages = settings.SYNC_BATCH_MESSAGES
        self.batch_bytes = settings.SYNC_BATCH_BYTES
        self.report = SyncReport()
        self.in_flight = InFlight(account.id)
        self.quota = StorageQuota(account.tenant)
        # run() replaces these with threaded ones for the length of a sync.
        self.blobs = _BlobWriter(store, self.tenant_id, threaded=False, max_bytes=0)
        self.pipeline = _Pipeline(threaded=False)

    def scope(self) -> AbstractContextManager[None]:
        return tenant_scope(self.tenant_id)

    # Folders ---------------------------------------------------------------

    def run(self, session: ImapSession) -> None:
        folders = folder_list_sync(session=session, account=self.account)
        counts = self.stored_counts()
        # One writer for the whole run: it commits folder N's last batches
        # and wrap-up while folder N+1 is fetched.
        threaded = not connection.in_atomic_block
        budget = 2 * self.batch_bytes  # bytes in flight, each for blobs and for rows
        with (
            _BlobWriter(self.store, self.tenant_id, threaded=threaded, max_bytes=budget) as self.blobs,
            _Pipeline(threaded=threaded, max_bytes=budget) as self.pipeline,
        ):
            self.sync_folders(session, folders, counts)
        self.report.folders = len(folders)

    def sync_folders(self, session: ImapSession, folders: list[Folder], counts: dict[uuid.UUID, int]) -> None:
        for folder in folders:
            if not folder.is_selectable:
                continue
            try:
                self.sync_folder(session, folder, counts.get(folder.id, 0))
            except IMAPClientAbortError:
                raise  # the connection is gone: the account's sync fails
            except IMAPClientError as exc:
                # The server refused this folder (NO/BAD: an ACL without read
                # rights, a folder being deleted): skip it, sync the others.
                logger.warning("folder %s of account %s skipped: %s", folder.id, self.account.id, exc)
                self.report.folder_errors[folder.name] = str(exc)[:500]

    def stored_counts(self) -> dict[uuid.UUID, int]:
        with self.scope():
            counts = dict(
                Message.objects.filter(account=self.account)
                .values("folder")
                .annotate(n=Count("id"))
                .values_list("folder", "n")
            )
            for folder_id, n in (
                QuarantinedMessage.objects.filter(account=self.account)
                .values("folder")
                .annotate(n=Count("id"))
                .values_list("folder", "n")
            ):
                counts[folder_id] = counts.get(folder_id, 0) + n
        return counts

    # One folder -----------------------------------------------------------------

    def sync_folder(self, session: ImapSession, folder: Folder, stored_count: int) -> None:
        status = session.folder_status(folder.name)
        unchanged = (
            folder.uidvalidity == status.uidvalidity
            and folder.uidnext is not None
            and status.uidnext == folder.uidnext
            and stored_count == status.exists
            and session.condstore
            and status.highestmodseq is not None
            and status.highestmodseq == folder.highestmodseq
        )
        if unchanged:
            return
        state = session.select(folder.name)
        if folder.uidvalidity != state.uidvalidity:
            self.start_resync(folder, state)
        cursor = folder.uidnext or 1
        if stored_count and cursor > 1:
            self.sync_known(session, folder, state, cursor)
        self.fetch_new(session, folder, state, cursor)
        if self.quota.exceeded:  # the cursor stays before the first message not stored
            state = FolderState(state.uidvalidity, None, state.exists, state.highestmodseq)
        # After the folder's batches, in order.
        self.pipeline.submit(partial(self.finish_folder, folder, state))

    def start_resync(self, folder: Folder, state: FolderState) -> None:
        """New UIDVALIDITY: every UID starts over. Old rows stay until the
        end of this folder's sync, to be re-matched to the new UIDs."""
        if folder.uidvalidity is not None:
            logger.info("folder %s: UIDVALIDITY %s -> %s", folder.id, folder.uidvalidity, state.uidvalidity)
        with self.scope():
            folder.uidvalidity = state.uidvalidity
            folder.uidnext = None
            folder.highestmodseq = None
            folder.save(update_fields=["uidvalidity", "uidnext", "highestmodseq", "updated_at"])

    def sync_known(self, session: ImapSession, folder: Folder, state: FolderState, cursor: int) -> None:
        """Flag changes and expunges among the stored UIDs below the cursor,
        FLAG_RANGE stored UIDs at a time: memory stays flat on huge folders,
        and sparse UIDs (a server may jump to 4,000,000,000) cost nothing."""
        known = sorted(self.known_uids(folder, 1, cursor - 1))
        # CHANGEDSINCE needs CONDSTORE and a stored HIGHESTMODSEQ (falsy: neither).
        since_modseq = folder.highestmodseq if session.condstore else None
        # CONDSTORE without QRESYNC tells no expunges: compare UID sets, unless
        # the counts show that nothing came and nothing went.
        compare_uids = bool(since_modseq) and not session.qresync
        if compare_uids and state.uidnext == cursor and state.exists == len(known):
            compare_uids = False
        server_uids = session.uids(1) if compare_uids else None
        for chunk in _chunks(known, FLAG_RANGE):
            low, high = chunk[0], chunk[-1]
            if since_modseq:
                changes = session.flag_changes(since_modseq=since_modseq, low=low, high=high)
                updates = {uid: flags for uid, (flags, _) in changes.changed.items()}
                if session.qresync:
                    vanished = changes.vanished
                elif server_uids is not None:
                    vanished = {uid for uid in chunk if uid not in server_uids}
                else:
                    vanished = set()
            else:
                updates = session.all_flags(low=low, high=high)
                vanished = set(chunk) - set(updates)
            self.apply_flags(folder, updates)
            self.expunge(folder, vanished)

    def known_uids(self, folder: Folder, low: int, high: int) -> set[int]:
        where = {
            "folder": folder,
            "uidvalidity": folder.uidvalidity,
            "imap_uid__gte": low,
            "imap_uid__lte": high,
        }
        with self.scope():
            # imap_uid__gte leaves out rows without a UID.
            uids = cast(set[int], set(Message.objects.filter(**where).values_list("imap_uid", flat=True)))
            uids |= set(QuarantinedMessage.objects.filter(**where).values_list("imap_uid", flat=True))
        return uids

    def apply_flags(self, folder: Folder, updates: dict[int, tuple[str, ...]]) -> None:
        if not updates:
            return
        with self.scope(), transaction.atomic():
            # After the API's commit of any change to these messages; and a
            # message whose change is not yet on the server keeps its state.
            account_change_lock(self.account.id)
            pending = MessageChange.objects.filter(
                account=self.account, state=MessageChange.State.PENDING, message__isnull=False
            ).values("message_id")
            rows = (
                Message.objects.filter(folder=folder, uidvalidity=folder.uidvalidity)
                .filter(imap_uid__in=list(updates))
                .exclude(id__in=pending)
                .only("id", "imap_uid", "flags", "is_read", "is_flagged", "is_draft", "is_answered")
            )
            changed = []
            for message in rows:
                fields = flag_fields(updates[cast(int, message.imap_uid)])  # selected by imap_uid__in
                if any(getattr(message, k) != v for k, v in fields.items()):
                    for k, v in fields.items():
                        setattr(message, k, v)
                    changed.append(message)
            Message.objects.bulk_update(
                changed, ["flags", "is_read", "is_flagged", "is_draft", "is_answered"]
            )
        self.report.updated += len(changed)

    def expunge(self, folder: Folder, uids: set[int]) -> None:
        if not uids:
            return
        validity = cast(int, folder.uidvalidity)  # set by sync_folder from the SELECT
        with self.scope(), transaction.atomic():
            Message.objects.filter(folder=folder, uidvalidity=validity, imap_uid__in=list(uids)).delete()
            QuarantinedMessage.objects.filter(
                folder=folder, uidvalidity=validity, imap_uid__in=list(uids)
            ).delete()
        self.report.expunged += len(uids)

    # New messages ---------------------------------------------------------------

    def fetch_new(self, session: ImapSession, folder: Folder, state: FolderState, cursor: int) -> None:
        if state.uidnext is not None and state.uidnext <= cursor:
            return
        if state.exists == 0:
            return
        new_uids = sorted(session.uids(cursor))
        if not new_uids:
            return
        done = 0
        self.progress(folder.name, 0, len(new_uids))
        rematch = self.rematch_pool(folder)
        pipeline = self.pipeline
        for chunk in _chunks(new_uids, 5000):
            metas = session.fetch_meta(chunk)
            listed = [metas[uid] for uid in chunk if uid in metas]
            done += self.store_new(session, folder, listed, rematch, done=done, total=len(new_uids))
            if self.quota.exceeded:
                return
            # UIDs that vanished between SEARCH and FETCH: move past them,
            # after the chunk's batches.
            pipeline.submit(partial(self.advance_cursor, folder.id, chunk[-1] + 1))

    def store_new(
        self,
        session: "_Session",
        folder: Folder,
        metas: list[FetchedMessage],
        rematch: "_RematchPool",
        *,
        done: int = 0,
        total: int = 0,
    ) -> int:
        """Fetch, parse and store `metas` (in UID order) in batches, within the
        tenant's quota; the number handled. Stops at the first message over
        the quota (`self.quota.exceeded` says so). Progress is `done` more
        than those handled here, of `total`."""
        handled = 0
        for metas_batch in self.batches(metas):
            fitting = self.quota.fit(metas_batch)
            if not fitting:
                self.report.over_quota = self.quota.exceeded
                return handled
            if len(fitting) < len(metas_batch):
                self.report.over_quota, metas_batch = self.quota.exceeded, fitting
            for group in self.in_flight.groups(folder, metas_batch):
                self.prepare_group(session, folder, group, rematch)
            handled += len(metas_batch)
            self.progress(folder.name, done + handled, total or len(metas))
            if self.quota.exceeded:
                return handled
        return handled

    def advance_cursor(self, folder_id: uuid.UUID, next_uid: int) -> None:
        with self.scope():  # on the writer's connection: RLS needs the tenant there too
            advance_cursor(folder_id, next_uid)

    def batches(self, metas: list[FetchedMessage]) -> Iterator[list[FetchedMessage]]:
        batch: list[FetchedMessage] = []
        size = 0
        for meta in metas:
            if batch and (len(batch) >= self.batch_messages or size + meta.size > self.batch_bytes):
                yield batch
                batch, size = [], 0
            batch.append(meta)
            size += meta.size
        if batch:
            yield batch

    def rematch_pool(self, folder: Folder) -> "_RematchPool":
        """Rows left from an earlier UIDVALIDITY, to be given the new UIDs
        instead of inserting twins."""
        pool = _RematchPool()
        with self.scope():
            rows = Message.objects.filter(folder=folder, uidvalidity__isnull=False).exclude(
                uidvalidity=folder.uidvalidity
            )
            for row_id, content_hash, message_id in rows.values_list("id", "content_hash", "message_id"):
                pool.add(row_id, content_hash, message_id)
        return pool

    def prepare_group(
        self, session: "_Session", folder: Folder, group: Group, rematch: "_RematchPool"
    ) -> None:
        """One group of a batch (`mailboxes.sync.inflight`): its UIDs marked in
        flight from before the fetch until committed; a suspect's commit
        waited for; one a worker died on too often quarantined unfetched."""
        if group.losses:
            batch = _Batch(folder_id=folder.id, next_uid=group.uids[-1] + 1)
            for meta in group.metas:
                reason = (
                    f"a sync worker died {group.losses} times with this message in flight (out of memory?)"
                )
                batch.quarantine(self, folder, meta, None, f"{reason}; not fetched again")
            # Not marked again by this run: a failed commit leaves the count.
            mark = Mark(self.in_flight.key(folder), tuple(group.uids))
            self.pipeline.submit(partial(self.commit_marked, batch, mark, counted=False), size=batch.size)
        else:
            with self.in_flight.started(folder, group) as mark:
                batch = self.prepare_batch(session, folder, group.metas, rematch)
            # From here the job owns the marks: it clears them once committed
            # and takes them back if its commit fails or never runs.
            self.pipeline.submit(
                partial(self.commit_marked, batch, mark),
                size=batch.size,
                skipped=partial(self.in_flight.undo, mark),
            )
        if group.single:
            self.pipeline.wait()

    def commit_marked(self, batch: "_Batch", mark: Mark, *, counted: bool = True) -> None:
        """`commit_batch`, then its UIDs are no longer in flight. A failed
        commit takes back this run's marks (undone, not cleared: a count
        left by a dead worker stays), since only a dead worker may leave them."""
        try:
            self.commit_batch(batch)
        except BaseException:
            if counted:
                self.in_flight.undo(mark)
            raise
        self.in_flight.clear(mark)

    def prepare_batch(
        self,
        session: "_Session",
        folder: Folder,
        metas: list[FetchedMessage],
        rematch: "_RematchPool",
    ) -> "_Batch":
        """Fetch and parse one batch and write its blobs (network, CPU and
        files; no database). Each raw message is dropped once stored: the
        batch keeps only its rows."""
        batch = _Batch(folder_id=folder.id, next_uid=max(m.uid for m in metas) + 1)
        too_big = [m for m in metas if m.size > self.limits.max_message_bytes]
        wanted = [m.uid for m in metas if m.size <= self.limits.max_message_bytes]
        fetched = session.fetch_full(wanted) if wanted else {}
        self.report.bodies_fetched += len(fetched)
        for meta in too_big:
            batch.quarantine(self, folder, meta, None, f"message of {meta.size} bytes is over the limit")
        missing = [uid for uid in wanted if uid not in fetched]
        if missing:
            # Expunged since the size fetch, or withheld by the server (some
            # answer fewer items than asked when a message is unreadable):
            # only the first may be skipped, the others are quarantined so the
            # UID accounting stays exact and the loss is visible.
            still_there = session.uids_in(missing)
            for uid in missing:
                if uid in still_there:
                    meta = next(m for m in metas if m.uid == uid)
                    batch.quarantine(self, folder, meta, None, "the server did not return this message")
        for uid in wanted:
            item = fetched.pop(uid, None)
            if item is not None:
                self.prepare_message(batch, folder, item, rematch)
        # Their fsyncs start now, beside the next batch's fetch, not when the
        # writer comes to this batch's commit (which flushes what is left).
        batch.blob_writes.append(self.blobs.flush())
        return batch

    def prepare_message(
        self, batch: "_Batch", folder: Folder, item: FetchedMessage, rematch: "_RematchPool"
    ) -> None:
        raw, item.raw = item.raw, None
        if raw is None:
            batch.quarantine(self, folder, item, None, "the server returned no body")
            return
        try:
            parsed = parse_message(raw, self.limits)
        except MessageRejected as exc:
            batch.quarantine(self, folder, item, raw, exc.reason)
            return
        except Exception as exc:  # a parser bug must not stop the sync
            logger.exception("parser failed on uid %s of folder %s", item.uid, folder.id)
            batch.quarantine(self, folder, item, raw, f"parser error: {type(exc).__name__}")
            return
        raw_key = blob_key(raw)
        # Blobs before rows: the batch's commit waits for these writes.
        batch.blob_writes.append(self.blobs.put(raw, raw_key))
        old_id = self.take_rematch(rematch, raw_key, parsed.message_id)
        if old_id is not None:
            batch.rematched.append(
                Message(
                    id=old_id,
                    imap_uid=item.uid,
                    uidvalidity=folder.uidvalidity,
                    modseq=item.modseq,
                    pop3_uidl=self.pop3_uidl(item.uid),
                    **flag_fields(item.flags),
                )
            )
            return
        message = message_row(
            self.tenant_id,
            self.account.id,
            folder,
            item,
            parsed,
            raw_key,
            size=len(raw),
            pop3_uidl=self.pop3_uidl(item.uid),
        )
        batch.messages.append(message)
        batch.size += 1024 + len(parsed.text_body) + len(parsed.html_body)
        for part in parsed.attachments:
            batch.blob_writes.append(self.blobs.put(part.data, part.sha256))
            batch.attachments.append(attachment_row(self.tenant_id, message, part))
            batch.size += 512

    def commit_batch(self, batch: "_Batch") -> None:
        """The batch's rows and the folder's cursor in one transaction, once
        its blobs are on disk (a committed row never names a missing blob).
        Batches commit strictly in order."""
        for write in batch.blob_writes:
            if write is not None:
                write.result()  # raises the write's error: nothing of the batch commits
        self.store.flush()  # the batch's blobs fsynced, named, their folders fsynced (`messages.blobs`)
        with self.scope(), transaction.atomic():
            batch.drop_stored()
            if batch.messages:
                assign_threads(tenant_id=self.tenant_id, account_id=self.account.id, messages=batch.messages)
                copy_rows(Message, batch.messages)
                copy_rows(Attachment, batch.attachments)
            if batch.rematched:
                Message.objects.bulk_update(batch.rematched, self.rematch_fields)
            if batch.quarantined:
                QuarantinedMessage.objects.bulk_create(batch.quarantined, ignore_conflicts=True)
            advance_cursor(batch.folder_id, batch.next_uid)
        self.report.new += len(batch.messages) + len(batch.rematched)
        self.report.quarantined += len(batch.quarantined)

    # What a row taken from the rematch pool gets of the message it now is.
    rematch_fields: tuple[str, ...] = (
        "imap_uid",
        "uidvalidity",
        "modseq",
        "flags",
        "is_read",
        "is_flagged",
        "is_draft",
        "is_answered",
    )

    def pop3_uidl(self, uid: int) -> str:
        """The message's POP3 unique id, for its row; none over IMAP."""
        return ""

    @staticmethod
    def take_rematch(pool: "_RematchPool", raw_key: str, message_id: str) -> uuid.UUID | None:
        return pool.take(raw_key, message_id)

    # End of a folder --------------------------------------------------------------

    def finish_folder(self, folder: Folder, state: FolderState) -> None:
        with self.scope(), transaction.atomic():
            # Rows of an older UIDVALIDITY that no new UID claimed are gone.
            # Rows without a UIDVALIDITY are moves the write-back has not done yet.
            stale = Message.objects.filter(folder=folder, uidvalidity__isnull=False).exclude(
                uidvalidity=folder.uidvalidity
            )
            self.report.expunged += stale.delete()[0]
            validity = cast(int, folder.uidvalidity)  # set by sync_folder from the SELECT
            QuarantinedMessage.objects.filter(folder=folder).exclude(uidvalidity=validity).delete()
            counts = Message.objects.filter(folder=folder, is_deleted=False).aggregate(
                total=Count("id"), unread=Count("id", filter=Q(is_read=False))
            )
            if state.uidnext is not None:
                advance_cursor(folder.id, state.uidnext)
            Folder.objects.filter(id=folder.id).update(
                total_count=counts["total"],
                unread_count=counts["unread"],
                highestmodseq=state.highestmodseq,
                last_synced_at=timezone.now(),
                updated_at=timezone.now(),
            )


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
