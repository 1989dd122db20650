"""Serving stored blobs (raw messages, attachments) to a browser safely.

Mail is hostile: its declared types and file names are whatever the sender
wrote. So a download carries `X-Content-Type-Options: nosniff`, a sandboxing
Content-Security-Policy, a type that is well formed or
`application/octet-stream`, a file name stripped of paths and control
characters, and it is shown inline only for types a browser cannot run
(never HTML, SVG, XML or anything scriptable).

Bytes are streamed from the blob store a megabyte at a time
(`BlobStore.open`): a 50 MB attachment is never whole in memory. The blob is
checked against its key before the first byte goes, so a damaged one is a
`500` with code `blob_damaged` (and its key in the log), not a download
that stops half way.

Inline images in a message's HTML are fetched by the browser itself, which
sends no bearer token: their URLs carry a signed token instead, bound to one
attachment, one tenant and one user, and valid for
`ATTACHMENT_URL_MAX_AGE_SECONDS` (default five minutes). Using one checks,
as a bearer request would, that the user is still active, still a member of
the still active tenant, has not changed their password since (the token
holds a short keyed hash of the password hash, as simplejwt's
`CHECK_REVOKE_TOKEN` does for JWTs), and may still see the attachment (its
message and account not deleted; a member's own accounts only). The token is in the
query string (an `<img>` can carry nothing else); the service's access log
leaves query strings out (`deploy/gunicorn.conf.py`), and the proxy in front
must do the same (README, "Tenancy and security").
"""

import hmac
import re
import unicodedata
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.http import StreamingHttpResponse
from django.utils.crypto import salted_hmac
from django.utils.http import content_disposition_header
from rest_framework import status

from emailclient.core.exceptions import ApplicationError, NotFound
from emailclient.core.models import Tenant, TenantMembership
from emailclient.core.tenancy import tenant_scope

from .blobs import BlobDamaged, BlobNotFound, BlobReader, BlobStore
from .models import Attachment
from .selectors import access_attachment

# v2: bound to a user; the one-hour tokens of before (tenant and attachment
# only) are refused.
TOKEN_SALT = "messages.attachment-download.v2"  # noqa: S105 - a namespace, not a secret


class BlobUnavailable(ApplicationError):
    """A stored blob is damaged: a server fault, not the client's (the
    operator repairs it with `manage.py repairblobs`)."""

    status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
    code = "blob_damaged"


_MIME = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
# What may be shown inline: passive formats only.
INLINE_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/bmp",
        "application/pdf",
        "text/plain",
        "audio/mpeg",
        "audio/ogg",
        "video/mp4",
        "video/webm",
    }
)


def safe_mime_type(value: str) -> str:
    value = (value or "").strip().lower()
    return value if _MIME.match(value) else "application/octet-stream"


def safe_filename(value: str, *, default: str) -> str:
    """No directories, no control or bidi characters, at most 200 characters."""
    value = unicodedata.normalize("NFC", value or "")
    value = value.replace("\\", "/").rsplit("/", 1)[-1]
    value = "".join(c for c in value if unicodedata.category(c)[0] != "C")
    value = value.strip(" .")
    return value[:200] or default


def blob_open(store: BlobStore, *, tenant_id: uuid.UUID, key: str, missing: str) -> BlobReader:
    """The blob, checked and open for streaming; `NotFound` (with the
    `missing` message) when it is not stored, `BlobUnavailable` when it is
    damaged (the store logs its key)."""
    try:
        return store.open(tenant_id, key)
    except BlobDamaged as exc:  # before BlobNotFound, its base
        raise BlobUnavailable(
            "The stored content is damaged; the operator has been told and can repair it."
        ) from exc
    except (BlobNotFound, ValueError) as exc:
        raise NotFound(missing) from exc


def blob_response(
    blob: BlobReader, *, filename: str, mime_type: str, inline: bool = False
) -> StreamingHttpResponse:
    mime_type = safe_mime_type(mime_type)
    show_inline = inline and mime_type in INLINE_TYPES
    response = StreamingHttpResponse(
        blob, content_type=mime_type if mime_type != "text/plain" else "text/plain; charset=utf-8"
    )
    response["Content-Length"] = str(blob.size)
    disposition = content_disposition_header(not show_inline, filename)
    if disposition:
        response["Content-Disposition"] = disposition
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cache-Control"] = "private, no-store"
    response["Referrer-Policy"] = "no-referrer"
    return response


def password_fingerprint(password_hash: str) -> str:
    """16 hex digits of a keyed hash of the user's stored password hash: a
    password change changes it, and it tells a reader of the token nothing."""
    return salted_hmac(TOKEN_SALT, password_hash or "", algorithm="sha256").hexdigest()[:16]


def attachment_token(*, tenant_id: uuid.UUID, user, attachment_id: uuid.UUID) -> str:
    """The signed token of `user`'s download URL for an attachment."""
    payload = {
        "t": str(tenant_id),
        "u": str(user.pk),
        "a": str(attachment_id),
        "p": password_fingerprint(user.password),
    }
    return signing.dumps(payload, salt=TOKEN_SALT)


@dataclass(frozen=True)
class AttachmentTokenRef:
    tenant_id: uuid.UUID
    user_id: str  # the user's primary key, as text
    attachment_id: uuid.UUID
    password: str  # password_fingerprint() of the user's password hash when it was signed


def attachment_token_read(token: str) -> AttachmentTokenRef | None:
    """What a valid, unexpired token names; None otherwise."""
    try:
        value = signing.loads(token, salt=TOKEN_SALT, max_age=settings.ATTACHMENT_URL_MAX_AGE_SECONDS)
        return AttachmentTokenRef(
            uuid.UUID(value["t"]), str(value["u"]), uuid.UUID(value["a"]), str(value["p"])
        )
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return None


def attachment_by_token(*, token: str, id: uuid.UUID) -> Attachment:
    """The attachment `id` for the bearer of a signed download `token`, with
    every check of a request with the user's own bearer token: the tenant
    active, the user active and a member, their password unchanged since
    the token was signed, the attachment one that member may see. Anything
    else is the same `NotFound`."""
    ref = attachment_token_read(token)
    if ref is None or ref.attachment_id != id:
        raise NotFound("Attachment not found.")
    with tenant_scope(ref.tenant_id):
        tenant = Tenant.objects.filter(id=ref.tenant_id, is_active=True).first()
        membership = (
            TenantMembership.objects.filter(
                tenant_id=ref.tenant_id, user_id=ref.user_id, user__is_active=True
            )
            .select_related("user")
            .first()
        )
        if (
            tenant is None
            or membership is None
            or not hmac.compare_digest(password_fingerprint(membership.user.password), ref.password)
        ):
            raise NotFound("Attachment not found.")
        membership.tenant = tenant
        return access_attachment(tenant=tenant, membership=membership, id=id)
