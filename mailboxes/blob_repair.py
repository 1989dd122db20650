"""Finding damaged blobs and fetching them again from the mail server.

Blob storage (`messages.blobs`) checks every read against the key, so a
blob truncated by a power loss, garbled on disk or gone is refused, never
served. `blobs_repair()` finds them: it reads every blob a tenant's rows
refer to (a megabyte at a time, nothing kept), then, for each one damaged
or missing, the messages, attachments and quarantine entries that name it,
and fetches those messages again over IMAP by folder, UIDVALIDITY and UID:
a raw source is stored again when its SHA-256 is the key, an attachment
when a part of the message parsed again has that hash. The blob is written
whole with `put()` (which replaces a damaged file) before the next one.

A blob no row on an IMAP server can give back (the message expunged, the
folder's UIDVALIDITY changed, a draft's upload, a POP3 account) is reported
with its key, as is an account the server refused. No transaction is open
while a server is read.
"""

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from imapclient.exceptions import IMAPClientError

from accounts.models import EmailAccount, Protocol
from accounts.services import account_credentials
from emailclient.core.tenancy import tenant_scope
from mailboxes.imap import ImapSession, MailServerError
from mailboxes.sync.config import server_config
from messages.blob_gc import blob_references
from messages.blobs import BlobStore, blob_key
from messages.models import Attachment, Message, QuarantinedMessage
from messages.parsing import Limits, MessageRejected, parse_limits, parse_message

logger = logging.getLogger(__name__)

_FETCH_BATCH = 20  # messages per FETCH: each may be up to MAIL_MAX_MESSAGE_BYTES
_IN_BATCH = 1000  # keys per `IN (...)`


@dataclass
class BlobRepairReport:
    checked: int = 0
    damaged: dict[str, str] = field(default_factory=dict)  # key: what is wrong
    repaired: list[str] = field(default_factory=list)
    unrepairable: dict[str, str] = field(default_factory=dict)  # key: why
    dry_run: bool = False

    def __str__(self) -> str:
        if self.dry_run:
            return f"{self.checked} blobs checked, {len(self.damaged)} damaged or missing"
        return (
            f"{self.checked} blobs checked, {len(self.damaged)} damaged or missing, "
            f"{len(self.repaired)} repaired, {len(self.unrepairable)} not repairable"
        )


@dataclass(frozen=True)
class _Source:
    """A message on a server whose raw source is the blob (`part` false) or
    holds it as an attachment (`part` true)."""

    account_id: uuid.UUID
    folder: str
    uidvalidity: int | None
    uid: int | None
    part: bool


def blobs_repair(
    *,
    store: BlobStore,
    tenant_id: uuid.UUID,
    dry_run: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> BlobRepairReport:
    """Find the tenant's damaged or missing blobs and fetch them again."""
    report = BlobRepairReport(dry_run=dry_run)
    with tenant_scope(tenant_id):
        for key in blob_references(tenant_id):
            report.checked += 1
            problem = store.check(tenant_id, key)
            if problem is not None:
                report.damaged[key] = problem
                log(f"blob {key}: {problem}")
    if dry_run or not report.damaged:
        return report
    sources = _sources(tenant_id, report.damaged)
    by_account: dict[uuid.UUID, dict[str, list[tuple[str, _Source]]]] = defaultdict(lambda: defaultdict(list))
    for key in report.damaged:
        for source in sources.get(key, []):
            by_account[source.account_id][source.folder].append((key, source))
    repaired: set[str] = set()
    failures: dict[str, str] = {}
    for account_id, folders in by_account.items():
        try:
            _repair_account(store, tenant_id, account_id, folders, repaired, log)
        except (MailServerError, OSError, IMAPClientError) as exc:
            logger.warning("blob repair: account %s: %s", account_id, exc)
            for wanted in folders.values():
                for key, _source in wanted:
                    failures.setdefault(key, f"the mail server failed: {exc}")
    for key in report.damaged:
        if key in repaired:
            report.repaired.append(key)
        else:
            why = failures.get(key) or (
                "no message on a mail server holds it any more"
                if sources.get(key)
                else "no mail refers to it"
            )
            report.unrepairable[key] = why
            logger.error("blob %s of tenant %s is damaged and could not be repaired: %s", key, tenant_id, why)
    return report


def _chunks(keys: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for key in keys:
        batch.append(key)
        if len(batch) == _IN_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _sources(tenant_id: uuid.UUID, keys: Iterable[str]) -> dict[str, list[_Source]]:
    """For each key, the IMAP messages that can give it back."""
    found: dict[str, list[_Source]] = defaultdict(list)
    imap = [Protocol.IMAP]
    with tenant_scope(tenant_id):
        for batch in _chunks(keys):
            for row in Message.objects.filter(
                tenant_id=tenant_id,
                raw_blob_key__in=batch,
                account__protocol__in=imap,
                account__is_deleted=False,
            ).values_list("raw_blob_key", "account_id", "folder__name", "uidvalidity", "imap_uid"):
                found[row[0]].append(_Source(row[1], row[2], row[3], row[4], part=False))
            for row in QuarantinedMessage.objects.filter(
                tenant_id=tenant_id,
                raw_blob_key__in=batch,
                account__protocol__in=imap,
                account__is_deleted=False,
            ).values_list("raw_blob_key", "account_id", "folder__name", "uidvalidity", "imap_uid"):
                found[row[0]].append(_Source(row[1], row[2], row[3], row[4], part=False))
            for row in Attachment.objects.filter(
                tenant_id=tenant_id,
                content_hash__in=batch,
                message__account__protocol__in=imap,
                message__account__is_deleted=False,
            ).values_list(
                "content_hash",
                "message__account_id",
                "message__folder__name",
                "message__uidvalidity",
                "message__imap_uid",
            ):
                found[row[0]].append(_Source(row[1], row[2], row[3], row[4], part=True))
    return found


def _repair_account(
    store: BlobStore,
    tenant_id: uuid.UUID,
    account_id: uuid.UUID,
    folders: dict[str, list[tuple[str, _Source]]],
    repaired: set[str],
    log: Callable[[str], None],
) -> None:
    with tenant_scope(tenant_id):
        account = EmailAccount.objects.get(id=account_id)
    credentials = account_credentials(account=account)
    limits = parse_limits()
    with ImapSession(server_config(account), credentials.username, credentials.password) as session:
        for folder, wanted in folders.items():
            if all(key in repaired for key, _source in wanted):
                continue
            state = session.select(folder)
            by_uid: dict[int, list[tuple[str, bool]]] = defaultdict(list)
            for key, source in wanted:
                if source.uid is not None and source.uidvalidity == state.uidvalidity:
                    by_uid[source.uid].append((key, source.part))
            uids = sorted(by_uid)
            for start in range(0, len(uids), _FETCH_BATCH):
                for uid, item in session.fetch_full(uids[start : start + _FETCH_BATCH]).items():
                    if item.raw is None:
                        continue
                    for key, part in by_uid[uid]:
                        if key in repaired:
                            continue
                        data = _blob_from(item.raw, key, part=part, limits=limits)
                        if data is not None:
                            store.put(tenant_id, data, key)
                            repaired.add(key)
                            log(
                                f"blob {key}: fetched again from {account.email_address}, {folder}, UID {uid}"
                            )


def _blob_from(raw: bytes, key: str, *, part: bool, limits: Limits) -> bytes | None:
    """The bytes of `key` in the message `raw`: itself, or one of its parts."""
    if not part:
        return raw if blob_key(raw) == key else None
    try:
        parsed = parse_message(raw, limits)
    except MessageRejected:
        return None
    return next((a.data for a in parsed.attachments if a.sha256 == key), None)
