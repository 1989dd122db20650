"""Reads on messages, threads and attachments.

Everything starts from `visible_messages()`: the tenant's messages on the
accounts the user sees (members their own, admins all), never a deleted
account's and never a message deleted for good. The filters below only
narrow it, so no path can reach past it.
"""

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from django.contrib.postgres.aggregates import ArrayAgg
from django.db.models import Count, Exists, F, Max, Q, QuerySet, Subquery

from accounts.selectors import account_list, deleted_account_ids
from emailclient.core.exceptions import NotFound
from emailclient.core.models import Tenant, TenantMembership

from .models import Attachment, Folder, Message
from .search import Candidate

# What only searches read: the search vector (about 5 KB, kept in the row)
# and the generated search keys. No read of a message fetches them.
SEARCH_ONLY_FIELDS = (
    "search_vector",
    "to_text",
    "cc_text",
    "from_key",
    "to_addresses",
    "cc_addresses",
    "subject_trigrams",
    "from_trigrams",
    "to_trigrams",
    "cc_trigrams",
)

# What a list needs: never the bodies (TOASTed, compressed) or the vector.
# Lists read them as dicts (`list_rows`), not as model instances.
LIST_FIELDS = (
    "id",
    "tenant_id",
    "account_id",
    "folder_id",
    "thread_id",
    "message_id",
    "message_id_synthetic",
    "subject",
    "from_address",
    "from_name",
    "to",
    "cc",
    "snippet",
    "is_read",
    "is_flagged",
    "is_answered",
    "is_draft",
    "has_attachments",
    "received_at",
    "sent_at",
    "size_bytes",
)


# --- Folders -----------------------------------------------------------------------


def folder_list(
    *, tenant: Tenant, membership: TenantMembership, account_id: uuid.UUID | None = None
) -> QuerySet[Folder]:
    """The folders of the accounts the user sees."""
    folders = Folder.objects.for_tenant(tenant).filter(
        account__in=account_list(tenant=tenant, membership=membership)
    )
    if account_id is not None:
        folders = folders.filter(account_id=account_id)
    return folders


def access_folder(*, tenant: Tenant, membership: TenantMembership, id: uuid.UUID) -> Folder:
    folder = folder_list(tenant=tenant, membership=membership).filter(id=id).first()
    if folder is None:
        raise NotFound("Folder not found.")
    return folder


# --- Messages ----------------------------------------------------------------------


@dataclass(frozen=True)
class MessageFilters:
    account: uuid.UUID | None = None
    folder: uuid.UUID | None = None
    thread: uuid.UUID | None = None
    is_read: bool | None = None
    is_flagged: bool | None = None
    has_attachments: bool | None = None
    received_after: datetime | None = None
    received_before: datetime | None = None
    # Normalised as the parser does (`messages.parsing.message_id`).
    message_id: str | None = None


def visible_messages(*, tenant: Tenant, membership: TenantMembership) -> QuerySet[Message]:
    """The messages this user may see: `all_tenant_messages()` narrowed to
    the accounts the user sees. For lists and searches, which walk an index
    over many rows; a lookup of a few rows by id or thread uses
    `_visible_messages_for_lookup()`.

    The accounts are fetched first and given as constants: with a
    sub-select the planner guessed an average account's size for every
    account and, for a big folder, read all of it and sorted it instead of
    walking its (folder, received_at) index (240 ms against 1 ms at
    1,000,000 messages). An admin sees every account but the deleted ones,
    usually none, so an admin's searches carry no account list at all: one
    that named all 100 accounts of a tenant had the planner read a million
    index entries to intersect with a word's two matches (75 ms, not 1)."""
    messages = all_tenant_messages(tenant=tenant)
    if membership.is_admin:
        hidden = list(deleted_account_ids(tenant=tenant))
        return messages.exclude(account_id__in=hidden) if hidden else messages
    account_ids = list(account_list(tenant=tenant, membership=membership).values_list("id", flat=True))
    return messages.filter(account_id__in=account_ids)


def _visible_messages_for_lookup(*, tenant: Tenant, membership: TenantMembership) -> QuerySet[Message]:
    """The same rows as `visible_messages()`, with the account check as a
    sub-select, for the few messages an index finds (by id, a thread): one
    query where a list needs two.
    The planner's guess for the accounts does not matter when the primary
    key or the thread's index finds the rows."""
    messages = all_tenant_messages(tenant=tenant)
    if membership.is_admin:
        return messages.exclude(account_id__in=deleted_account_ids(tenant=tenant))
    return messages.filter(account_id__in=account_list(tenant=tenant, membership=membership).values("id"))


# A message as a list reads it: LIST_FIELDS (and annotations) by name.
Row = dict[str, Any]


def list_rows(messages: QuerySet[Message]) -> QuerySet[Message, Row]:
    """A list's messages as dicts of LIST_FIELDS, with the query's selected
    annotations (a search's rank, which its pagination reads). For a
    50-message page this is 1.2-1.5 ms cheaper than model instances (4-5 ms
    of the page's fetch, measured in-process)."""
    rows: QuerySet[Message, Row] = messages.values(*LIST_FIELDS, *messages.query.annotation_select)
    return rows


def all_tenant_messages(*, tenant: Tenant) -> QuerySet[Message]:
    """Every message of the tenant not deleted for good, on every account,
    with no check of who may see it ("all", where `visible_messages()` is the
    user's share of it): the start of the visible sets, the tenant-wide side
    of a search's candidate ids, and nothing a user is shown unnarrowed."""
    return Message.objects.for_tenant(tenant).filter(is_deleted=False)


def message_list(
    *, tenant: Tenant, membership: TenantMembership, filters: MessageFilters | None = None
) -> QuerySet[Message]:
    f = filters or MessageFilters()
    if f.folder is not None:
        messages = _folder_messages(tenant=tenant, membership=membership, folder_id=f.folder)
    else:
        messages = visible_messages(tenant=tenant, membership=membership)
    exact = {
        "account_id": f.account,
        "folder_id": f.folder,
        "thread_id": f.thread,
        "is_read": f.is_read,
        "is_flagged": f.is_flagged,
        "has_attachments": f.has_attachments,
        "received_at__gte": f.received_after,
        "received_at__lt": f.received_before,
        # Plain equality on a varchar is LEAKPROOF: idx_messages_message_id
        # serves it under row-level security.
        "message_id": f.message_id,
    }
    # (The list's `sender`, a substring, is a term of the search, which keeps
    # an index under row-level security: `messages.search.with_sender`.)
    return messages.filter(**{k: v for k, v in exact.items() if v is not None})


# A search is narrowed to its candidates' ids first (see narrow_to_candidate_ids) when
# the planner expects at most this many of them, or this share of the rows
# searched, whichever is more. PostgreSQL guesses 0.26 % of rows for a word
# outside its statistics: under the share.
SELECTIVE_MATCHES = 2_000
SELECTIVE_SHARE = 0.01
# A keyed candidate (a whole address) is tried by id unless the planner
# expects it for more than this share of the rows: below it, its guess is
# ANALYZE's sample (each of the 100 histogram entries of the jsonb column
# stands for 1 % of the rows, so one sampled message to an address puts its
# guess at about SELECTIVE_SHARE); above it, the address is a common one.
KEYED_SHARE = 0.05


def narrow_to_candidate_ids(
    messages: QuerySet[Message],
    *,
    scope: QuerySet[Message],
    candidates: list[Candidate],
    whole_tenant: QuerySet[Message] | None = None,
) -> tuple[QuerySet[Message], bool]:
    """A searched queryset (`messages`, newest first, from `scope`), narrowed
    to the ids of its candidates when they are few, and whether it was.
    `candidates` are conditions every match satisfies (a search's words, its
    positive operators). Page a narrowed queryset by primary key
    (IdsPagination).

    Left alone, PostgreSQL pages a search by walking the newest-first index
    and testing each row, expecting a page's worth of matches soon. For a
    rare word it guesses 0.26 % of the rows (its floor for a word outside
    its statistics), and with one real match it walked a whole tenant, a
    million rows, 20 s. Asked for every condition at once, it intersected a
    rare term's bitmap with a common one's: to:<address> meeting read the
    811,000 entries of 'meeting' for 18 matches (90 ms).

    So: ask the planner's guess for each condition alone (EXPLAIN, nothing
    executed); when one is expected to hold for few rows, fetch those ids
    through its own index (failing that, the ids of all conditions at once,
    if few), and page the messages among them with every condition applied.
    A broad search is left to the walk, which fills a page within a few
    thousand rows. More ids than expected fall back to the walk too, so the
    result is the same either way; only the plan differs.

    The candidate's ids are fetched over the whole tenant first (given
    `whole_tenant`), and only if there are too many there, within the
    scope: fetched within an account, a rare word's 4 index entries were
    intersected with the account's 96,388 (14 ms; the planner expected the
    word in 5,290 rows, its floor), a cost that grows with the account. The
    page is narrowed to the scope by `messages` itself, so ids from other
    accounts never reach a response.

    A whole address in to: or cc: is tried by id unless the planner expects
    it in a common share of the rows (KEYED_SHARE): its guess for a rare
    address swung between 104 and 10,557 rows from one ANALYZE to the next,
    and past the threshold the walk may cover the whole scope."""
    if not candidates:
        return messages, False
    scope_rows = estimated_rows(scope)
    limit = max(SELECTIVE_MATCHES, int(SELECTIVE_SHARE * scope_rows))

    def expected(candidate: Candidate) -> float:
        rows = estimated_rows(scope.filter(candidate.estimate or candidate.condition))
        return min(rows, limit) if candidate.keyed and rows <= KEYED_SHARE * scope_rows else rows

    fewest, best = min((expected(c), i) for i, c in enumerate(candidates))
    if fewest <= limit:
        condition = candidates[best].condition
        if whole_tenant is None:
            ids = _ids(scope.filter(condition), limit)
        else:
            ids = _ids(whole_tenant.filter(condition), limit)
            if ids is None and scope.query.sql_with_params() != whole_tenant.query.sql_with_params():
                ids = _ids(scope.filter(condition), limit)  # (an admin's scope is often the tenant)
    elif len(candidates) > 1 and estimated_rows(messages) <= limit:
        # With every candidate's way in (two substrings' trigram indexes, ANDed).
        ids = _ids(messages.filter(*(c.condition for c in candidates if c.estimate is not None)), limit)
    else:
        return messages, False
    if ids is None:
        return messages, False
    return messages.filter(id__any=ids), True


def _ids(messages: QuerySet[Message], limit: int) -> list[uuid.UUID] | None:
    """The ids of `messages`, or None if there are more than `limit`."""
    ids = list(messages.order_by().values_list("id", flat=True)[: limit + 1])
    return ids if len(ids) <= limit else None


def estimated_rows(messages: QuerySet[Message]) -> float:
    """The planner's guess of the rows `messages` holds (EXPLAIN, nothing
    executed). A queryset that cannot hold a row (`.none()`, `id__in=[]`:
    a member without accounts sees no message) compiles to no SQL, so has no
    plan to read: it holds none."""
    text = messages.order_by().explain(format="json")
    if not text:
        return 0.0
    plan = json.loads(text)
    return float(plan[0]["Plan"]["Plan Rows"])


def _folder_messages(
    *, tenant: Tenant, membership: TenantMembership, folder_id: uuid.UUID
) -> QuerySet[Message]:
    """A folder's messages, if the folder is visible: by the folder alone, so
    that the page walks (folder, received_at). With the account condition as
    well, the planner multiplied the two selectivities, expected a few
    hundred rows and read and sorted the whole folder (86 ms for 36,616
    messages; 1 ms without it). The folder's visibility is an uncorrelated
    EXISTS, which PostgreSQL runs once, before the walk (a one-time filter),
    instead of a query of its own."""
    visible = Folder.objects.filter(
        id=folder_id, account__in=account_list(tenant=tenant, membership=membership)
    )
    return all_tenant_messages(tenant=tenant).filter(Exists(visible), folder_id=folder_id)


def access_message(
    *, tenant: Tenant, membership: TenantMembership, id: uuid.UUID, lock: bool = False
) -> Message:
    messages = (
        _visible_messages_for_lookup(tenant=tenant, membership=membership)
        .select_related("folder")
        .defer(*SEARCH_ONLY_FIELDS)
        # The account's protocol, for the representation's `server_sync` (no query more).
        .annotate(account_protocol=F("account__protocol"))
    )
    if lock:
        messages = messages.select_for_update(of=("self",))
    message = messages.filter(id=id).first()
    if message is None:
        raise NotFound("Message not found.")
    return message


def access_messages(*, tenant: Tenant, membership: TenantMembership, ids: list[uuid.UUID]) -> list[Message]:
    """The messages of a bulk change, locked, in id order (two bulk changes
    never deadlock); every one must be visible, or none is returned."""
    found = list(
        _visible_messages_for_lookup(tenant=tenant, membership=membership)
        .select_related("folder")
        .defer(*SEARCH_ONLY_FIELDS)
        .select_for_update(of=("self",))
        .filter(id__in=ids)
        .order_by("id")
    )
    missing = set(ids) - {m.id for m in found}
    if missing:
        unknown = [f"Unknown message: {i}" for i in sorted(map(str, missing))]
        raise NotFound("Message not found.", fields={"ids": unknown})
    return found


def message_attachments(*, message: Message) -> list[Attachment]:
    return list(
        Attachment.objects.filter(tenant_id=message.tenant_id, message=message).order_by("created_at")
    )


def access_attachment(*, tenant: Tenant, membership: TenantMembership, id: uuid.UUID) -> Attachment:
    attachment = (
        Attachment.objects.for_tenant(tenant)
        .filter(id=id, message__in=visible_messages(tenant=tenant, membership=membership))
        .first()
    )
    if attachment is None:
        raise NotFound("Attachment not found.")
    return attachment


# --- Threads -----------------------------------------------------------------------


# A thread's place in the list: its newest message's (received_at, id).
ThreadPosition = tuple[datetime, uuid.UUID]


def thread_page(
    *,
    tenant: Tenant,
    membership: TenantMembership,
    account_id: uuid.UUID,
    size: int,
    after: ThreadPosition | None = None,
) -> tuple[list[Row], ThreadPosition | None]:
    """A page of the account's threads, the most recently active first: one
    row per thread (latest date, count, unread count, participants; then
    `thread_latest_messages()` completes them), and the position to ask for
    the next page from (None on the last page). `after` is such a position.

    The threads are found by walking the account's messages newest first
    (its newest-first index) until `size` threads have shown their newest
    message, and only those are counted: grouping every message of the
    account to sort its threads took 4.3 s for 96,388 messages (and 6.3 s
    for 192,776). Threads already seen are left out of the walk's later
    steps, which double in size, so long threads cost a few steps, not one
    each. A message without a received date places no thread (the sync
    always sets one). As with any cursor over changing data, a thread whose
    newest message is deleted between two pages may show up again later."""
    messages = visible_messages(tenant=tenant, membership=membership).filter(
        account_id=account_id, thread_id__isnull=False
    )
    walk = messages.filter(received_at__isnull=False).order_by("-received_at", "-id")
    newest: dict[uuid.UUID, ThreadPosition] = {}  # in walk order
    seen: set[uuid.UUID] = set()
    position = after
    chunk_size = 4 * size
    while len(newest) <= size:
        chunk = walk if position is None else walk.filter(_before(position))
        if seen:  # a long thread's older messages are skipped by the database
            chunk = chunk.exclude(thread_id__any=list(seen))
        # Neither NULL: the walk reads dated messages of threads only.
        rows = cast(
            list[tuple[datetime, uuid.UUID, uuid.UUID]],
            list(chunk.values_list("received_at", "id", "thread_id")[:chunk_size]),
        )
        found: list[tuple[uuid.UUID, ThreadPosition]] = []
        for received_at, message_id, thread_id in rows:
            if thread_id not in seen:
                seen.add(thread_id)
                found.append((thread_id, (received_at, message_id)))
        if found and after is not None:
            # A thread with a message at or above the page's start was listed before.
            listed = set(
                messages.filter(thread_id__any=[t for t, _ in found])
                .exclude(_before(after))
                .filter(received_at__isnull=False)
                .values_list("thread_id", flat=True)
            )
            found = [(t, p) for t, p in found if t not in listed]
        newest.update(found)
        if len(rows) < chunk_size:
            break
        position = (rows[-1][0], rows[-1][1])
        chunk_size *= 2  # long threads: a few steps, not one per thread
    threads = list(newest)[:size]
    counts = {
        row["thread_id"]: row
        for row in messages.filter(thread_id__any=threads)
        .order_by()
        .values("thread_id")
        .annotate(
            latest_at=Max("received_at"),
            message_count=Count("id"),
            unread_count=Count("id", filter=Q(is_read=False)),
            participants=ArrayAgg("from_address", distinct=True),
        )
    }
    # (A thread whose last visible message went since the walk is left out.)
    page = [counts[t] for t in threads if t in counts]
    return page, (newest[threads[-1]] if len(newest) > size else None)


def _before(position: ThreadPosition) -> Q:
    """Messages after `position` in newest-first order. The plain `<=` on the
    date bounds the index scan; the OR alone would not."""
    received_at, message_id = position
    return Q(received_at__lte=received_at) & (
        Q(received_at__lt=received_at) | Q(received_at=received_at, id__lt=message_id)
    )


def thread_latest_messages(
    *, tenant: Tenant, account_id: uuid.UUID, thread_ids: list[uuid.UUID]
) -> dict[uuid.UUID, Row]:
    """The newest message of each of these threads of the account, in one
    query. For the ids of a `thread_page()`, which only visible rows
    gave: the account's visibility is not looked up a second time."""
    latest = (
        Message.objects.for_tenant(tenant)
        .filter(is_deleted=False, account_id=account_id, thread_id__in=thread_ids)
        .order_by("thread_id", F("received_at").desc(nulls_last=True), "-id")
        .distinct("thread_id")
    )
    return {row["thread_id"]: row for row in list_rows(latest)}


def thread_messages(
    *, tenant: Tenant, membership: TenantMembership, thread_id: uuid.UUID
) -> QuerySet[Message, Row]:
    """The thread's messages as `list_rows()`, for a keyset page (oldest
    first): a thread has no bound on its length (a References header names
    any thread), so it is served a page at a time."""
    thread = _visible_messages_for_lookup(tenant=tenant, membership=membership).filter(thread_id=thread_id)
    return list_rows(thread)


def thread_summary(
    *, tenant: Tenant, membership: TenantMembership, thread_id: uuid.UUID, subject: bool = True
) -> Row:
    """The thread's `message_count` and `unread_count` over all its messages
    the user sees, and (`subject=True`) its `subject`, its oldest message's,
    in one query; NotFound when there are none. (The first page has the
    oldest message: no need to find it twice.)"""
    thread = _visible_messages_for_lookup(tenant=tenant, membership=membership).filter(thread_id=thread_id)
    columns: dict[str, Count | Subquery] = {
        "message_count": Count("id"),
        "unread_count": Count("id", filter=Q(is_read=False)),
    }
    if subject:
        columns["subject"] = Subquery(thread.order_by("received_at", "id").values("subject")[:1])
    rows: list[Row] = list(thread.order_by().values("thread_id").annotate(**columns).values(*columns))
    if not rows:
        raise NotFound("Thread not found.")
    return rows[0]
