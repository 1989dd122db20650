"""The rows a sync writes, and how: message and attachment rows built
without model instances, inserted by COPY through a temporary table; the
folder's cursor; the pool of old rows a UIDVALIDITY change re-matches."""

import json
import logging
import operator
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, TypedDict, cast

from django.db import connection
from django.db.models import F, Model, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from mailboxes.imap import FetchedMessage
from messages.blobs import blob_key
from messages.models import Folder, Message, QuarantinedMessage
from messages.parsing import ParsedAttachment, ParsedMessage

if TYPE_CHECKING:
    from mailboxes.sync.engine import _Engine

logger = logging.getLogger(__name__)


class FlagFields(TypedDict):
    """A message's flag columns, as `flag_fields` gives them."""

    flags: list[str]
    is_read: bool
    is_flagged: bool
    is_draft: bool
    is_answered: bool


def flag_fields(flags: tuple[str, ...]) -> FlagFields:
    lowered = {f.lower() for f in flags}
    return {
        "flags": sorted(f[:128] for f in flags if f.lower() != "\\recent"),
        "is_read": "\\seen" in lowered,
        "is_flagged": "\\flagged" in lowered,
        "is_draft": "\\draft" in lowered,
        "is_answered": "\\answered" in lowered,
    }


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

    # The attributes read here and by `assign_threads` (annotations only:
    # no class attributes, no cost); `copy_rows` reads every column by name.
    id: uuid.UUID
    created_at: datetime

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)


class _MessageRow(_Row):
    """A row of `Message`, from `message_row`."""

    imap_uid: int
    uidvalidity: int | None
    message_id: str
    in_reply_to: str
    references: list[str]
    subject: str
    thread_id: uuid.UUID | None


class _AttachmentRow(_Row):
    """A row of `Attachment`, from `attachment_row`."""

    message_id: uuid.UUID


def message_row(
    tenant_id: uuid.UUID,
    account_id: uuid.UUID,
    folder: Folder,
    item: FetchedMessage,
    parsed: ParsedMessage,
    raw_key: str,
    *,
    size: int,
    pop3_uidl: str = "",
) -> _MessageRow:
    """The row of a new message: `item` as fetched, `parsed` from its raw
    `size` bytes, stored under `raw_key`; `pop3_uidl` its POP3 unique id."""
    now = timezone.now()
    return _MessageRow(
        id=uuid.uuid4(),
        created_at=now,
        updated_at=now,
        tenant_id=tenant_id,
        account_id=account_id,
        folder_id=folder.id,
        imap_uid=item.uid,
        uidvalidity=folder.uidvalidity,
        modseq=item.modseq,
        pop3_uidl=pop3_uidl,
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


def attachment_row(tenant_id: uuid.UUID, message: _MessageRow, part: ParsedAttachment) -> _AttachmentRow:
    return _AttachmentRow(
        id=uuid.uuid4(),
        created_at=message.created_at,
        updated_at=message.created_at,
        tenant_id=tenant_id,
        message_id=message.id,
        filename=part.filename,
        mime_type=part.mime_type,
        size_bytes=len(part.data),
        content_id=part.content_id,
        is_inline=part.is_inline,
        content_hash=part.sha256,
    )


def copy_rows(model: type[Model], rows: Sequence[_Row]) -> None:
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
    messages: list[_MessageRow] = field(default_factory=list)
    attachments: list[_AttachmentRow] = field(default_factory=list)
    rematched: list[Message] = field(default_factory=list)
    quarantined: list[QuarantinedMessage] = field(default_factory=list)
    blob_writes: list[Future[None] | None] = field(default_factory=list)
    size: int = 0  # bytes its rows hold in memory, roughly

    def quarantine(
        self, engine: "_Engine", folder: Folder, item: FetchedMessage, raw: bytes | None, reason: str
    ) -> None:
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
                # Set by the engine from the SELECT before any message is fetched.
                uidvalidity=cast(int, folder.uidvalidity),
                reason=reason[:1000],
                size_bytes=item.size,
                raw_blob_key=key,
            )
        )

    def drop_stored(self) -> None:
        """Leave out messages already stored under the same (UIDVALIDITY,
        UID): a replayed batch (after a crash between commit and report, or
        an interrupted writer) is a no-op, not an IntegrityError."""
        uids = [m.imap_uid for m in self.messages]
        if not uids:
            return
        validity = self.messages[0].uidvalidity
        stored = set(
            Message.objects.filter(
                folder_id=self.folder_id, uidvalidity=validity, imap_uid__in=uids
            ).values_list("imap_uid", flat=True)
        )
        if stored:
            kept = [m for m in self.messages if m.imap_uid not in stored]
            kept_ids = {m.id for m in kept}
            self.messages = kept
            self.attachments = [a for a in self.attachments if a.message_id in kept_ids]


class _RematchPool:
    """Old rows by content hash and by Message-ID; a row is taken once."""

    def __init__(self) -> None:
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
