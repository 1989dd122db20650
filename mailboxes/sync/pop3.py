"""POP3 accounts: the server's mailbox into the account's INBOX, through the
same pipeline as IMAP mail.

POP3 has one mailbox, no flags, no folders and no stable message numbers:
only each message's unique id (UIDL, RFC 1939) lasts from one session to
the next. So each unique id is given a UID of our own, once, in
`Pop3Uidl` (UNIQUE per folder both ways), committed before anything is
downloaded; from there on the message is what the IMAP engine handles: a
UID in a folder of UIDVALIDITY 1 whose cursor (`Folder.uidnext`) says every
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
* A server without UIDL: each message's identity is made up from its header
  (TOP n 0; RETR where TOP is refused): "~" and a hash of the header block,
  which holds its Message-ID, Date and Received trace, so two deliveries
  differ and a message keeps its identity from one session to the next; a
  second identical header gets "#2" and so on. The account's sync status
  says so (`SyncReport.notice`). Each sync reads every header again.
* Mail deleted on the server stays here: POP3 users delete on the server
  as a matter of course (or have it done: `pop3_leave_on_server` off), and
  expect the copy they downloaded to stay. Its `Pop3Uidl` row goes, as it no
  longer names anything; its `Message` keeps the unique id in `pop3_uidl`.
* Deleting on the server (`EmailAccount.pop3_leave_on_server` off): after
  the download's last commit, only messages below the cursor (committed with
  their blobs fsynced, `_Engine.commit_batch`), not quarantined unfetched
  (over the size limit: only the server has them), and, with
  `pop3_delete_after_days`, first seen that many days ago; DELE, then QUIT,
  which is when the server deletes (a broken connection deletes nothing).
* Flags and moves are local: POP3 has neither, so they are never written
  back (`mailboxes.writeback` refuses POP3 accounts); the API says so
  (`server_sync` in the account and message representations).
"""

import hashlib
import logging
from collections import Counter
from datetime import timedelta
from functools import partial

from django.db import connection, transaction
from django.utils import timezone

from accounts.models import EmailAccount
from accounts.services import account_credentials
from mailboxes.imap import FetchedMessage, FolderState, MailServerError, ProtocolViolation
from mailboxes.pop3 import Pop3Session
from mailboxes.sync.config import server_config
from mailboxes.sync.engine import Progress, SyncReport, _Engine
from mailboxes.sync.pipeline import _BlobWriter, _Pipeline
from mailboxes.sync.storage import _RematchPool
from messages.blobs import BlobStore
from messages.locks import account_sync_lock
from messages.models import Folder, FolderType, Pop3Uidl, QuarantinedMessage

logger = logging.getLogger(__name__)

# The one UIDVALIDITY of a POP3 account's INBOX: its UIDs are ours, never renumbered.
POP3_UIDVALIDITY = 1
NO_UIDL_NOTICE = (
    "The POP3 server does not support UIDL: messages are told apart by their Message-ID and a hash of "
    "their header, and every sync reads each message's header again."
)
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
    our UIDs."""

    def __init__(self, session: Pop3Session, numbers: dict[int, int]) -> None:
        self.session = session
        self.numbers = numbers  # uid -> message number in this session
        self.uids = {number: uid for uid, number in numbers.items()}

    def fetch_full(self, uids: list[int]) -> dict[int, FetchedMessage]:
        fetched: dict[int, FetchedMessage] = {}
        for number, raw in self.session.retrieve([self.numbers[uid] for uid in uids]):
            if raw is not None:
                uid = self.uids[number]
                fetched[uid] = FetchedMessage(
                    uid=uid, flags=(), internal_date=None, size=len(raw), modseq=None, raw=raw
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

    def pop3_uidl(self, uid: int) -> str:
        return self.uidls.get(uid, "")

    def run_pop3(self, session: Pop3Session) -> None:
        folder = self.inbox()
        sizes = session.listing()
        identities = self.identities(session, sizes)
        numbers = self.map_uids(folder, identities)  # uid -> message number
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
                fetcher = _Pop3Fetcher(session, numbers)
                self.store_new(fetcher, folder, metas, _RematchPool(), total=len(metas))
            # Every UID given so far is handled, unless over quota.
            next_uid = None if self.quota.exceeded else int(folder.sync_token or cursor)
            state = FolderState(POP3_UIDVALIDITY, next_uid, len(sizes), None)
            self.pipeline.submit(partial(self.finish_folder, folder, state))
        # Left the block: every batch is committed (or the error raised).
        self.report.folders = 1
        marked = self.delete_stored(session, folder, numbers)
        if marked:
            session.commit()  # QUIT: the server deletes now, or raises and deletes nothing
            self.report.deleted_on_server = len(marked)
        else:
            session.close()  # nothing to commit; QUIT's answer would change nothing

    # The folder and the identities -----------------------------------------------

    def inbox(self) -> Folder:
        with self.scope(), transaction.atomic():
            folder, _ = Folder.objects.get_or_create(
                tenant_id=self.tenant_id,
                account=self.account,
                name="INBOX",
                defaults={"type": FolderType.INBOX, "uidvalidity": POP3_UIDVALIDITY},
            )
            if folder.uidvalidity != POP3_UIDVALIDITY:
                # Was an IMAP account's: its rows are not POP3's UIDs (they go at the end).
                folder.uidvalidity, folder.uidnext, folder.highestmodseq = POP3_UIDVALIDITY, None, None
                folder.save(update_fields=["uidvalidity", "uidnext", "highestmodseq", "updated_at"])
        return folder

    def identities(self, session: Pop3Session, sizes: dict[int, int]) -> dict[int, str]:
        """{message number: unique id} for every listed message."""
        uidls = session.uidl()
        if uidls is None:
            self.report.notice = NO_UIDL_NOTICE
            return self.made_up_identities(session, sizes)
        if set(uidls) != set(sizes):
            raise ProtocolViolation(f"{self.account.hostname}: UIDL and LIST name different messages")
        identities: dict[int, str] = {}
        seen: set[str] = set()
        for number in sorted(uidls):
            uidl = uidls[number]
            if len(uidl) > _UIDL_MAX:  # RFC 1939 allows 70; a longer one by its hash
                uidl = "#" + hashlib.sha256(uidl.encode()).hexdigest()
            if uidl in seen:
                raise ProtocolViolation(f"{self.account.hostname}: UIDL gives two messages the same id")
            seen.add(uidl)
            identities[number] = uidl
        return identities

    def made_up_identities(self, session: Pop3Session, sizes: dict[int, int]) -> dict[int, str]:
        digests: dict[int, str] = {}
        refused: list[int] = []
        for number, header in session.headers(sorted(sizes)):
            if header is None:
                refused.append(number)
            else:
                digests[number] = _header_digest(header)
        for number, raw in session.retrieve(refused):  # no TOP: the whole message
            digests[number] = _header_digest((raw or b"").split(b"\r\n\r\n", 1)[0])
        counts: Counter[str] = Counter()
        identities: dict[int, str] = {}
        for number in sorted(digests):
            digest = digests[number]
            counts[digest] += 1
            identities[number] = digest if counts[digest] == 1 else f"{digest}#{counts[digest]}"
        return identities

    def map_uids(self, folder: Folder, identities: dict[int, str]) -> dict[int, int]:
        """{uid: message number}: each unique id's UID, new ones given in
        message order past every UID given before (`Folder.sync_token`),
        committed before any download. Rows of unique ids the server no
        longer lists go."""
        with self.scope(), transaction.atomic():
            locked = Folder.objects.select_for_update().get(id=folder.id)
            known: dict[str, int] = dict(Pop3Uidl.objects.filter(folder=folder).values_list("uidl", "uid"))
            listed = set(identities.values())
            gone = [uidl for uidl in known if uidl not in listed]
            for start in range(0, len(gone), 5000):
                Pop3Uidl.objects.filter(folder=folder, uidl__in=gone[start : start + 5000]).delete()
            next_uid = max(
                [int(locked.sync_token or 0), locked.uidnext or 1, *(uid + 1 for uid in known.values())]
            )
            new: list[Pop3Uidl] = []
            for number in sorted(identities):
                uidl = identities[number]
                if uidl not in known:
                    known[uidl] = next_uid
                    new.append(Pop3Uidl(tenant_id=self.tenant_id, folder=folder, uidl=uidl, uid=next_uid))
                    next_uid += 1
            Pop3Uidl.objects.bulk_create(new, batch_size=5000)
            Folder.objects.filter(id=folder.id).update(sync_token=str(next_uid), updated_at=timezone.now())
        return {known[uidl]: number for number, uidl in identities.items()}

    # Deleting on the server --------------------------------------------------------

    def delete_stored(self, session: Pop3Session, folder: Folder, numbers: dict[int, int]) -> list[int]:
        """DELE the messages safely stored here, when the account says so;
        the message numbers marked. QUIT (`commit`) deletes them."""
        if self.account.pop3_leave_on_server:
            return []
        with self.scope():
            cursor = Folder.objects.filter(id=folder.id).values_list("uidnext", flat=True).get() or 1
            stored = Pop3Uidl.objects.filter(folder=folder, uid__lt=cursor)
            days = self.account.pop3_delete_after_days
            if days:
                stored = stored.filter(created_at__lte=timezone.now() - timedelta(days=days))
            uids = set(stored.values_list("uid", flat=True))
            # Quarantined without its source (over the size limit): only the server has it.
            uids -= set(
                QuarantinedMessage.objects.filter(
                    folder=folder, uidvalidity=POP3_UIDVALIDITY, raw_blob_key=""
                ).values_list("imap_uid", flat=True)
            )
        wanted = sorted(numbers[uid] for uid in uids if uid in numbers)
        if not wanted:
            return []
        refused = set(session.delete(wanted))
        if refused:
            logger.warning(
                "account %s: the server refused to delete %s messages", self.account.id, len(refused)
            )
        return [number for number in wanted if number not in refused]


def _header_digest(header: bytes) -> str:
    """'~' and the SHA-256 of a header block, whose Message-ID, Date and
    Received lines tell one delivery from another (56 hex digits: room for '#n')."""
    return "~" + hashlib.sha256(header.rstrip(b"\r\n")).hexdigest()[:56]
