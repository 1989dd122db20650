"""Serving stored blobs (raw messages, attachments) to a browser safely.

Mail is hostile: its declared types and file names are whatever the sender
wrote. So a download carries `X-Content-Type-Options: nosniff`, a sandboxing
Content-Security-Policy, a type that is well formed or
`application/octet-stream`, a file name stripped of paths and control
characters, and it is shown inline only for types a browser cannot run
(never HTML, SVG, XML or anything scriptable).

Inline images in a message's HTML are fetched by the browser itself, which
sends no bearer token: their URLs carry a signed token instead, bound to one
attachment of one tenant and valid for `TOKEN_MAX_AGE` seconds.
"""

import io
import re
import unicodedata
import uuid

from django.core import signing
from django.http import FileResponse

TOKEN_SALT = "messages.attachment-download"  # noqa: S105 - a namespace, not a secret
TOKEN_MAX_AGE = 3600

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


def blob_response(data: bytes, *, filename: str, mime_type: str, inline: bool = False) -> FileResponse:
    mime_type = safe_mime_type(mime_type)
    show_inline = inline and mime_type in INLINE_TYPES
    response = FileResponse(
        io.BytesIO(data),
        as_attachment=not show_inline,
        filename=filename,
        content_type=mime_type if mime_type != "text/plain" else "text/plain; charset=utf-8",
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cache-Control"] = "private, no-store"
    return response


def attachment_token(*, tenant_id: uuid.UUID, attachment_id: uuid.UUID) -> str:
    return signing.dumps({"t": str(tenant_id), "a": str(attachment_id)}, salt=TOKEN_SALT)


def attachment_token_read(token: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(tenant id, attachment id) of a valid, unexpired token; None otherwise."""
    try:
        value = signing.loads(token, salt=TOKEN_SALT, max_age=TOKEN_MAX_AGE)
        return uuid.UUID(value["t"]), uuid.UUID(value["a"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return None
