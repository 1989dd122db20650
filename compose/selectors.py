"""Reads for the compose API.

Compose is personal: a user composes only from their own accounts (not
deleted, even a tenant admin), sees only their own drafts and outbox items,
and replies to or forwards only messages of their own accounts. Everything
else is a 404, the same answer as a missing row.
"""

import uuid
from collections.abc import Iterable

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import QuerySet, Sum

from accounts.models import EmailAccount
from emailclient.core.exceptions import NotFound
from emailclient.core.models import Tenant
from messages.models import FolderType, Message
from messages.parsing import message_id as normalised_message_id
from messages.selectors import SEARCH_ONLY_FIELDS

from .models import Draft, DraftAttachment


def own_accounts(*, tenant: Tenant, user: User) -> QuerySet[EmailAccount]:
    """The accounts `user` may send from: their own, not deleted."""
    return EmailAccount.objects.for_tenant(tenant).filter(user_id=user.pk, is_deleted=False)


def access_own_account(*, tenant: Tenant, user: User, id: uuid.UUID) -> EmailAccount:
    account = own_accounts(tenant=tenant, user=user).filter(id=id).first()
    if account is None:
        raise NotFound("Account not found.", fields={"account": ["Unknown account."]})
    return account


def own_addresses(*, tenant: Tenant, user: User) -> set[str]:
    """The addresses of the user's accounts, lower case: what a reply-all leaves out."""
    addresses = own_accounts(tenant=tenant, user=user).values_list("email_address", flat=True)
    return {address.lower() for address in addresses}


def access_own_message(*, tenant: Tenant, user: User, id: uuid.UUID, field: str) -> Message:
    """A stored message of one of the user's own accounts, to reply to or
    forward; anything else is a 404 naming `field`."""
    message = (
        Message.objects.for_tenant(tenant)
        .filter(id=id, is_deleted=False, account__in=own_accounts(tenant=tenant, user=user))
        .defer(*SEARCH_ONLY_FIELDS)
        .first()
    )
    if message is None:
        raise NotFound("Message not found.", fields={field: ["Unknown message."]})
    return message


def draft_list(
    *,
    tenant: Tenant,
    user: User,
    status: str | None = None,
    account_id: uuid.UUID | None = None,
) -> QuerySet[Draft]:
    """The user's drafts and outbox items (deleted ones gone), with their
    delivery record and attachments fetched along (two queries for a page:
    the rows with their outbox, then the attachments)."""
    drafts = (
        Draft.objects.for_tenant(tenant)
        .filter(user_id=user.pk, is_deleted=False)
        .select_related("outbox")
        .prefetch_related("attachments")
    )
    if status is not None:
        drafts = drafts.filter(status=status)
    if account_id is not None:
        drafts = drafts.filter(account_id=account_id)
    return drafts


def access_draft(*, tenant: Tenant, user: User, id: uuid.UUID, lock: bool = False) -> Draft:
    drafts = draft_list(tenant=tenant, user=user)
    if lock:
        drafts = drafts.select_for_update(of=("self",))
    draft = drafts.filter(id=id).first()
    if draft is None:
        raise NotFound("Draft not found.")
    return draft


def access_draft_attachment(*, draft: Draft, id: uuid.UUID) -> DraftAttachment:
    attachment = DraftAttachment.objects.for_tenant(draft.tenant_id).filter(draft=draft, id=id).first()
    if attachment is None:
        raise NotFound("Attachment not found.")
    return attachment


def draft_attachments(*, draft: Draft) -> list[DraftAttachment]:
    return list(DraftAttachment.objects.for_tenant(draft.tenant_id).filter(draft=draft))


def draft_attachments_bytes(*, draft: Draft) -> int:
    """The size of the draft's attachments together (0 for an unsaved draft)."""
    if draft._state.adding:
        return 0
    total = (
        DraftAttachment.objects.for_tenant(draft.tenant_id)
        .filter(draft=draft)
        .aggregate(total=Sum("size_bytes"))["total"]
    )
    return int(total or 0)


def draft_body_bytes(*, draft: Draft) -> int:
    return len(draft.text_body.encode()) + len(draft.html_body.encode())


def draft_upload_room(*, draft: Draft) -> int:
    """How many bytes one more attachment may have: COMPOSE_MAX_MESSAGE_BYTES
    less the draft's bodies and attachments."""
    used = draft_body_bytes(draft=draft) + draft_attachments_bytes(draft=draft)
    limit: int = settings.COMPOSE_MAX_MESSAGE_BYTES
    return max(0, limit - used)


def sent_messages(*, tenant: Tenant, drafts: Iterable[Draft]) -> dict[uuid.UUID, uuid.UUID]:
    """The stored copy in Sent of each sent draft that has one (synced back
    from the server): draft id -> message id. One query for any number of
    drafts, by (message_id, account) (`idx_messages_message_id`); none when
    no draft has been queued."""
    wanted: dict[tuple[str, uuid.UUID], uuid.UUID] = {}
    for draft in drafts:
        if draft.message_id:
            wanted[(normalised_message_id(draft.message_id), draft.account_id)] = draft.id
    if not wanted:
        return {}
    rows = (
        Message.objects.for_tenant(tenant)
        .filter(
            is_deleted=False,
            message_id__in={mid for mid, _ in wanted},
            account_id__in={account for _, account in wanted},
            folder__type=FolderType.SENT,
        )
        .order_by("received_at", "id")
        .values_list("id", "message_id", "account_id")
    )
    found: dict[uuid.UUID, uuid.UUID] = {}
    for message_pk, mid, account_id in rows:
        draft_id = wanted.get((mid, account_id))
        if draft_id is not None:
            found.setdefault(draft_id, message_pk)
    return found
