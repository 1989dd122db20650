"""Every list ends, and lists every item once.

Rows that tie on the first ordering key (messages imported in one second,
search matches of one rank, folders named INBOX in every account) are where
DRF's `CursorPagination` failed: it paged ties by an offset capped at 1,000,
and past that `next` returned the same page forever. Each list is walked to
its end here, forwards along `next` and back along `previous`."""

import datetime
import json
import uuid

import factory
import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import EmailAccount
from accounts.tests.factories import EmailAccountFactory
from emailclient.core.tenancy import tenant_scope
from messages.indexing import search_index_pending
from messages.models import Folder, Message
from messages.search import apply_search, parse_search_query
from messages.tests.factories import FolderFactory, MessageFactory

SAME_SECOND = timezone.now().replace(microsecond=0) - datetime.timedelta(days=1)


def walk(client, url: str, link: str = "next") -> list[dict]:
    """The bodies of every page along `link` from `url`."""
    bodies = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content[:300]
        bodies.append(response.json())
        url = bodies[-1][link]
        assert len(bodies) < 500, "the list does not end"
    return bodies


def walk_both_ways(client, url: str) -> list[str]:
    """The ids along `next` to the end, checked against the ids along
    `previous` from the last page back to the first."""
    pages = walk(client, url)
    ids = [item["id"] for body in pages for item in body["results"]]
    assert pages[0]["previous"] is None
    last = pages[-1]
    back = [last] + (walk(client, last["previous"], link="previous") if last["previous"] else [])
    assert [item["id"] for body in reversed(back) for item in body["results"]] == ids
    assert back[-1]["results"] == pages[0]["results"]
    return ids


def bulk_messages(folder: Folder, count: int, **fields) -> list[Message]:
    rows = MessageFactory.build_batch(count, folder=folder, **fields)
    with tenant_scope(folder.tenant_id):
        return Message.objects.bulk_create(rows)


@pytest.fixture
def tied(inbox_a):
    """2,500 messages in one second, the sync's INTERNALDATE of a bulk import."""
    return bulk_messages(inbox_a, 2_500, received_at=SAME_SECOND)


@pytest.fixture
def other_tenant(tenant_b, user_b):
    """A second tenant's messages at the very same second."""
    folder = FolderFactory(account=EmailAccountFactory(tenant=tenant_b, user=user_b), name="INBOX")
    return bulk_messages(folder, 30, received_at=SAME_SECOND)


def newest_first(messages) -> list[str]:
    return [str(m.id) for m in sorted(messages, key=lambda m: (m.received_at, m.id), reverse=True)]


@pytest.mark.django_db
@pytest.mark.usefixtures("other_tenant")
@pytest.mark.parametrize(
    "path",
    [
        "/api/messages/?page_size=200",
        "/api/messages/?page_size=200&folder={folder}",
        "/api/messages/?page_size=200&account={account}",
        "/api/v1/tenant-a/email_client/messages/?page_size=200&is_read=false",
    ],
)
def test_messages_tied_on_their_date_are_each_listed_once_in_order(client_a, inbox_a, tied, path):
    dated = bulk_messages(inbox_a, 40)  # some on either side of the tie
    older = bulk_messages(inbox_a, 5, received_at=SAME_SECOND - datetime.timedelta(days=400))
    url = path.format(folder=inbox_a.id, account=inbox_a.account_id)

    ids = walk_both_ways(client_a, url)

    assert ids == newest_first(tied + dated + older)


@pytest.mark.django_db
def test_messages_without_a_date_are_listed_first_and_once(client_a, inbox_a):
    undated = bulk_messages(inbox_a, 7, received_at=None)
    dated = bulk_messages(inbox_a, 9, received_at=SAME_SECOND)

    ids = walk_both_ways(client_a, "/api/messages/?page_size=4")

    assert ids == sorted((str(m.id) for m in undated), reverse=True) + newest_first(dated)


@pytest.mark.usefixtures("committed_db")
def test_a_page_deep_in_a_tie_costs_what_the_first_page_costs(
    client_a, account_a, inbox_a, tenant_a, tenant_b, user_b
):
    """The same statements, and the page's rows read off an index from the
    cursor on: no offset, no reading of the tie from its start, however deep
    into it. (Which index serves a folder's page is the planner's choice from
    the table's statistics; at this size it may be the tenant's. The folder's
    own index is checked by its definition below, and bench/ shows it used at
    1,000,000 messages.)"""
    archive = FolderFactory(account=account_a, name="Archive")
    theirs = FolderFactory(account=EmailAccountFactory(tenant=tenant_b, user=user_b))
    older = factory.Iterator([SAME_SECOND - datetime.timedelta(hours=n) for n in range(1, 10_000)])
    for _ in range(12):  # in interleaved batches, as a live table is written
        for folder in (inbox_a, archive, theirs):
            bulk_messages(folder, 50, received_at=SAME_SECOND)
            bulk_messages(folder, 50, received_at=older)
    with connections["owner"].cursor() as cursor:  # statistics, as a live table has them
        cursor.execute("ANALYZE email_messages")
    url = f"/api/messages/?page_size=50&folder={inbox_a.id}"
    first = _page_statements(client_a, url)
    deep_url = walk(client_a, url)[8]["next"]  # 450 rows into the tie of 600
    deep = _page_statements(client_a, deep_url)

    assert len(deep) == len(first)
    page_sql = [sql for sql in deep if 'FROM "email_messages"' in sql and "LIMIT 51" in sql]
    assert len(page_sql) == 1
    assert "OFFSET" not in page_sql[0]
    with connection.cursor() as cursor, tenant_scope(tenant_a.id):
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {page_sql[0]}")
        plan = cursor.fetchone()[0][0]["Plan"]
    scans = [scan for scan in _nodes(plan) if scan.get("Relation Name") == "email_messages"]
    assert [scan["Node Type"] for scan in scans] == ["Index Scan"], json.dumps(plan)[:3000]
    assert "ROW(received_at, id) < ROW(" in scans[0]["Index Cond"]
    assert scans[0]["Actual Rows"] == 51


@pytest.mark.django_db
@pytest.mark.parametrize("index", ["idx_messages_folder_page", "idx_messages_folder_unread"])
def test_a_folders_indexes_end_in_the_id_as_its_pages_order_does(index):
    """So that `(received_at, id) < (...)` is one range of the folder's index.
    Without the id, a page deep in a tie read the tie from its start."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_indexdef(%s::regclass)", [index])
        definition = cursor.fetchone()[0]
    assert "(folder_id, received_at DESC, id DESC)" in definition


def _page_statements(client, url: str) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return [query["sql"] for query in queries.captured_queries]


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


@pytest.mark.django_db
@pytest.mark.parametrize("order", ["relevance", "newest"])
@pytest.mark.parametrize(
    "path", ["/api/messages/?q={q}&order={order}", "/api/sync/search?query={q}&order={order}"]
)
def test_search_matches_tied_on_rank_are_each_listed_once(client_a, tenant_a, inbox_a, path, order):
    """Two ranks, each shared by many matches; dated and undated ones."""
    matches = bulk_messages(inbox_a, 2_000, subject="Quarterly figures", text_body="the zanzibar report")
    matches += bulk_messages(
        inbox_a, 20, subject="Quarterly figures", text_body="zanzibar", received_at=SAME_SECOND
    )
    matches += bulk_messages(inbox_a, 7, subject="Zanzibar", text_body="zanzibar", received_at=None)
    matches += bulk_messages(inbox_a, 5, subject="Quarterly figures", text_body="zanzibar", received_at=None)
    bulk_messages(inbox_a, 30, subject="Other news", text_body="nothing to see")
    search_index_pending(tenant_id=tenant_a.id)

    ids = walk_both_ways(client_a, path.format(q="zanzibar", order=order) + "&page_size=200")

    assert ids == expected_order(tenant_a, "zanzibar", order=order)
    assert sorted(ids) == sorted(str(m.id) for m in matches)


def expected_order(tenant, query: str, *, order: str) -> list[str]:
    """The matches' ids in the list's order, as the database sorts them."""
    messages = Message.objects.for_tenant(tenant).filter(is_deleted=False)
    with tenant_scope(tenant.id):
        matching = apply_search(messages, parse_search_query(query), order=order)
        keys = ("-rank", "-received_at", "-id") if order == "relevance" else ("-received_at", "-id")
        ranked = [str(i) for i in matching.order_by(*keys).values_list("id", flat=True)]
        if order == "relevance":  # ties within ranks, and more than one rank
            assert len(set(matching.values_list("rank", flat=True))) >= 2
    return ranked


@pytest.mark.django_db
def test_folders_named_alike_in_every_account_are_each_listed_once(
    client_admin_a, tenant_a, admin_a, tenant_b
):
    folders = []
    for _ in range(12):
        account = EmailAccountFactory(tenant=tenant_a, user=admin_a)
        folders += [FolderFactory(account=account, name=name) for name in ("INBOX", "Sent", "Archive")]
    FolderFactory(account=EmailAccountFactory(tenant=tenant_b), name="INBOX")

    ids = walk_both_ways(client_admin_a, "/api/folders/?page_size=5")

    assert ids == [str(f.id) for f in sorted(folders, key=lambda f: (f.name, f.id))]


@pytest.mark.django_db
def test_accounts_created_in_one_instant_are_each_listed_once(client_admin_a, tenant_a, admin_a, tenant_b):
    accounts = [EmailAccountFactory(tenant=tenant_a, user=admin_a) for _ in range(23)]
    EmailAccountFactory(tenant=tenant_b)
    with tenant_scope(tenant_a.id):
        EmailAccount.objects.filter(tenant=tenant_a).update(created_at=SAME_SECOND)

    ids = walk_both_ways(client_admin_a, "/api/accounts/?page_size=4")

    assert ids == sorted((str(a.id) for a in accounts), reverse=True)


@pytest.mark.django_db
def test_threads_tied_on_their_latest_date_are_each_listed_once(client_a, account_a, inbox_a):
    """A thread's place is its newest message's (received_at, id)."""
    newest = {}
    for _ in range(130):
        thread = uuid.uuid4()
        messages = bulk_messages(inbox_a, 2, thread_id=thread, received_at=SAME_SECOND)
        newest[str(thread)] = max(m.id for m in messages)

    pages = walk(client_a, f"/api/threads/?account={account_a.id}&page_size=20")

    assert [item["thread_id"] for body in pages for item in body["results"]] == sorted(
        newest, key=newest.get, reverse=True
    )
    assert all(body["previous"] is None for body in pages)


@pytest.mark.django_db
def test_long_folder_names_in_any_script_page_on(client_a, account_a):
    """A cursor carries the folder's whole name: UTF-8, not JSON escapes."""
    names = ["A", "Проекты/" * 125, "中文文件夹" * 200, "Я"]
    folders = [FolderFactory(account=account_a, name=name) for name in names]

    ids = walk_both_ways(client_a, f"/api/folders/?account={account_a.id}&page_size=1")

    assert ids == [str(f.id) for f in sorted(folders, key=lambda f: (f.name, f.id))]


@pytest.mark.django_db
def test_the_way_back_from_an_emptied_page_skips_nothing(client_a, inbox_a):
    """The last page's rows go between two requests: its `previous` still
    starts from the last row the client saw."""
    messages = bulk_messages(inbox_a, 5)
    order = newest_first(messages)
    first = client_a.get("/api/messages/?page_size=2").json()
    second = client_a.get(first["next"]).json()
    with tenant_scope(inbox_a.tenant_id):
        Message.objects.filter(id=order[4]).delete()

    third = client_a.get(second["next"]).json()
    assert third["results"] == [] and third["next"] is None
    back = client_a.get(third["previous"]).json()

    assert [m["id"] for m in back["results"]] == order[2:4]
    assert [m["id"] for m in client_a.get(back["previous"]).json()["results"]] == order[:2]
