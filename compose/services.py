"""Writes of the compose API: drafts, their uploads, sending and cancelling.

Every function runs inside the request's tenant transaction and takes the
draft locked (`selectors.access_draft(lock=True)`) when it changes one.
Tasks are queued by name when the transaction commits:
`compose.tasks.save_draft_copy` after a draft's content changes or it is
deleted (the copy in the server's Drafts folder follows; a deleted draft's
row goes once its copy has), `compose.tasks.send` when an item is queued.

Decisions (see also `compose/models.py`):

- The HTML body is sanitised on the way in with the reading sanitiser
  (`messages.sanitize.sanitize_html`) and stored as it returns it. Remote
  images the user wrote are kept (`allow_remote_images=True`); the quoted
  HTML of a reply or forward, built from a received message, is sanitised
  as a read is (remote images left out: loading them would tell the
  original sender when the user opened the draft).
- A body given alone (`text_body` or `html_body`, not empty) empties the
  other, on create as on update: a reply's or forward's quote pre-filled in
  both would otherwise go out in the other part without the user's words.
- Uploads belong to a draft, at most COMPOSE_MAX_ATTACHMENTS of them (a
  forward copies the first that many; empty files are allowed). `attachments` in a body is the list of the
  draft's uploads to keep; absent, all stay. A new draft has no uploads yet,
  so `attachments` on create must be empty.
- A forward copies the original's attachments that are not inline parts into
  the draft, referring to the same blobs; inline images of its HTML are not
  carried over.
- Editing a `failed`, `uncertain` or `cancelled` item makes it a `draft`
  again. Its Message-ID, fixed when it was first queued, stays with it for
  good, so a resend of an `uncertain` message can be recognised as the same.
- Queuing builds the MIME message once (its Date fixed then), stores its
  bytes in the blob store and the envelope in the item's `SendQueueItem`.
  An explicit resend of a `failed`/`uncertain` item builds it again with the
  same Message-ID and starts afresh: `attempts` back to 0 (a full retry
  budget, backoff from its start; the earlier count is in the audit entry,
  `previous_attempts`), the outcome of the last attempt (phase, error,
  per-recipient results, Sent copy) cleared and `next_attempt_at` reset.
- A `send_at` that has passed by the time the item is sent queues it at once.
- Draft creation and deletion are audited (`compose.draft.create`,
  `compose.draft.delete`), edits are not (a client saving as the user types
  would flood the log); every queuing and cancelling is
  (`compose.send.queued`, `compose.send.cancelled`). No bodies, no addresses.
"""

import logging
import mimetypes
import uuid
from collections.abc import Mapping
from functools import partial
from typing import IO, Any

from celery import current_app
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from rest_framework import status as http_status

from emailclient.core.exceptions import ApplicationError, Conflict, NotFound
from emailclient.core.models import Tenant
from emailclient.core.services import audit_log_record
from messages.blobs import BlobNotFound, default_store
from messages.models import Message
from messages.sanitize import sanitize_html
from messages.selectors import message_attachments

from .addresses import AddressError, header_text_check
from .mime import (
    OutgoingAttachment,
    OutgoingMessage,
    envelope_recipients,
    message_build,
    message_id_make,
    message_needs_smtputf8,
)
from .models import CANCELLABLE, EDITABLE, Draft, DraftAttachment, SendQueueItem, Status
from .outbox import ETA_HORIZON, send_request
from .outgoing import draft_message
from .replies import ReplyDraft, forward_build, reply_build
from .selectors import (
    access_own_account,
    access_own_message,
    draft_attachments,
    draft_attachments_bytes,
    draft_body_bytes,
    draft_upload_room,
    own_addresses,
)

logger = logging.getLogger(__name__)

SEND_TASK = "compose.tasks.send"
SAVE_DRAFT_COPY_TASK = "compose.tasks.save_draft_copy"

# Content a body may set; `account`, `attachments`, `in_reply_to` and
# `forward_of` are handled on their own.
CONTENT_FIELDS = ("to", "cc", "bcc", "reply_to", "subject", "text_body", "html_body", "reply_all", "send_at")
DEFAULT_CONTENT_TYPE = "application/octet-stream"

Actor = User


class PayloadTooLarge(ApplicationError):
    status_code = http_status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "too_large"


# --- helpers ---------------------------------------------------------------------------


def _queue_task(name: str, draft: Draft, **options: Any) -> None:
    """Queue the task once the transaction commits. A broker that refuses it
    does not turn the committed request into an error: it is logged, and the
    row says what is owed (the dispatcher, `compose.tasks.dispatch_due`,
    queues a send whose task is missing; the next edit, a Drafts copy)."""
    transaction.on_commit(
        partial(_send_task, name, [str(draft.tenant_id), str(draft.id)], options), robust=True
    )


def _attachments_known(draft: Draft, attachments: list[DraftAttachment]) -> None:
    """Let `draft.attachments.all()` answer with `attachments` (read already)
    instead of a query, as `prefetch_related` does."""
    known = draft.attachments.none()
    known._result_cache = list(attachments)
    setattr(known, "_prefetch_done", True)  # noqa: B010 - Django's own attribute, not in its stubs
    cache = getattr(draft, "_prefetched_objects_cache", None)
    if cache is None:
        cache = {}
        setattr(draft, "_prefetched_objects_cache", cache)  # noqa: B010
    cache["attachments"] = known


def _attachments_of(draft: Draft) -> list[DraftAttachment]:
    """The draft's attachments: those `_attachments_known` left on it (a
    draft created in this request), else read."""
    known = getattr(draft, "_prefetched_objects_cache", {}).get("attachments")
    return list(known) if known is not None else draft_attachments(draft=draft)


def _send_request(draft: Draft) -> None:
    """Once committed: the send of a draft due now (`compose.outbox.send_request`:
    no task of its own while one that drains its account is queued or
    running). A broker that refuses it is logged, as `_queue_task`'s."""
    try:
        send_request(tenant_id=draft.tenant_id, draft_id=draft.id, account_id=draft.account_id)
    except Exception:
        logger.exception("%s for draft %s not queued; left for a later pass", SEND_TASK, draft.id)


def _send_task(name: str, args: list[str], options: dict[str, Any]) -> None:
    try:
        current_app.send_task(name, args=args, **options)
    except Exception:
        logger.exception("%s for draft %s not queued; left for a later pass", name, args[1])


def _audit(draft: Draft, actor: Actor, action: str, changes: dict[str, Any], ip_address: str | None) -> None:
    audit_log_record(
        tenant=draft.tenant,
        actor=actor,
        action=action,
        object_type="draft",
        object_id=draft.id,
        changes=changes,
        ip_address=ip_address,
    )


def _editable(draft: Draft, doing: str) -> None:
    if draft.status not in EDITABLE:
        raise Conflict(f"The item is {draft.status}: it can no longer be {doing}.")


def _limit_text(limit: int) -> str:
    return f"{limit / (1024 * 1024):.0f} MB" if limit >= 1024 * 1024 else f"{limit} bytes"


def _check_limits(draft: Draft, *, attachments_bytes: int) -> None:
    """The recipients and size limits of a message (COMPOSE_MAX_RECIPIENTS,
    COMPOSE_MAX_MESSAGE_BYTES: bodies and attachments before encoding)."""
    errors: dict[str, list[str]] = {}
    count = len(draft.to) + len(draft.cc) + len(draft.bcc)
    if count > settings.COMPOSE_MAX_RECIPIENTS:
        errors["to"] = [f"At most {settings.COMPOSE_MAX_RECIPIENTS} recipients (to, cc and bcc together)."]
    limit = settings.COMPOSE_MAX_MESSAGE_BYTES
    if draft_body_bytes(draft=draft) + attachments_bytes > limit:
        errors["attachments"] = [f"The message is over the size limit of {_limit_text(limit)}."]
    if errors:
        raise ApplicationError("The message is over a limit.", fields=errors)


def _sanitised(html: str, *, allow_remote_images: bool) -> str:
    if not html:
        return ""
    return sanitize_html(html, allow_remote_images=allow_remote_images).html


def _sanitised_input(html: str) -> str:
    """The user's HTML body sanitised; a failure of the sanitiser is a 400
    on `html_body` rather than the body silently stored empty."""
    if not html:
        return ""
    try:
        return sanitize_html(html, allow_remote_images=True, raise_errors=True).html
    except Exception as exc:
        raise ApplicationError(
            "The HTML body could not be processed.",
            fields={"html_body": ["This HTML could not be sanitised; simplify it or send text."]},
        ) from exc


def _apply_content(draft: Draft, data: Mapping[str, Any]) -> bool:
    """Set the content fields `data` gives; whether any changed.

    A body given alone (with text in it) empties the other: the parts of a
    multipart/alternative must say the same thing, and the other body holds
    an older version (the quote a reply or forward starts with, or an
    earlier edit). Without HTML the message goes as text; without text the
    text part is made from the HTML when it is built."""
    changed = False
    for given, other in (("text_body", "html_body"), ("html_body", "text_body")):
        if data.get(given) and other not in data and getattr(draft, other):
            setattr(draft, other, "")
            changed = True
    for field in CONTENT_FIELDS:
        if field not in data:
            continue
        value = data[field]
        if field == "html_body":
            value = _sanitised_input(value)
        if getattr(draft, field) != value:
            setattr(draft, field, value)
            changed = True
    return changed


def _apply_reply(draft: Draft, built: ReplyDraft) -> None:
    """What a reply or forward starts with; the body's own fields then win
    (a body given alone drops the quote from the other: `_apply_content`)."""
    draft.to = list(built.to)
    draft.cc = list(built.cc)
    draft.subject = built.subject
    draft.in_reply_to_header = built.in_reply_to_header
    draft.references_header = built.references_header
    draft.text_body = built.quoted_text
    draft.html_body = _sanitised(built.quoted_html, allow_remote_images=False)


def _safe_filename(name: str) -> str:
    """A stored attachment's name as a header may carry it."""
    cleaned = "".join(" " if not ch.isprintable() else ch for ch in name).strip()
    return cleaned[:255] or "attachment"


def _forwarded_attachments(draft: Draft, original: Message) -> list[DraftAttachment]:
    """The original's attachments (not its inline parts), the first
    COMPOSE_MAX_ATTACHMENTS of them."""
    limit: int = settings.COMPOSE_MAX_ATTACHMENTS
    copies = [
        DraftAttachment(
            tenant_id=draft.tenant_id,
            draft=draft,
            filename=_safe_filename(attachment.filename),
            content_type=attachment.mime_type or DEFAULT_CONTENT_TYPE,
            size_bytes=attachment.size_bytes,
            blob_key=attachment.content_hash,
        )
        for attachment in message_attachments(message=original)
        if not attachment.is_inline and attachment.content_hash
    ]
    return copies[:limit]


# --- drafts ----------------------------------------------------------------------------


def draft_create(
    *,
    tenant: Tenant,
    user: Actor,
    data: Mapping[str, Any],
    ip_address: str | None = None,
    save_copy: bool = True,
) -> Draft:
    """A new draft from `data` (`DraftInputSerializer`'s). With `in_reply_to`
    or `forward_of` its recipients, subject, threading headers and quoted
    bodies are built from that message (`compose.replies`) where `data` does
    not give them. `save_copy=False` when it is queued at once (no Drafts copy)."""
    account = access_own_account(tenant=tenant, user=user, id=data["account"])
    if data.get("attachments"):
        raise NotFound(
            "Attachment not found.",
            fields={"attachments": ["A new draft has no uploads yet: upload them to the draft."]},
        )
    draft = Draft(tenant=tenant, user=user, account=account)
    forwarded: Message | None = None
    if data.get("in_reply_to"):
        original = access_own_message(tenant=tenant, user=user, id=data["in_reply_to"], field="in_reply_to")
        draft.in_reply_to = original
        _apply_reply(
            draft,
            reply_build(
                original=original,
                own_addresses=own_addresses(tenant=tenant, user=user),
                reply_all=bool(data.get("reply_all", False)),
            ),
        )
    elif data.get("forward_of"):
        forwarded = access_own_message(tenant=tenant, user=user, id=data["forward_of"], field="forward_of")
        draft.forward_of = forwarded
        _apply_reply(draft, forward_build(original=forwarded))
    _apply_content(draft, data)
    attachments = _forwarded_attachments(draft, forwarded) if forwarded is not None else []
    _check_limits(draft, attachments_bytes=sum(a.size_bytes for a in attachments))
    draft.save()
    DraftAttachment.objects.bulk_create(attachments)
    _attachments_known(draft, attachments)
    _audit(
        draft,
        user,
        "compose.draft.create",
        {"account": str(account.id), "reply": bool(draft.in_reply_to_id), "forward": bool(forwarded)},
        ip_address,
    )
    if save_copy:
        _queue_task(SAVE_DRAFT_COPY_TASK, draft)
    return draft


def draft_update(
    *, draft: Draft, user: Actor, data: Mapping[str, Any], ip_address: str | None = None
) -> Draft:
    """Change the fields `data` gives of a locked, editable draft; `version`
    goes up when anything changed, and the Drafts copy follows."""
    _editable(draft, "edited")
    for field in ("in_reply_to", "forward_of"):
        if field in data and data[field] != getattr(draft, f"{field}_id"):
            raise ApplicationError(
                "A reply or forward is chosen when the draft is created.",
                fields={field: ["Set when the draft is created; it cannot change."]},
            )
    changed = False
    if "account" in data and data["account"] != draft.account_id:
        draft.account = access_own_account(tenant=draft.tenant, user=user, id=data["account"])
        changed = True
    changed |= _apply_content(draft, data)
    if "attachments" in data:
        changed |= _attachments_keep(draft, set(data["attachments"]))
    _check_limits(draft, attachments_bytes=draft_attachments_bytes(draft=draft))
    if changed:
        _changed(draft)
    return draft


def _attachments_keep(draft: Draft, keep: set[uuid.UUID]) -> bool:
    """Remove the draft's uploads not in `keep`; every id must be one of them."""
    current = {a.id for a in draft_attachments(draft=draft)}
    unknown = keep - current
    if unknown:
        raise NotFound(
            "Attachment not found.",
            fields={"attachments": [f"Unknown attachment: {i}" for i in sorted(map(str, unknown))]},
        )
    dropped = current - keep
    if dropped:
        DraftAttachment.objects.filter(tenant_id=draft.tenant_id, draft=draft, id__in=dropped).delete()
    return bool(dropped)


def _changed(draft: Draft) -> None:
    """A content change: a new version, a draft again, its Drafts copy queued."""
    draft.version += 1
    draft.status = Status.DRAFT
    draft.save()
    _queue_task(SAVE_DRAFT_COPY_TASK, draft)


def draft_delete(*, draft: Draft, actor: Actor, ip_address: str | None = None) -> None:
    """Hide the draft at once; the task removes its server copy, then the row."""
    _editable(draft, "deleted")
    draft.is_deleted = True
    draft.save(update_fields=["is_deleted", "updated_at"])
    _audit(draft, actor, "compose.draft.delete", {"status": draft.status}, ip_address)
    _queue_task(SAVE_DRAFT_COPY_TASK, draft)


def draft_attachment_add(
    *,
    draft: Draft,
    filename: str,
    content_type: str,
    file: IO[bytes],
    size: int,
    ip_address: str | None = None,
) -> DraftAttachment:
    """Store an uploaded file (`size` bytes, as received) in the blob store
    and attach it to the locked draft. Over the message size limit with the
    draft's bodies and other attachments: 413, decided on `size` before the
    file is read, and read at most one byte past the room left, so a file
    longer than it said is refused too without being held whole."""
    _editable(draft, "edited")
    try:
        filename = header_text_check(filename, max_length=255)
    except AddressError as exc:
        raise ApplicationError("Invalid file name.", fields={"filename": [exc.message]}) from exc
    limit: int = settings.COMPOSE_MAX_ATTACHMENTS
    if DraftAttachment.objects.for_tenant(draft.tenant_id).filter(draft=draft).count() >= limit:
        raise ApplicationError(
            "Too many attachments.", fields={"file": [f"A message may have at most {limit} attachments."]}
        )
    room = draft_upload_room(draft=draft)
    if size > room:
        raise upload_too_large()
    data = file.read(room + 1)
    if len(data) > room:
        raise upload_too_large()
    key = default_store().put(draft.tenant_id, data)
    attachment = DraftAttachment.objects.create(
        tenant_id=draft.tenant_id,
        draft=draft,
        filename=filename or "attachment",
        content_type=_content_type(content_type, filename),
        size_bytes=len(data),
        blob_key=key,
    )
    _changed(draft)
    return attachment


def upload_too_large() -> PayloadTooLarge:
    """The 413 of an upload that would take the message over COMPOSE_MAX_MESSAGE_BYTES."""
    limit = settings.COMPOSE_MAX_MESSAGE_BYTES
    return PayloadTooLarge(
        f"The message would be over the size limit of {_limit_text(limit)}.",
        fields={"file": [f"The message may be at most {_limit_text(limit)} with its attachments."]},
    )


def _content_type(given: str, filename: str) -> str:
    """The upload's type if it is a plain `type/subtype`, else a guess from
    the name, else application/octet-stream."""
    value = (given or "").strip().lower()
    main, _, sub = value.partition("/")
    token = set("abcdefghijklmnopqrstuvwxyz0123456789!#$&^_.+-")
    if main and sub and len(value) <= 255 and set(main) <= token and set(sub) <= token:
        return value
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or DEFAULT_CONTENT_TYPE


def draft_attachment_remove(*, draft: Draft, attachment: DraftAttachment) -> None:
    _editable(draft, "edited")
    attachment.delete()
    _changed(draft)


# --- sending ---------------------------------------------------------------------------


def _send_checks(draft: Draft) -> None:
    account = draft.account
    if account.is_deleted or account.user_id != draft.user_id:
        raise ApplicationError("The sending account is gone.", fields={"account": ["Unknown account."]})
    if not account.is_enabled:
        raise ApplicationError(
            "The sending account is disabled.",
            fields={"account": ["The account is disabled; enable it to send from it."]},
        )
    if not account.smtp_hostname:
        raise ApplicationError(
            "The account has no SMTP server.",
            fields={"account": ["The account has no SMTP server; set one to send from it."]},
        )
    if not (draft.to or draft.cc or draft.bcc):
        raise ApplicationError("No recipient.", fields={"to": ["At least one recipient is needed."]})


def _outgoing(draft: Draft, attachments: list[DraftAttachment]) -> OutgoingMessage:
    store = default_store()
    files = []
    for attachment in attachments:
        try:
            data = store.get(draft.tenant_id, attachment.blob_key)
        except (BlobNotFound, ValueError) as exc:
            raise ApplicationError(
                "An attachment's file is missing; remove it and upload it again.",
                fields={"attachments": [f"Missing file: {attachment.filename}"]},
            ) from exc
        files.append(
            OutgoingAttachment(filename=attachment.filename, content_type=attachment.content_type, data=data)
        )
    try:
        return draft_message(draft, message_id=draft.message_id, files=files)
    except AddressError as exc:
        raise ApplicationError(
            "The account's address cannot be sent from.", fields={"account": [exc.message]}
        ) from exc


def draft_send(*, draft: Draft, actor: Actor, ip_address: str | None = None) -> Draft:
    """Queue the locked draft: freeze its MIME message (Message-ID fixed the
    first time), store it, record the envelope in its `SendQueueItem`, set it
    `queued` (or `scheduled` until `send_at`) and queue the send task when
    the transaction commits. A `failed` or `uncertain` item may be sent
    again this way (an explicit resend); anything not editable is a 409.

    A scheduled send gets a task with an ETA only when `send_at` is at most
    `ETA_HORIZON` (50 minutes) away: Celery's Redis broker hands an
    unacknowledged task (an ETA task waits unacknowledged in a worker) to
    another worker after its visibility timeout, an hour by default, and
    again each hour after. A later one is queued by the dispatcher
    (`compose.tasks.dispatch_due`, every minute) once it is due."""
    if draft.status not in EDITABLE:
        raise Conflict(f"The item is {draft.status}: it cannot be sent now.")
    _send_checks(draft)
    attachments = _attachments_of(draft)
    _check_limits(draft, attachments_bytes=sum(a.size_bytes for a in attachments))
    resend = bool(draft.message_id)
    if not draft.message_id:
        draft.message_id = message_id_make(draft.account.email_address.rpartition("@")[2])
    outgoing = _outgoing(draft, attachments)
    recipients = envelope_recipients(outgoing)
    smtputf8 = message_needs_smtputf8(outgoing)
    try:
        raw = message_build(outgoing, smtputf8=smtputf8)
    except AddressError as exc:
        raise ApplicationError(
            "The message cannot be built.", fields={"non_field_errors": [exc.message]}
        ) from exc
    key = default_store().put(draft.tenant_id, raw)

    now = timezone.now()
    scheduled = draft.send_at is not None and draft.send_at > now
    # A draft never queued (no Message-ID yet) has no outbox item: it gets
    # one, written once; a resend (failed, uncertain, cancelled) reuses its own.
    item = (
        SendQueueItem.objects.filter(tenant_id=draft.tenant_id, draft=draft).first() if resend else None
    ) or SendQueueItem(tenant_id=draft.tenant_id, draft=draft)
    previous_attempts = item.attempts
    item.attempts = 0
    item.account = draft.account
    item.message_id = draft.message_id
    item.raw_blob_key = key
    item.size_bytes = len(raw)
    item.envelope_from = outgoing.sender["address"]
    item.recipients = recipients
    item.next_attempt_at = draft.send_at if scheduled else None
    item.phase = ""
    item.error = ""
    item.recipient_results = {}
    item.sent_at = None
    item.sent_copy = ""
    item.save(force_insert=item._state.adding)
    draft.outbox = item
    # What the view answers with, without reading it back: the attachments
    # just read (as `prefetch_related` would leave them).
    _attachments_known(draft, attachments)

    draft.status = Status.SCHEDULED if scheduled else Status.QUEUED
    draft.save(update_fields=["message_id", "status", "updated_at"])
    _audit(
        draft,
        actor,
        "compose.send.queued",
        {
            "message_id": draft.message_id,
            "recipients": len(recipients),
            "size_bytes": len(raw),
            "send_at": draft.send_at.isoformat() if scheduled and draft.send_at else None,
            "resend": resend,
            "previous_attempts": previous_attempts,
        },
        ip_address,
    )
    if not scheduled:
        transaction.on_commit(partial(_send_request, draft), robust=True)
    elif draft.send_at is not None and draft.send_at <= now + ETA_HORIZON:
        _queue_task(SEND_TASK, draft, eta=draft.send_at)
    # else: compose.tasks.dispatch_due queues it once it is due (ETA_HORIZON).
    return draft


def draft_create_and_send(
    *, tenant: Tenant, user: Actor, data: Mapping[str, Any], ip_address: str | None = None
) -> Draft:
    """The one-shot send: a draft from `data`, queued in the same
    transaction (an error in either leaves nothing behind)."""
    draft = draft_create(tenant=tenant, user=user, data=data, ip_address=ip_address, save_copy=False)
    return draft_send(draft=draft, actor=user, ip_address=ip_address)


def draft_cancel(*, draft: Draft, actor: Actor, ip_address: str | None = None) -> Draft:
    """Stop a `scheduled` or `queued` send of the locked draft; one already
    being sent (or done) is a 409. The send task, taking the row lock after
    this, finds it `cancelled` and leaves it."""
    if draft.status not in CANCELLABLE:
        raise Conflict(f"The item is {draft.status}: only a scheduled or queued send can be cancelled.")
    previous = draft.status
    draft.status = Status.CANCELLED
    draft.save(update_fields=["status", "updated_at"])
    _audit(
        draft, actor, "compose.send.cancelled", {"status": {"old": previous, "new": draft.status}}, ip_address
    )
    return draft
