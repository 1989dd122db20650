"""The IMAP sync engine: server folders and messages into PostgreSQL.

`account_sync()` brings one account's database copy in step with its server:

* Folders: LIST (with SPECIAL-USE), types from special-use flags or common
  names, hierarchy from the delimiter. A folder missing from the server whose
  UIDVALIDITY reappears under a new name was renamed (its messages keep their
  rows); otherwise it was deleted, with its messages.
* Per folder, a cursor: UIDVALIDITY, `uidnext` (every UID below it is stored
  or quarantined) and HIGHESTMODSEQ. A cheap STATUS first: when nothing moved,
  the folder is done without SELECT. Otherwise new UIDs are fetched in
  batches (by count and by bytes), flag changes come from CONDSTORE
  `CHANGEDSINCE` (or a full FLAGS fetch without it), expunges from QRESYNC
  `VANISHED` (or a UID-set comparison without it).
* Each batch is parsed and its blobs written outside any transaction (on
  this thread, message by message, so a batch in flight holds rows, not raw
  mail), then stored with the folder's cursor in one transaction on a writer
  thread, by COPY: a crash anywhere is followed by a sync that picks up at
  the cursor, and `UNIQUE (tenant, folder, uidvalidity, imap_uid)` makes a
  replayed batch a no-op. The pipeline between the two threads is bounded
  by bytes, so memory stays flat whatever the size of the mail.
* A UIDVALIDITY change re-matches the folder's old rows to the new UIDs by
  content hash, then Message-ID: no duplicates, no row lost for a message
  that is still there; rows left over at the end are gone from the server.
* A message that cannot be parsed or is over a limit is quarantined with its
  reason; the sync goes on.

No database transaction is ever open across a network read. One sync per
account at a time (a PostgreSQL advisory lock).
"""

import imaplib
import json
import logging
import operator
import queue
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from accounts.models import EmailAccount
from accounts.services import account_credentials
from emailclient.core.tenancy import tenant_scope
from messages.blobs import BlobStore, blob_key, default_store
from messages.locks import account_change_lock, account_sync_lock
from messages.models import Attachment, Folder, FolderType, Message, MessageChange, QuarantinedMessage
from messages.parsing import MessageRejected, ParsedMessage, parse_limits, parse_message
from messages.threading import assign_threads

from .imap import FetchedMessage, FolderInfo, FolderState, ImapSession, MailServerError, ServerConfig

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

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

    def summary(self) -> str:
        text = (
            f"{self.folders} folders, {self.new} new, {self.updated} flag changes, "
            f"{self.expunged} expunged, {self.quarantined} quarantined"
        )
        if self.folder_errors:
            text += f", {len(self.folder_errors)} folder(s) refused: " + ", ".join(sorted(self.folder_errors))
        return text


# --- Folder types --------------------------------------------------------------

_SPECIAL_USE = {
    "\\sent": FolderType.SENT,
    "\\drafts": FolderType.DRAFTS,
    "\\trash": FolderType.TRASH,
    "\\junk": FolderType.SPAM,
    "\\archive": FolderType.ARCHIVE,
    "\\all": FolderType.ARCHIVE,
}
_COMMON_NAMES = {
    FolderType.SENT: {
        "sent",
        "sent items",
        "sent messages",
        "sent mail",
        "sent-mail",
        "gesendet",
        "gesendete elemente",
        "envoyés",
        "elementos enviados",
        "posta inviata",
    },
    FolderType.DRAFTS: {"drafts", "draft", "entwürfe", "brouillons", "borradores", "bozze"},
    FolderType.TRASH: {
        "trash",
        "deleted items",
        "deleted messages",
        "bin",
        "papierkorb",
        "gelöschte elemente",
        "corbeille",
        "papelera",
        "cestino",
    },
    FolderType.SPAM: {"junk", "spam", "junk e-mail", "junk email", "bulk mail", "junk mail", "spamverdacht"},
    FolderType.ARCHIVE: {"archive", "archives", "all mail", "archiv"},
}


def folder_type(info: FolderInfo) -> str:
    if info.name.upper() == "INBOX":
        return FolderType.INBOX
    for flag in info.flags:
        kind = _SPECIAL_USE.get(flag.lower())
        if kind:
            return kind
    leaf = info.name.rsplit(info.delimiter, 1)[-1] if info.delimiter else info.name
    leaf = leaf.strip().lower()
    for kind, names in _COMMON_NAMES.items():
        if leaf in names:
            return kind
    return FolderType.CUSTOM


# --- Flags ---------------------------------------------------------------------


def flag_fields(flags: tuple[str, ...]) -> dict:
    lowered = {f.lower() for f in flags}
    return {
        "flags": sorted(f[:128] for f in flags if f.lower() != "\\recent"),
        "is_read": "\\seen" in lowered,
        "is_flagged": "\\flagged" in lowered,
        "is_draft": "\\draft" in lowered,
        "is_answered": "\\answered" in lowered,
    }


# --- Entry point -------------------------------------------------------------------


def server_config(account: EmailAccount) -> ServerConfig:
    return ServerConfig(
        host=account.hostname,
        port=account.port,
        encryption=account.encryption,
        allow_private=settings.MAIL_ALLOW_PRIVATE_HOSTS,
        allow_plaintext=settings.MAIL_ALLOW_PLAINTEXT,
        ca_file=settings.MAIL_TLS_CA_FILE,
        connect_timeout=settings.MAIL_CONNECT_TIMEOUT,
        read_timeout=settings.MAIL_READ_TIMEOUT,
        max_literal=settings.MAIL_MAX_MESSAGE_BYTES + 1024 * 1024,
    )


def account_sync(
    *,
    tenant_id: uuid.UUID,
    account_id: uuid.UUID,
    progress: Progress | None = None,
    store: BlobStore | None = None,
) -> SyncReport:
    """Sync one account. Raises `SyncAlreadyRunning`, `imap.MailServerError`
    (and its subclasses) and `EmailAccount.DoesNotExist`."""
    with tenant_scope(tenant_id):
        account = EmailAccount.objects.select_related("tenant").get(id=account_id, is_deleted=False)
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
    def __init__(self, account: EmailAccount, store: BlobStore, progress: Progress | None):
        self.account = account
        self.tenant_id = account.tenant_id
        self.store = store
        self.progress = progress or (lambda folder, done, total: None)
        self.limits = parse_limits()
        self.batch_messages = settings.SYNC_BATCH_MESSAGES
        self.batch_bytes = settings.SYNC_BATCH_BYTES
        self.report = SyncReport()
        # run() replaces these with threaded ones for the length of a sync.
        self.blobs = _BlobWriter(store, self.tenant_id, threaded=False, max_bytes=0)
        self.pipeline = _Pipeline(threaded=False)

    def scope(self):
        return tenant_scope(self.tenant_id)

    # Folders ---------------------------------------------------------------

    def run(self, session: ImapSession) -> None:
        folders = self.sync_folder_list(session)
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

    def sync_folders(self, session: ImapSession, folders: list[Folder], counts: dict) -> None:
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

    def sync_folder_list(self, session: ImapSession) -> list[Folder]:
        infos = {info.name: info for info in session.list_folders()}
        if not any(name.upper() == "INBOX" for name in infos):
            # A partial LIST must not delete folders and their mail.
            raise MailServerError("the server's folder list has no INBOX; folders left as they are")
        with self.scope():
            stored = {f.name: f for f in Folder.objects.filter(account=self.account)}
        missing = {name: f for name, f in stored.items() if name not in infos}
        renames = self.detect_renames(session, infos, stored, missing)
        for old in renames.values():
            missing.pop(old.name, None)
        with self.scope(), transaction.atomic():
            for name, folder in renames.items():
                folder.name = name
                folder.save(update_fields=["name", "updated_at"])
                stored[name] = folder
            if missing:
                Folder.objects.filter(id__in=[f.id for f in missing.values()]).delete()
            result = []
            for name, info in infos.items():
                folder = stored.get(name) or Folder(tenant_id=self.tenant_id, account=self.account, name=name)
                folder.delimiter = info.delimiter
                folder.attributes = sorted(info.flags)
                folder.type = folder_type(info)
                folder.is_selectable = info.selectable
                folder.save()
                stored[name] = folder
                result.append(folder)
            for folder in result:
                parent_name = (
                    folder.name.rsplit(folder.delimiter, 1)[0] if folder.delimiter in folder.name else None
                )
                parent = stored.get(parent_name) if folder.delimiter and parent_name else None
                if (parent.id if parent else None) != folder.parent_id:
                    folder.parent = parent
                    folder.save(update_fields=["parent", "updated_at"])
        return result

    def detect_renames(self, session, infos, stored, missing) -> dict[str, Folder]:
        """New names that are vanished folders renamed: the UIDVALIDITY
        matches exactly one vanished and one new folder (RFC 3501 makes it
        unique per name only; some servers reuse values), and the messages
        at the stored UIDs carry the stored Message-IDs (real ones: a
        synthetic id is not on the server to compare)."""
        validities = Counter(f.uidvalidity for f in missing.values() if f.uidvalidity is not None)
        if not validities:
            return {}
        new_states = {
            name: session.folder_status(name)
            for name, info in infos.items()
            if name not in stored and info.selectable
        }
        new_validities = Counter(state.uidvalidity for state in new_states.values())
        renames = {}
        for name, state in new_states.items():
            if validities[state.uidvalidity] != 1 or new_validities[state.uidvalidity] != 1:
                continue
            old = next(f for f in missing.values() if f.uidvalidity == state.uidvalidity)
            if self.same_messages(session, old, name):
                renames[name] = old
        return renames

    def same_messages(self, session: ImapSession, old: Folder, new_name: str) -> bool:
        with self.scope():
            sample = dict(
                Message.objects.filter(folder=old, uidvalidity=old.uidvalidity, message_id_synthetic=False)
                .exclude(message_id="")
                .order_by("imap_uid")
                .values_list("imap_uid", "message_id")[:5]
            )
        if not sample:
            return True  # nothing stored that could end up under the wrong name
        session.select(new_name)
        return session.message_ids(sample) == sample

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
        condstore = session.condstore and bool(folder.highestmodseq)
        # CONDSTORE without QRESYNC tells no expunges: compare UID sets, unless
        # the counts show that nothing came and nothing went.
        compare_uids = condstore and not session.qresync
        if compare_uids and state.uidnext == cursor and state.exists == len(known):
            compare_uids = False
        server_uids = session.uids(1) if compare_uids else None
        for chunk in _chunks(known, FLAG_RANGE):
            low, high = chunk[0], chunk[-1]
            if condstore:
                changes = session.flag_changes(since_modseq=folder.highestmodseq, low=low, high=high)
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
            uids = set(Message.objects.filter(**where).values_list("imap_uid", flat=True))
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
                fields = flag_fields(updates[message.imap_uid])
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
        with self.scope(), transaction.atomic():
            Message.objects.filter(
                folder=folder, uidvalidity=folder.uidvalidity, imap_uid__in=list(uids)
            ).delete()
            QuarantinedMessage.objects.filter(
                folder=folder, uidvalidity=folder.uidvalidity, imap_uid__in=list(uids)
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
            for metas_batch in self.batches([metas[uid] for uid in chunk if uid in metas]):
                batch = self.prepare_batch(session, folder, metas_batch, rematch)
                pipeline.submit(partial(self.commit_batch, batch), size=batch.size)
                done += len(metas_batch)
                self.progress(folder.name, done, len(new_uids))
            # UIDs that vanished between SEARCH and FETCH: move past them,
            # after the chunk's batches.
            pipeline.submit(partial(self.advance_cursor, folder.id, chunk[-1] + 1))

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

    def prepare_batch(
        self,
        session: ImapSession,
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
                    **flag_fields(item.flags),
                )
            )
            return
        message = self.build_message(folder, item, parsed, raw_key, size=len(raw))
        batch.messages.append(message)
        batch.size += 1024 + len(parsed.text_body) + len(parsed.html_body)
        now = message.created_at
        for part in parsed.attachments:
            batch.blob_writes.append(self.blobs.put(part.data, part.sha256))
            batch.attachments.append(
                _Row(
                    id=uuid.uuid4(),
                    created_at=now,
                    updated_at=now,
                    tenant_id=self.tenant_id,
                    message_id=message.id,
                    filename=part.filename,
                    mime_type=part.mime_type,
                    size_bytes=len(part.data),
                    content_id=part.content_id,
                    is_inline=part.is_inline,
                    content_hash=part.sha256,
                    storage_type="local",
                    storage_path="",
                )
            )
            batch.size += 512

    def commit_batch(self, batch: "_Batch") -> None:
        """The batch's rows and the folder's cursor in one transaction, once
        its blobs are on disk (a committed row never names a missing blob).
        Batches commit strictly in order."""
        for write in batch.blob_writes:
            if write is not None:
                write.result()  # raises the write's error: nothing of the batch commits
        with self.scope(), transaction.atomic():
            self.drop_stored(batch)
            if batch.messages:
                assign_threads(tenant_id=self.tenant_id, account_id=self.account.id, messages=batch.messages)
                copy_rows(Message, batch.messages)
                copy_rows(Attachment, batch.attachments)
            if batch.rematched:
                Message.objects.bulk_update(
                    batch.rematched,
                    [
                        "imap_uid",
                        "uidvalidity",
                        "modseq",
                        "flags",
                        "is_read",
                        "is_flagged",
                        "is_draft",
                        "is_answered",
                    ],
                )
            if batch.quarantined:
                QuarantinedMessage.objects.bulk_create(batch.quarantined, ignore_conflicts=True)
            advance_cursor(batch.folder_id, batch.next_uid)
        self.report.new += len(batch.messages) + len(batch.rematched)
        self.report.quarantined += len(batch.quarantined)

    def drop_stored(self, batch: "_Batch") -> None:
        """Leave out messages already stored under the same (UIDVALIDITY,
        UID): a replayed batch (after a crash between commit and report, or
        an interrupted writer) is a no-op, not an IntegrityError."""
        uids = [m.imap_uid for m in batch.messages]
        if not uids:
            return
        validity = batch.messages[0].uidvalidity
        stored = set(
            Message.objects.filter(
                folder_id=batch.folder_id, uidvalidity=validity, imap_uid__in=uids
            ).values_list("imap_uid", flat=True)
        )
        if stored:
            kept = [m for m in batch.messages if m.imap_uid not in stored]
            kept_ids = {m.id for m in kept}
            batch.messages = kept
            batch.attachments = [a for a in batch.attachments if a.message_id in kept_ids]

    @staticmethod
    def take_rematch(pool: "_RematchPool", raw_key: str, message_id: str) -> uuid.UUID | None:
        return pool.take(raw_key, message_id)

    def build_message(
        self, folder: Folder, item: FetchedMessage, parsed: ParsedMessage, raw_key: str, *, size: int
    ) -> "_Row":
        now = timezone.now()
        return _Row(
            id=uuid.uuid4(),
            created_at=now,
            updated_at=now,
            tenant_id=self.tenant_id,
            account_id=self.account.id,
            folder_id=folder.id,
            imap_uid=item.uid,
            uidvalidity=folder.uidvalidity,
            modseq=item.modseq,
            pop3_uidl="",
            message_id=parsed.message_id,
            message_id_synthetic=parsed.message_id_synthetic,
            in_reply_to=parsed.in_reply_to,
            references=parsed.references,
            from_address=parsed.from_address,
            from_name=parsed.from_name,
            to=json.dumps(parsed.to),
            cc=json.dumps(parsed.cc),
            bcc=json.dumps(parsed.bcc),
            reply_to=json.dumps(parsed.reply_to),
            subject=parsed.subject,
            text_body=parsed.text_body,
            html_body=parsed.html_body,
            snippet=parsed.snippet,
            has_attachments=any(not a.is_inline for a in parsed.attachments),
            thread_id=None,
            sent_at=parsed.sent_at,
            received_at=item.internal_date or parsed.sent_at or now,
            size_bytes=item.size or size,
            content_hash=raw_key,
            raw_blob_key=raw_key,
            is_deleted=False,
            deleted_at=None,
            search_vector=None,
            **flag_fields(item.flags),
        )

    # End of a folder --------------------------------------------------------------

    def finish_folder(self, folder: Folder, state: FolderState) -> None:
        with self.scope(), transaction.atomic():
            # Rows of an older UIDVALIDITY that no new UID claimed are gone.
            # Rows without a UIDVALIDITY are moves the write-back has not done yet.
            stale = Message.objects.filter(folder=folder, uidvalidity__isnull=False).exclude(
                uidvalidity=folder.uidvalidity
            )
            self.report.expunged += stale.delete()[0]
            QuarantinedMessage.objects.filter(folder=folder).exclude(uidvalidity=folder.uidvalidity).delete()
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


def advance_cursor(folder_id: uuid.UUID, next_uid: int) -> None:
    """Move the folder's cursor forward (never back), inside the caller's
    transaction and tenant scope."""
    Folder.objects.filter(id=folder_id).update(
        uidnext=Greatest(Coalesce(F("uidnext"), Value(1)), Value(next_uid)), updated_at=timezone.now()
    )


class _Row:
    """The column values of one row to insert, as attributes named like the
    model's (`assign_threads` reads and sets a message's the same way as on
    a model instance), at a fraction of a model instance's cost."""

    def __init__(self, **values):
        self.__dict__.update(values)


def copy_rows(model: type, rows: list[_Row]) -> None:
    """INSERT `rows` into `model`'s table through COPY, inside the caller's
    transaction and tenant scope. PostgreSQL refuses COPY FROM into a table
    with row-level security, so the rows go to a temporary table first
    (private to this connection, emptied at commit) and from there into the
    real one with one INSERT ... SELECT, which the RLS policy checks like
    any INSERT. Against a multi-row INSERT from bulk_create this saves
    building and parsing a statement of tens of thousands of parameters."""
    if not rows:
        return
    fields = [f for f in model._meta.concrete_fields if not f.generated]  # the database computes those
    table = model._meta.db_table
    temp = f"sync_{table}"
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    values = operator.attrgetter(*(f.attname for f in fields))
    with connection.cursor() as cursor:
        # Identifiers only: model metadata, nothing from the mail.
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {temp} (LIKE {table}) ON COMMIT DELETE ROWS")
        with cursor.cursor.copy(f"COPY {temp} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(values(row))
        cursor.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {temp}")  # noqa: S608
        cursor.execute(f"DELETE FROM {temp}")  # noqa: S608 - the next batch may share this transaction


@dataclass
class _Batch:
    folder_id: uuid.UUID
    next_uid: int
    messages: list[_Row] = field(default_factory=list)
    attachments: list[_Row] = field(default_factory=list)
    rematched: list[Message] = field(default_factory=list)
    quarantined: list[QuarantinedMessage] = field(default_factory=list)
    blob_writes: list[Future | None] = field(default_factory=list)
    size: int = 0  # bytes its rows hold in memory, roughly

    def quarantine(
        self, engine: "_Engine", folder: Folder, item: FetchedMessage, raw: bytes | None, reason: str
    ):
        key = blob_key(raw) if raw else ""
        if raw:
            self.blob_writes.append(engine.blobs.put(raw, key))
        logger.warning("quarantined uid %s of folder %s: %s", item.uid, folder.id, reason)
        self.quarantined.append(
            QuarantinedMessage(
                tenant_id=engine.tenant_id,
                account=engine.account,
                folder=folder,
                imap_uid=item.uid,
                uidvalidity=folder.uidvalidity,
                reason=reason[:1000],
                size_bytes=item.size,
                raw_blob_key=key,
            )
        )


class _RematchPool:
    """Old rows by content hash and by Message-ID; a row is taken once."""

    def __init__(self):
        self.by_key: dict[str, list[uuid.UUID]] = {}
        self.taken: set[uuid.UUID] = set()

    def add(self, row_id: uuid.UUID, content_hash: str, message_id: str) -> None:
        self.by_key.setdefault(f"h:{content_hash}", []).append(row_id)
        if message_id:
            self.by_key.setdefault(f"m:{message_id}", []).append(row_id)

    def __bool__(self) -> bool:
        return bool(self.by_key)

    def take(self, content_hash: str, message_id: str) -> uuid.UUID | None:
        for key in (f"h:{content_hash}", f"m:{message_id}" if message_id else ""):
            rows = self.by_key.get(key)
            while rows:
                row_id = rows.pop()
                if row_id not in self.taken:
                    self.taken.add(row_id)
                    return row_id
        return None


class _BlobWriter:
    """Writes blobs on two background threads. A blob write is mostly work
    without the GIL (gzip in C; creating the file, which costs a few hundred
    microseconds of kernel time on ext4), so it runs on the other core while
    this thread parses. The writes not yet done hold at most `max_bytes`
    (one always goes, however big). Without `threaded`, writes run inline.
    Leaving the block waits for every write."""

    def __init__(self, store: BlobStore, tenant_id: uuid.UUID, *, threaded: bool, max_bytes: int):
        self.store = store
        self.tenant_id = tenant_id
        self.max_bytes = max_bytes
        self.pending = 0
        self.done = threading.Condition()
        self.executor = ThreadPoolExecutor(2, thread_name_prefix="sync-blobs") if threaded else None

    def put(self, data: bytes, key: str) -> Future | None:
        if self.executor is None:
            self.store.put(self.tenant_id, data, key)
            return None
        with self.done:
            while self.pending and self.pending + len(data) > self.max_bytes:
                self.done.wait()
            self.pending += len(data)
        return self.executor.submit(self._put, data, key)

    def _put(self, data: bytes, key: str) -> None:
        try:
            self.store.put(self.tenant_id, data, key)
        finally:
            with self.done:
                self.pending -= len(data)
                self.done.notify_all()

    def __enter__(self) -> "_BlobWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)


class _Pipeline:
    """Runs commit jobs in order on a writer thread with its own database
    connection, so that PostgreSQL works on batch N while this thread fetches
    and parses batch N+1 (two cores, one GIL: parsing is Python, a commit is
    mostly waiting on PostgreSQL). At most two jobs wait, and the jobs not
    yet done hold at most `max_bytes` (one job always goes, however big),
    bounding memory by bytes whatever the size of the mail.

    Without `threaded` (inside an outer transaction, as in tests that roll
    back) jobs run inline. Leaving the block waits for every job; the first
    job error is raised then, or by the next `submit`."""

    def __init__(self, *, threaded: bool, max_bytes: int = 32 * 1024 * 1024):
        self.threaded = threaded
        self.error: BaseException | None = None
        self.max_bytes = max_bytes
        self.in_flight = 0
        self.done = threading.Condition()
        if threaded:
            self.jobs: queue.Queue = queue.Queue(maxsize=2)
            self.thread = threading.Thread(target=self._work, name="sync-writer", daemon=True)
            self.thread.start()

    def _work(self) -> None:
        try:
            while (item := self.jobs.get()) is not None:
                job, size = item
                try:
                    if self.error is None:
                        job()
                except BaseException as exc:
                    self.error = exc
                finally:
                    with self.done:
                        self.in_flight -= size
                        self.done.notify_all()
        finally:
            connection.close()

    def submit(self, job: Callable[[], None], size: int = 0) -> None:
        if self.error is not None:
            raise self.error
        if not self.threaded:
            job()
            return
        with self.done:
            while self.in_flight and self.in_flight + size > self.max_bytes and self.error is None:
                self.done.wait()
            self.in_flight += size
        self.jobs.put((job, size))

    def __enter__(self) -> "_Pipeline":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.threaded:
            # Wait for the writer whatever happens here (a soft time limit, a
            # ^C): returning early would release the account's lock while
            # batches are still being committed. It has two jobs at most.
            while True:
                try:
                    self.jobs.put(None)
                    break
                except BaseException:  # noqa: S112 - interrupted while waiting; wait again
                    continue
            while self.thread.is_alive():
                try:
                    self.thread.join()
                except BaseException:  # noqa: S112
                    continue
        if self.error is not None:
            if exc is None:
                raise self.error
            logger.error("sync writer failed as well", exc_info=self.error)


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
