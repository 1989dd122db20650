"""Re-parsing stored messages from their raw sources (`manage.py reparse`).

The sync parses a message once, when it arrives, and never fetches it
again. When the parser learns something new (lenient Message-IDs, synthetic
ids, a text body for HTML-only mail), the mail stored before keeps what the
old parser made of it. `messages_reparse()` reads each stored message's raw
source from blob storage, parses it with the sync's parser and limits, and
brings these fields up to date, no others:

* `message_id`, `message_id_synthetic`, `in_reply_to`, `references`: a
  message whose ids changed goes through `assign_threads()`, as if it had
  just arrived, so a reply and the parent it could not name before meet in
  one thread. The message's current thread is kept: its new id is first
  entered in the thread index under its current thread (unless the id is
  already there), the subject fallback is not run again (where the sync
  placed it by subject stays), and when its ids lead to another thread the
  two are merged, never split. Threads only merge, as in the sync.
* `text_body` and `snippet`: a changed body clears `search_vector`, and the
  tenant's pending rows are indexed at the end (`search_index_pending`).

Subjects, addresses, dates, `html_body`, attachments, flags, folders and
read state are left alone. Nothing is fetched from a mail server.

Each tenant is walked by primary key (keyset, batches of `batch_size`);
a batch's rows are read in one short transaction, their sources read and
parsed outside any, and written in a second one (`bulk_update`, one per set
of changed fields). The threading step of an account takes its sync lock,
as the sync's own threading does; an account whose sync keeps it for more
than `lock_wait` seconds is skipped for the rest of the run (its messages
with changed ids are counted as `busy`), and a later run finishes them. A
message whose source is missing or unreadable, or that the parser refuses,
is counted and left as it is. Running it again changes nothing.
"""

import logging
import time
import uuid
import zlib
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from django.db import models
from django.utils import timezone

from emailclient.core.models import Tenant
from emailclient.core.pagination import rows_past
from emailclient.core.tenancy import tenant_scope

from .blobs import BlobNotFound, BlobStore, default_store
from .indexing import search_index_pending
from .locks import SyncAlreadyRunning, account_sync_lock
from .models import Message, ThreadRef
from .parsing import Limits, MessageRejected, parse_limits, parse_message
from .threads import assign_threads

logger = logging.getLogger(__name__)

BATCH_SIZE = 500
LOCK_WAIT_SECONDS = 30.0

ID_FIELDS = ("message_id", "message_id_synthetic", "in_reply_to", "references")
TEXT_FIELDS = ("text_body", "snippet")
_READ_FIELDS = ("id", "received_at", "account_id", "raw_blob_key", "thread_id", *ID_FIELDS, *TEXT_FIELDS)


@dataclass
class ReparseReport:
    tenant: str = ""
    examined: int = 0
    changed: int = 0
    missing_source: int = 0
    unparseable: int = 0
    rethreaded: int = 0  # ids changed: through assign_threads
    text_changed: int = 0  # text body changed: search vector cleared
    indexed: int = 0
    busy: int = 0  # ids changed, but the account's sync held its lock: left for a later run
    dry_run: bool = False

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def __str__(self) -> str:
        change = "would change" if self.dry_run else "changed"
        text = (
            f"{self.tenant}: {self.examined} examined, {self.changed} {change} "
            f"({self.rethreaded} with new ids, {self.text_changed} with a new text body), "
            f"{self.missing_source} missing source, {self.unparseable} unparseable"
        )
        if not self.dry_run:
            text += f", {self.indexed} indexed"
        if self.busy:
            text += f"; {self.busy} left as they were, their account was syncing: run again"
        return text


@dataclass
class _Parsed:
    """The re-parsed values of one message's fields."""

    message_id: str
    message_id_synthetic: bool
    in_reply_to: str
    references: list[str]
    text_body: str
    snippet: str


class _ThreadView:
    """What `assign_threads` reads of a message and sets on it. The subject is
    left empty on purpose: a stored message keeps the place the subject
    fallback gave it when it arrived."""

    def __init__(self, message: Message):
        self.message_id = message.message_id
        self.in_reply_to = message.in_reply_to
        self.references = message.references
        self.subject = ""
        self.thread_id = message.thread_id


def messages_reparse(
    *,
    tenant: Tenant,
    account_id: uuid.UUID | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    store: BlobStore | None = None,
    lock_wait: float = LOCK_WAIT_SECONDS,
) -> ReparseReport:
    """Bring the parser-derived fields of `tenant`'s stored messages (one
    account's with `account_id`) up to date from their raw sources. With
    `dry_run`, count what would change and write nothing."""
    if batch_size < 1:
        raise ValueError("the batch size is at least 1")
    store = store or default_store()
    limits = parse_limits()
    report = ReparseReport(tenant=tenant.slug, dry_run=dry_run)
    busy_accounts: set[uuid.UUID] = set()
    # Newest first, as the tenant's (or the account's) newest-first index
    # holds the rows that are not deleted: each batch is one range of it.
    keys = ("received_at", "id")
    fields: list[models.Field[Any, Any]] = [
        Message._meta.get_field("received_at"),
        Message._meta.get_field("id"),
    ]
    after: tuple | None = None
    while True:
        with tenant_scope(tenant.id):
            rows = Message.objects.for_tenant(tenant).filter(is_deleted=False)
            if account_id is not None:
                rows = rows.filter(account_id=account_id)
            if after is not None:
                rows = rows.filter(rows_past(keys, after, fields, downwards=True))
            batch = list(rows.order_by("-received_at", "-id").only(*_READ_FIELDS)[:batch_size])
        if not batch:
            break
        after = (batch[-1].received_at, batch[-1].id)
        report.examined += len(batch)
        changed = _reparse_batch(tenant.id, batch, store, limits, report)
        if changed and not dry_run:
            _write_batch(tenant.id, changed, report, busy_accounts, lock_wait)
        elif dry_run:
            _count(changed, report)
        if len(batch) < batch_size:
            break
    if not dry_run:
        report.indexed = search_index_pending(tenant_id=tenant.id)
    return report


def _reparse_batch(
    tenant_id: uuid.UUID, batch: list[Message], store: BlobStore, limits: Limits, report: ReparseReport
) -> list[tuple[Message, set[str]]]:
    """Parse each message's source (no transaction open); set the new values
    on the changed ones. Returns them with the names of their changed fields."""
    changed = []
    for message in batch:
        parsed = _parse(tenant_id, message, store, limits, report)
        if parsed is None:
            continue
        fields = {
            name for name in (*ID_FIELDS, *TEXT_FIELDS) if getattr(message, name) != getattr(parsed, name)
        }
        if fields:
            for name in fields:
                setattr(message, name, getattr(parsed, name))
            changed.append((message, fields))
    return changed


def _parse(
    tenant_id: uuid.UUID, message: Message, store: BlobStore, limits: Limits, report: ReparseReport
) -> _Parsed | None:
    try:
        raw = store.get(tenant_id, message.raw_blob_key)
    except (BlobNotFound, ValueError, OSError, EOFError, zlib.error) as exc:
        # ValueError: no key (or not a key); OSError includes gzip.BadGzipFile.
        logger.warning("message %s: raw source unreadable: %s", message.id, type(exc).__name__)
        report.missing_source += 1
        return None
    try:
        parsed = parse_message(raw, limits)
    except MessageRejected as exc:
        logger.warning("message %s: the parser refuses its source: %s", message.id, exc.reason)
        report.unparseable += 1
        return None
    except Exception:  # a parser bug must not stop the run
        logger.exception("message %s: the parser failed", message.id)
        report.unparseable += 1
        return None
    return _Parsed(
        message_id=parsed.message_id,
        message_id_synthetic=parsed.message_id_synthetic,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
        text_body=parsed.text_body,
        snippet=parsed.snippet,
    )


def _count(changed: list[tuple[Message, set[str]]], report: ReparseReport) -> None:
    for _, fields in changed:
        report.changed += 1
        report.rethreaded += bool(fields.intersection(ID_FIELDS))
        report.text_changed += "text_body" in fields


def _write_batch(
    tenant_id: uuid.UUID,
    changed: list[tuple[Message, set[str]]],
    report: ReparseReport,
    busy_accounts: set[uuid.UUID],
    lock_wait: float,
) -> None:
    """One transaction: thread the messages whose ids changed (per account,
    under its sync lock), then write every changed message's new fields."""
    rethread: dict[uuid.UUID, list[Message]] = defaultdict(list)
    for message, fields in changed:
        if fields.intersection(ID_FIELDS):
            rethread[message.account_id].append(message)
    with ExitStack() as locks:
        for account_id in sorted(rethread):
            if account_id in busy_accounts or not _lock_account(locks, account_id, lock_wait):
                busy_accounts.add(account_id)
                report.busy += len(rethread.pop(account_id))
        now = timezone.now()
        with tenant_scope(tenant_id):
            gone: set[uuid.UUID] = set()
            for account_id, messages in rethread.items():
                gone |= _thread(tenant_id, account_id, messages)
            writable = [
                (message, fields)
                for message, fields in changed
                if not (fields.intersection(ID_FIELDS) and message.account_id in busy_accounts)
                and message.id not in gone
            ]
            groups: dict[frozenset[str], list[Message]] = defaultdict(list)
            for message, fields in writable:
                fields = set(fields)
                if fields.intersection(ID_FIELDS):
                    fields.add("thread_id")  # set by _thread()
                if "text_body" in fields:
                    message.search_vector = None
                    fields.add("search_vector")
                message.updated_at = now
                groups[frozenset(fields)].append(message)
            for names, messages in groups.items():
                Message.objects.bulk_update(messages, [*sorted(names), "updated_at"])
    _count(writable, report)


def _lock_account(locks: ExitStack, account_id: uuid.UUID, wait: float) -> bool:
    """Take the account's sync lock for the rest of the batch, waiting up to
    `wait` seconds for a running sync; False when it is still running."""
    deadline = time.monotonic() + wait
    while True:
        try:
            locks.enter_context(account_sync_lock(account_id))
        except SyncAlreadyRunning:
            if time.monotonic() >= deadline:
                logger.warning(
                    "account %s is syncing: its messages with new ids are left for later", account_id
                )
                return False
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
        else:
            return True


def _thread(tenant_id: uuid.UUID, account_id: uuid.UUID, messages: list[Message]) -> set[uuid.UUID]:
    """Thread stored messages whose ids changed, keeping each in its thread:
    inside the transaction, under the account's sync lock. Returns the ids
    of those deleted since they were read (left out)."""
    # The thread ids as they are now (a sync may have merged threads since
    # the batch was read); a message deleted since is left out.
    current = dict(
        Message.objects.filter(id__in=[m.id for m in messages], is_deleted=False).values_list(
            "id", "thread_id"
        )
    )
    gone = {m.id for m in messages if m.id not in current}
    messages = [m for m in messages if m.id in current]
    for message in messages:
        message.thread_id = current[message.id]
    # Each message's own id names its current thread, unless the index already
    # has it (a reply named it): then that thread and this one merge below.
    _seed_index(tenant_id, account_id, [(m.message_id, m.thread_id) for m in messages if m.thread_id])
    views = [_ThreadView(m) for m in messages]
    # assign_threads reads and sets only what a _ThreadView has, but is annotated with Message.
    assign_threads(tenant_id=tenant_id, account_id=account_id, messages=views)
    threads: list[uuid.UUID] = []
    for view in views:
        if view.thread_id is None:
            raise AssertionError("assign_threads gives every message a thread")
        threads.append(view.thread_id)
    # Where the ids led elsewhere, the old thread joins the new one.
    merged: dict[uuid.UUID, uuid.UUID] = {}

    def find(thread: uuid.UUID) -> uuid.UUID:
        while thread in merged:
            thread = merged[thread]
        return thread

    for message, thread in zip(messages, threads, strict=True):
        old, new = message.thread_id, find(thread)
        if old is not None and find(old) != new:
            old = find(old)
            Message.objects.filter(account_id=account_id, thread_id=old).update(thread_id=new)
            ThreadRef.objects.filter(account_id=account_id, thread_id=old).update(thread_id=new)
            merged[old] = new
    for message, thread in zip(messages, threads, strict=True):
        message.thread_id = find(thread)
    return gone


def _seed_index(tenant_id: uuid.UUID, account_id: uuid.UUID, rows: list[tuple[str, uuid.UUID]]) -> None:
    """Index each id under its thread, unless it is indexed already."""
    seeds = dict(rows)
    ThreadRef.objects.bulk_create(
        [
            ThreadRef(tenant_id=tenant_id, account_id=account_id, message_id=i, thread_id=t)
            for i, t in seeds.items()
        ],
        ignore_conflicts=True,
    )
