"""`Idempotency-Key` for the send endpoints.

A request with the header claims the key (unique per tenant, user and key,
`email_idempotency_keys`) together with a SHA-256 of what it asks: the
method, the endpoint and its item, and the body as canonical JSON. Then:

- a new key: the request runs, and its result (the item and the status code)
  is recorded with the key in the same transaction;
- the same key with the same request: the first result is answered again
  (the item as it is now, the first status code), nothing is queued twice;
- the same key with another request: 422.

Two identical requests at once: both INSERT the key; PostgreSQL makes the
second wait on the unique index until the first commits, and its INSERT then
fails (in a savepoint), so it reads the winner's committed row and answers
with its result. If the first fails instead (any error rolls the whole
request back, the key with it), the second goes ahead as the first.

Keys are kept 24 hours (`TTL`); a key seen again after that starts afresh,
and `idempotency_keys_purge()` deletes the expired ones (`compose.tasks.dispatch_due`
runs it for every tenant each minute).
"""

import datetime
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import status

from emailclient.core.exceptions import ApplicationError, Conflict
from emailclient.core.models import Tenant

from .models import Draft, IdempotencyKey

TTL = datetime.timedelta(hours=24)
HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


class IdempotencyKeyReused(ApplicationError):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    code = "idempotency_key_reused"


@dataclass(frozen=True)
class Replay:
    """The first result of a request made again with its key."""

    draft: Draft | None
    status_code: int


def key_check(value: str) -> str:
    """The header's value: 1 to 255 printable ASCII characters."""
    if not 0 < len(value) <= MAX_KEY_LENGTH or not (value.isascii() and value.isprintable()):
        raise ApplicationError(
            "Invalid Idempotency-Key.",
            fields={HEADER: [f"1 to {MAX_KEY_LENGTH} printable ASCII characters."]},
        )
    return value


def request_hash(*, method: str, endpoint: str, body: Any) -> str:
    """SHA-256 of the method, the endpoint (its name and item, the same with
    or without the slash and on either path form) and the body as canonical
    JSON (sorted keys, no spaces)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = f"{method.upper()}\n{endpoint}\n{canonical}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def idempotency_key_claim(
    *, tenant: Tenant, user: User, key: str, request_hash: str
) -> IdempotencyKey | Replay:
    """The claimed key (run the request, then `idempotency_key_record()`),
    or the first request's result to answer with again. 422 for the key
    with another request."""
    row = IdempotencyKey(tenant=tenant, user_id=user.pk, key=key, request_hash=request_hash)
    try:
        with transaction.atomic():
            row.save(force_insert=True)
        return row
    except IntegrityError:
        pass  # taken: by a committed request, or one that just committed while we waited
    existing = (
        IdempotencyKey.objects.for_tenant(tenant)
        .select_for_update(of=("self",))
        .select_related("draft")
        .get(user_id=user.pk, key=key)
    )
    if existing.created_at < timezone.now() - TTL:
        existing.request_hash = request_hash
        existing.draft = None
        existing.response_status = None
        existing.created_at = timezone.now()
        existing.save()
        return existing
    if existing.request_hash != request_hash:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used for a different request.",
            fields={HEADER: ["Already used with another body or endpoint; use a new key."]},
        )
    if existing.response_status is None:  # cannot be seen committed, but say so if it ever is
        raise Conflict("A request with this Idempotency-Key is in progress.")
    draft = existing.draft if existing.draft is not None and not existing.draft.is_deleted else None
    return Replay(draft=draft, status_code=existing.response_status)


def idempotency_key_record(*, row: IdempotencyKey, draft: Draft, status_code: int) -> None:
    row.draft = draft
    row.response_status = status_code
    row.save(update_fields=["draft", "response_status", "updated_at"])


def idempotency_keys_purge(*, tenant: Tenant) -> int:
    """Delete the tenant's keys older than `TTL`; how many."""
    expired = IdempotencyKey.objects.for_tenant(tenant).filter(created_at__lt=timezone.now() - TTL)
    deleted, _ = expired.delete()
    return deleted
