"""POP3 accounts: the server's mailbox into the account's INBOX, through the
same pipeline as IMAP mail.

POP3 has one mailbox, no flags, no folders and no stable message numbers:
only each message's unique id (UIDL, RFC 1939) lasts from one session to
the next. So each unique id is given a UID of our own, once, in
`Pop3Uidl` (UNIQUE per folder both ways), committed before anything is
downloaded; from there on the message is what the IMAP engine handles: a
UID in a folder of UIDVALIDITY 0 whose cursor (`Folder.uidnext`) says every
UID below it is stored or quarantined. The same code then fetches (RETR,
pipelined), parses, writes blobs, commits rows by COPY with the cursor in
one transaction, threads, quarantines, counts the quota and marks messages
in flight (`mailboxes.sync.engine._Engine`, which this subclasses):

* Incremental: only unique ids not yet mapped, or mapped at or past the
  cursor, are downloaded.
* Crash-safe: the UIDs are mapped before the download, so a sync that dies
  mid-download is followed by one that finds the same UIDs, skips those
  below the cursor, and stores the rest; a replayed batch is a no-op
  (`UNIQUE (tenant, folder, uidvalidity, imap_uid)`). Nothing is lost, nothing
  stored twice. The next UID to give is kept in `Folder.sync_token`, so a
  UID is never given twice either, whatever the server forgets.
* A server without UIDL: each message's identity is made up from its whole
  content (RETR): "~" and its hash, so two messages with one header but
  different bodies are two; a second byte-identical copy gets "#2" and so
  on. The account's sync status says so (`SyncReport.notice`). Each sync
  downloads every message again (without UIDL it is the only way to know).
* The state (`Folder.sync_token`, JSON, `_state`): the next UID, the
  mailbox's endpoint (protocol, host, port, user) and the identity mode.
  Another endpoint, or an IMAP past (another UIDVALIDITY), drops every
  `Pop3Uidl` row and starts a new epoch of UIDs (stored mail stays): the
  unique ids of another mailbox name other messages. A server that gave
  UIDL and now refuses it fails the sync (tried again), never switches.
* Mail deleted on the server stays here: POP3 users delete on the server
  as a matter of course (or have it done: `pop3_leave_on_server` off), and
  expect the copy they downloaded to stay. Its `Pop3Uidl` row goes once two
  listings in a row lack it; its `Message` keeps the unique id in `pop3_uidl`.
* Deleting on the server (`EmailAccount.pop3_leave_on_server` off): after
  the download's last commit, only messages below the cursor (committed with
  their blobs fsynced, `_Engine.commit_batch`) with a stored row that is that
  message (its `pop3_uidl` the unique id, its size the LIST size's, or a
  quarantined source), and, with `pop3_delete_after_days`, stored that many
  days ago; DELE, then QUIT, which is when the server deletes (a broken
  connection deletes nothing).
* Flags and moves are local: POP3 has neither, so they are never written
  back (`mailboxes.writeback` refuses POP3 accounts); the API says so
  (`server_sync` in the account and message representations).
"""

import hashlib
import json
import logging
from collections import Counter
from datetime import timedelta
from functools import partial
from typing import Any, cast

from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from accounts.models import EmailAccount
from accounts.services import account_credentials
from mailboxes.imap import FetchedMessage, FolderState, MailServerError, ProtocolViolation
from mailboxes.pop3 import Oversized, Pop3Session
from mailboxes.sync.config import server_config
from mailboxes.sync.engine import Progress, SyncReport, _Engine
from mailboxes.sync.pipeline import _BlobWriter, _Pipeline
from mailboxes.sync.storage import _Batch, _RematchPool
from messages.blobs import BlobStore
from messages.locks import account_sync_lock
from messages.models import Folder, FolderType, Message, Pop3Uidl, QuarantinedMessage

logger = logging.getLogger(__name__)

# The one UIDVALIDITY of a POP3 account's INBOX: its UIDs are ours, never renumbered.
# 0, which no IMAP server gives (RFC 3501: nz-number), so the rows of an account that
# was IMAP before never pass for POP3 ones. (It was 1: `_Pop3Engine.inbox` moves such rows.)
POP3_UIDVALIDITY = 0
_LEGACY_UIDVALIDITY = 1
NO_UIDL_NOTICE = (
    "The POP3 server does not support UIDL: messages are told apart by a hash of their whole "
    "content, and every sync downloads each message again."
)
# The folder's identity mode (`_Pop3Engine.identities`), kept in its state.
MODE_UIDL, MODE_DIGEST = "uidl", "digest"
_UIDL_MAX = 70  # Pop3Uidl.uidl; RFC 1939 allows 70 characters


def pop3_account_sync(*, account: EmailAccount, store: BlobStore, progress: Progress | None) -> SyncReport:
    """Sync a POP3 account (`account_sync` calls it). Raises what `account_sync` raises."""
    with account_sync_lock(account.id):
        engine = _Pop3Engine(account, store, progress)
        engine.progress("", 0, 0)
        credentials = account_credentials(account=account)
        try:
            with Pop3Session(server_config(account), credentials.username, credentials.password) as session:
                engine.run_pop3(session)
        except MailServerError:
            raise
        except OSError as exc:
            # The connection broke mid-sync: what was committed stays.
            raise MailServerError(f"connection to {account.hostname} failed: {exc}") from exc
        return engine.report


class _Pop3Fetcher:
    """The face of a POP3 session that `_Engine.prepare_batch` uses: RETR by
    our UIDs.

    The engine cuts batches by the LIST sizes; a server that lies about them
    could fill memory with batch-count times `max_literal`. So a message far
    over its LIST size (`_fits_listing`), or over `max_literal` (read to its
    end, never held), is not kept: it is quarantined unfetched with the
    reason (`refused`), and only the server holds it. What a batch holds
    thus stays within about twice its byte budget."""

    def __init__(self, session: Pop3Session, numbers: dict[int, int], sizes: dict[int, int]) -> None:
        self.session = session
        self.numbers = numbers  # uid -> message number in this session
        self.sizes = sizes  # message number -> LIST size
        self.uids = {number: uid for uid, number in numbers.items()}
        self.refused: dict[int, str] = {}  # uid -> why its message was not kept

    def fetch_full(self, uids: list[int]) -> dict[int, FetchedMessage]:
        fetched: dict[int, FetchedMessage] = {}
        for number, raw in self.session.retrieve([self.numbers[uid] for uid in uids]):
            if raw is None:
                continue
            uid = self.uids[number]
            listed = self.sizes[number]
            if isinstance(raw, Oversized) or not _fits_listing(len(raw), listed):
                size = raw.size if isinstance(raw, Oversized) else len(raw)
                self.refused[uid] = (
                    f"the server sent {size} bytes for a message it listed as {listed} bytes; not kept"
                )
                raw = None
            fetched[uid] = FetchedMessage(
                uid=uid,
                flags=(),
                internal_date=None,
                size=listed if raw is None else len(raw),
                modseq=None,
                raw=raw,
            )
        return fetched

    def uids_in(self, uids: list[int]) -> set[int]:
        # Message numbers hold for the whole session (RFC 1939): a message
        # the server did not return is still there, and is quarantined.
        return set(uids)


class _Pop3Engine(_Engine):
    def __init__(self, account: EmailAccount, store: BlobStore, progress: Progress | None) -> None:
        super().__init__(account, store, progress)
        self.uidls: dict[int, str] = {}  # uid -> unique id, for the rows
        self.fetcher: _Pop3Fetcher | None = None
        self.new_epoch = False  # this sync dropped the unique-id mapping (`inbox`, `map_uids`)

    # POP3 has no flags: a row taken over from an IMAP past keeps its read and flag state.
    rematch_fields = ("imap_uid", "uidvalidity", "modseq", "pop3_uidl")

    def pop3_uidl(self, uid: int) -> str:
        return self.uidls.get(uid, "")

    def run_pop3(self, session: Pop3Session) -> None:
        folder, state = self.inbox()
        sizes = session.listing()
        identities, mode = self.identities(session, sizes, state.get("mode"))
        numbers = self.map_uids(folder, identities, mode)  # uid -> message number
        with self.scope():
            folder.refresh_from_db(fields=["uidnext", "sync_token"])
        cursor = folder.uidnext or 1
        metas = [
            FetchedMessage(uid=uid, flags=(), internal_date=None, size=sizes[number], modseq=None)
            for uid, number in sorted(numbers.items())
            if uid >= cursor
        ]
        self.uidls = {uid: identities[number] for uid, number in numbers.items() if uid >= cursor}
        # As `_Engine.run`: inline inside an outer transaction (tests that roll back).
        threaded = not connection.in_atomic_block
        budget = 2 * self.batch_bytes
        with (
            _BlobWriter(self.store, self.tenant_id, threaded=threaded, max_bytes=budget) as self.blobs,
            _Pipeline(threaded=threaded, max_bytes=budget) as self.pipeline,
        ):
            if metas:
                self.progress(folder.name, 0, len(metas))
                fetcher = self.fetcher = _Pop3Fetcher(session, numbers, sizes)
                # Rows an IMAP past left (another UIDVALIDITY) are taken by content or
                # Message-ID rather than stored twice.
                self.store_new(fetcher, folder, metas, self.rematch_pool(folder), total=len(metas))
            # Every UID given so far is handled, unless over quota.
            next_uid = None if self.quota.exceeded else int(_state(folder.sync_token).get("next") or cursor)
            folder_state = FolderState(POP3_UIDVALIDITY, next_uid, len(sizes), None)
            self.pipeline.submit(partial(self.finish_folder, folder, folder_state))
        # Left the block: every batch is committed (or the error raised).
        self.report.folders = 1
        marked = self.delete_stored(session, folder, numbers, identities, sizes)
        if marked:
            session.commit()  # QUIT: the server deletes now, or raises and deletes nothing
            self.report.deleted_on_server = len(marked)
        else:
            session.close()  # nothing to commit; QUIT's answer would change nothing

    def prepare_message(
        self, batch: _Batch, folder: Folder, item: FetchedMessage, rematch: _RematchPool
    ) -> None:
        reason = self.fetcher.refused.pop(item.uid, None) if self.fetcher is not None else None
        if reason is not None:
            item.raw = None
            batch.quarantine(self, folder, item, None, reason)
            return
        super().prepare_message(batch, folder, item, rematch)

    def rematch_pool(self, folder: Folder) -> _RematchPool:
        """Rows of an IMAP past (`_Engine.rematch_pool`); in a new epoch also
        the POP3 rows no unique id names any more (the same mailbox under a
        new host name, a server that gained UIDL): a message listed again is
        given its new UID in its old row, not stored twice."""
        pool = super().rematch_pool(folder)
        if not self.new_epoch:
            return pool
        with self.scope():
            mapped = Pop3Uidl.objects.filter(folder=folder, uid=OuterRef("imap_uid"))
            rows = (
                Message.objects.filter(folder=folder, uidvalidity=POP3_UIDVALIDITY)
                .exclude(Exists(mapped))
                .values_list("id", "content_hash", "message_id")
            )
            for row_id, content_hash, message_id in rows.iterator(chunk_size=5000):
                pool.add(row_id, content_hash, message_id)
        return pool

    # The folder and the identities -----------------------------------------------

    def endpoint(self) -> str:
        """What names the server's mailbox: another one may reuse its unique ids."""
        account = self.account
        parts = [account.protocol, account.hostname.strip().lower().rstrip("."), str(account.port)]
        return hashlib.sha256("\0".join([*parts, account.username]).encode()).hexdigest()[:32]

    def inbox(self) -> tuple[Folder, dict[str, Any]]:
        """The INBOX and its POP3 state. The unique ids of another mailbox (the
        account now names another protocol, host, port or user) or of another
        protocol (an IMAP past) name nothing here: their `Pop3Uidl` rows go and
        a new UID epoch starts past every UID given (the messages stay)."""
        with self.scope(), transaction.atomic():
            folder, _ = Folder.objects.get_or_create(
                tenant_id=self.tenant_id,
                account=self.account,
                name="INBOX",
                defaults={"type": FolderType.INBOX, "uidvalidity": POP3_UIDVALIDITY},
            )
            folder = Folder.objects.select_for_update().get(id=folder.id)
            legacy = folder.sync_token.strip().isdigit()
            state = _state(folder.sync_token)
            if legacy and folder.uidvalidity == _LEGACY_UIDVALIDITY:
                # Stored by POP3 under its former UIDVALIDITY (1): the same UIDs under 0.
                Message.objects.filter(
                    folder=folder, uidvalidity=_LEGACY_UIDVALIDITY, imap_uid__isnull=False
                ).exclude(pop3_uidl="").update(uidvalidity=POP3_UIDVALIDITY)
                QuarantinedMessage.objects.filter(folder=folder, uidvalidity=_LEGACY_UIDVALIDITY).update(
                    uidvalidity=POP3_UIDVALIDITY
                )
                folder.uidvalidity = POP3_UIDVALIDITY
                folder.save(update_fields=["uidvalidity", "updated_at"])
            endpoint = self.endpoint()
            other_protocol = folder.uidvalidity != POP3_UIDVALIDITY
            other_mailbox = bool(state.get("endpoint")) and state["endpoint"] != endpoint
            if other_protocol or other_mailbox:
                self.new_epoch = True
                logger.info(
                    "account %s: a new POP3 epoch (%s)",
                    self.account.id,
                    "was another protocol's" if other_protocol else "another mailbox",
                )
                Pop3Uidl.objects.filter(folder=folder).delete()
                state = {"next": self.first_free_uid(folder, state)}
                if other_protocol:
                    # Its rows are not POP3's UIDs: the rematch pool takes them or they go.
                    folder.uidvalidity, folder.uidnext, folder.highestmodseq = POP3_UIDVALIDITY, None, None
            if state.get("endpoint") != endpoint:
                state["endpoint"] = endpoint
            folder.sync_token = json.dumps(state)
            folder.save(update_fields=["uidvalidity", "uidnext", "highestmodseq", "sync_token", "updated_at"])
        return folder, state

    def first_free_uid(self, folder: Folder, state: dict[str, Any]) -> int:
        """Past every UID ever given here under POP3's UIDVALIDITY."""
        stored = [
            model.objects.filter(folder=folder, uidvalidity=POP3_UIDVALIDITY)
            .order_by("-imap_uid")
            .values_list("imap_uid", flat=True)
            .first()
            for model in (Message, QuarantinedMessage)
        ]
        return max([int(state.get("next") or 1), *((uid or 0) + 1 for uid in stored)])

    def identities(
        self, session: Pop3Session, sizes: dict[int, int], mode: str | None
    ) -> tuple[dict[int, str], str]:
        """{message number: unique id} for every listed message, and the mode.
        A server that gave UIDL (or says it has it) and now refuses it is a
        temporary failure, never a switch to made-up identities (under which
        every message would look new)."""
        uidls = session.uidl()
        if uidls is None:
            if mode == MODE_UIDL or "UIDL" in session.capabilities:
                raise MailServerError(
                    f"{self.account.hostname} refused UIDL, which it gave before: tried again later"
                )
            self.report.notice = NO_UIDL_NOTICE
            return self.made_up_identities(session, sizes), MODE_DIGEST
        if set(uidls) != set(sizes):
            raise ProtocolViolation(f"{self.account.hostname}: UIDL and LIST name different messages")
        identities: dict[int, str] = {}
        seen: set[str] = set()
        for number in sorted(uidls):
            uidl = uidls[number]
            if len(uidl) > _UIDL_MAX:  # RFC 1939 allows 70; a longer one by its hash
                uidl = "#" + hashlib.sha256(uidl.encode("latin-1")).hexdigest()
            if uidl in seen:
                raise ProtocolViolation(f"{self.account.hostname}: UIDL gives two messages the same id")
            seen.add(uidl)
            identities[number] = uidl
        return identities, MODE_UIDL

    def made_up_identities(self, session: Pop3Session, sizes: dict[int, int]) -> dict[int, str]:
        """Without UIDL only the whole message tells it from another (two with
        one header differ in their body): the hash of each RETR, one message
        in memory at a time; "#n" for the n-th byte-identical copy."""
        digests: dict[int, str] = {}
        for number, raw in session.retrieve(sorted(sizes)):
            if raw is None:
                raise MailServerError(f"{self.account.hostname} refused RETR {number}: tried again later")
            # One over max_literal is quarantined when fetched; its size stands for its content.
            digests[number] = _content_digest(b"%d" % raw.size if isinstance(raw, Oversized) else raw)
        counts: Counter[str] = Counter()
        identities: dict[int, str] = {}
        for number in sorted(digests):
            digest = digests[number]
            counts[digest] += 1
            identities[number] = digest if counts[digest] == 1 else f"{digest}#{counts[digest]}"
        return identities

    def map_uids(self, folder: Folder, identities: dict[int, str], mode: str) -> dict[int, int]:
        """{uid: message number}: each unique id's UID, new ones given in
        message order past every UID given before (the state's "next"),
        committed before any download. A row whose unique id the server did
        not list is kept through one more listing (a server that forgot it
        for one session finds it again), and goes when the next full listing
        lacks it too. The identity mode is kept: a change of mode is a new epoch."""
        with self.scope(), transaction.atomic():
            locked = Folder.objects.select_for_update().get(id=folder.id)
            state = _state(locked.sync_token)
            if state.get("mode") not in (None, mode):
                self.new_epoch = True
                Pop3Uidl.objects.filter(folder=folder).delete()
                state["missing"] = []
            known: dict[str, int] = dict(Pop3Uidl.objects.filter(folder=folder).values_list("uidl", "uid"))
            listed = set(identities.values())
            unlisted = [uidl for uidl in known if uidl not in listed]
            missing_before = set(state.get("missing") or ())
            gone = [uidl for uidl in unlisted if uidl in missing_before]
            for start in range(0, len(gone), 5000):
                Pop3Uidl.objects.filter(folder=folder, uidl__in=gone[start : start + 5000]).delete()
            next_uid = max(
                [int(state.get("next") or 0), locked.uidnext or 1, *(uid + 1 for uid in known.values())]
            )
            new: list[Pop3Uidl] = []
            for number in sorted(identities):
                uidl = identities[number]
                if uidl not in known:
                    known[uidl] = next_uid
                    new.append(Pop3Uidl(tenant_id=self.tenant_id, folder=folder, uidl=uidl, uid=next_uid))
                    next_uid += 1
            Pop3Uidl.objects.bulk_create(new, batch_size=5000)
            state.update(next=next_uid, mode=mode, missing=[u for u in unlisted if u not in missing_before])
            token = json.dumps(state)
            Folder.objects.filter(id=folder.id).update(sync_token=token, updated_at=timezone.now())
        return {known[uidl]: number for number, uidl in identities.items()}

    # Deleting on the server --------------------------------------------------------

    def delete_stored(
        self,
        session: Pop3Session,
        folder: Folder,
        numbers: dict[int, int],
        identities: dict[int, str],
        sizes: dict[int, int],
    ) -> list[int]:
        """DELE the messages safely stored here, when the account says so;
        the message numbers marked. QUIT (`commit`) deletes them.

        Only a message whose UID is below the cursor and has a stored row
        that is this message: a `Message` whose `pop3_uidl` is this unique id,
        or a quarantined source, of a size that agrees with the LIST size
        (a mapping gone wrong never deletes mail not stored). With
        `pop3_delete_after_days`, only rows stored that many days ago."""
        if self.account.pop3_leave_on_server:
            return []
        with self.scope():
            cursor = Folder.objects.filter(id=folder.id).values_list("uidnext", flat=True).get() or 1
            candidates = [uid for uid in numbers if uid < cursor]
            days = self.account.pop3_delete_after_days
            before = timezone.now() - timedelta(days=days) if days else None
            safe: set[int] = set()
            for chunk in _chunks(sorted(candidates), 5000):
                messages = Message.objects.filter(
                    folder=folder, uidvalidity=POP3_UIDVALIDITY, imap_uid__in=chunk
                ).values_list("imap_uid", "pop3_uidl", "size_bytes", "created_at")
                for uid, uidl, size, created_at in messages:
                    number = numbers[cast(int, uid)]  # imap_uid__in: never NULL here
                    if (
                        uidl == identities[number]
                        and _sizes_agree(size, sizes[number])
                        and (before is None or created_at <= before)
                    ):
                        safe.add(cast(int, uid))
                # Quarantined with its source; without it (over the size limit) only the server has it.
                quarantined = QuarantinedMessage.objects.filter(
                    folder=folder, uidvalidity=POP3_UIDVALIDITY, imap_uid__in=chunk
                ).exclude(raw_blob_key="")
                for uid, size, created_at in quarantined.values_list("imap_uid", "size_bytes", "created_at"):
                    if _sizes_agree(size, sizes[numbers[uid]]) and (before is None or created_at <= before):
                        safe.add(uid)
        wanted = sorted(numbers[uid] for uid in safe)
        if not wanted:
            return []
        refused = set(session.delete(wanted))
        if refused:
            logger.warning(
                "account %s: the server refused to delete %s messages", self.account.id, len(refused)
            )
        return [number for number in wanted if number not in refused]


def _state(token: str) -> dict[str, Any]:
    """A POP3 INBOX's state (`Folder.sync_token`): {"next": the next UID to
    give, "endpoint": whose mailbox, "mode": "uidl" or "digest", "missing":
    unique ids the last listing lacked}. Once only the next UID, as digits."""
    token = token.strip()
    if not token:
        return {}
    if token.isdigit():
        return {"next": int(token)}
    try:
        state = json.loads(token)
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def _fits_listing(received: int, listed: int) -> bool:
    """A message may differ from its LIST size (line ends counted as LF),
    never be far above it."""
    return received <= 2 * listed + 64 * 1024


def _sizes_agree(stored: int, listed: int) -> bool:
    """A stored message is the listed one only if their sizes agree: equal, or
    as far apart as a server counting bare LF line ends could make them."""
    return abs(stored - listed) <= listed // 16 + 64


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _content_digest(raw: bytes) -> str:
    """'~' and the SHA-256 of a whole message (56 hex digits: room for '#n')."""
    return "~" + hashlib.sha256(raw).hexdigest()[:56]
