"""Threading by Message-ID, In-Reply-To and References.

Each account keeps an index from every Message-ID it has seen, including the
ids of parents it has only heard of through References (JWZ's ghost
parents), to a thread id (`ThreadRef`). A new message joins the thread of any
id it names or is named by; when it names ids of several threads, they are
merged. Because the index works on sets, not on a parent tree, reference
loops cannot trap it, and a reply that arrives before its parent already
holds the parent's id, so the parent joins the reply's thread when it comes.

Subject fallback, only for a message with no In-Reply-To and no References:
a "Re:"-style subject joins the latest thread started with the same base
subject.
"""

import hashlib
import re
import uuid
from collections.abc import Sequence
from typing import Protocol, cast

from django.db import connection

from .models import Message, ThreadRef

_REPLY_PREFIX = re.compile(
    r"^\s*(?:(?:re|fwd?|aw|wg|sv|vs|antw|rif|tr|odp|vl)\s*(?:\[\d+\])?\s*[:\uff1a]\s*|\[[^\]]{1,40}\]\s*)+",
    re.IGNORECASE,
)


class Threadable(Protocol):
    """What `assign_threads()` reads of a message and sets on it: a stored
    `Message`, a row the sync is about to copy in, a view `reparse` makes."""

    message_id: str
    in_reply_to: str
    references: list[str]
    subject: str
    thread_id: uuid.UUID | None


def base_subject(subject: str) -> tuple[str, bool]:
    """The subject without reply/forward prefixes and list tags, lower-cased,
    and whether it had a prefix."""
    stripped = _REPLY_PREFIX.sub("", subject or "")
    had_prefix = stripped != (subject or "") and bool(
        re.match(r"^\s*(?:re|fwd?|aw|wg|sv|vs|antw)", subject or "", re.I)
    )
    return " ".join(stripped.lower().split()), had_prefix


# A subject's key in the thread index, beside the Message-IDs. It has a
# space: a Message-ID as the parser reads it never has one, so no header a
# sender writes can name a subject's key and join (or merge) its threads.
SUBJECT_KEY_PREFIX = "subject: "


def _subject_key(base: str) -> str:
    return SUBJECT_KEY_PREFIX + hashlib.sha1(base.encode(), usedforsecurity=False).hexdigest()


class _Threads:
    """Union-find over thread ids."""

    def __init__(self):
        self.parent: dict[uuid.UUID, uuid.UUID] = {}

    def find(self, thread: uuid.UUID) -> uuid.UUID:
        root = thread
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(thread, thread) != root:
            self.parent[thread], thread = root, self.parent[thread]
        return root

    def union(self, threads: list[uuid.UUID]) -> uuid.UUID:
        roots = sorted({self.find(t) for t in threads}, key=str)
        keep = roots[0]
        for other in roots[1:]:
            self.parent[other] = keep
        return keep


def assign_threads(*, tenant_id: uuid.UUID, account_id: uuid.UUID, messages: Sequence[Threadable]) -> None:
    """Set `thread_id` on `messages` (not yet saved) and update the index and
    the stored messages of merged threads. Call inside the batch's
    transaction, under the account's sync lock."""
    wanted: set[str] = set()
    for message in messages:
        wanted.update(_ids_of(message))
        if not message.in_reply_to and not message.references:
            base, _ = base_subject(message.subject)
            if base:
                wanted.add(_subject_key(base))
    known: dict[str, uuid.UUID] = dict(
        ThreadRef.objects.filter(account_id=account_id, message_id__in=wanted).values_list(
            "message_id", "thread_id"
        )
    )
    threads = _Threads()
    index: dict[str, uuid.UUID] = dict(known)
    subject_roots: dict[str, uuid.UUID] = {}

    for message in messages:
        ids = _ids_of(message)
        found = [index[i] for i in ids if i in index]
        if not found and not message.in_reply_to and not message.references:
            base, is_reply = base_subject(message.subject)
            if base and is_reply and _subject_key(base) in index:
                found = [index[_subject_key(base)]]
        thread = threads.union(found) if found else uuid.uuid4()
        for i in ids:
            index[i] = thread
        message.thread_id = thread
        if not message.in_reply_to and not message.references:
            base, _ = base_subject(message.subject)
            if base:
                subject_roots[_subject_key(base)] = thread

    for message in messages:  # each got a thread above
        message.thread_id = threads.find(cast(uuid.UUID, message.thread_id))

    merged = {old: threads.find(old) for old in set(known.values()) if threads.find(old) != old}
    if merged:
        for old, new in merged.items():
            Message.objects.filter(account_id=account_id, thread_id=old).update(thread_id=new)
            ThreadRef.objects.filter(account_id=account_id, thread_id=old).update(thread_id=new)

    rows = [
        (i, threads.find(t)) for i, t in index.items() if i not in known or threads.find(known[i]) != known[i]
    ]
    rows += [(key, threads.find(t)) for key, t in subject_roots.items()]
    _upsert(tenant_id, account_id, rows)


def _ids_of(message: Threadable) -> list[str]:
    ids = list(message.references)
    if message.in_reply_to:
        ids.append(message.in_reply_to)
    if message.message_id:
        ids.append(message.message_id)
    return list(dict.fromkeys(ids))


def _upsert(tenant_id: uuid.UUID, account_id: uuid.UUID, rows: list[tuple[str, uuid.UUID]]) -> None:
    if not rows:
        return
    latest = dict(rows)  # the last word on each id wins
    values = []
    params: list = []
    for message_id, thread in latest.items():
        values.append("(gen_random_uuid(), now(), now(), %s, %s, %s, %s)")
        params += [tenant_id, account_id, message_id, thread]
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO email_thread_refs
                (id, created_at, updated_at, tenant_id, account_id, message_id, thread_id)
            VALUES {", ".join(values)}
            ON CONFLICT (tenant_id, account_id, message_id)
            DO UPDATE SET thread_id = EXCLUDED.thread_id, updated_at = now()
            """,  # noqa: S608 - only placeholders are interpolated
            params,
        )
