"""The operators' admin of tenants, the audit log and the periodic tasks:
each tenant's usage (accounts, messages, bytes) counted across tenants
through the admin alias, one query a page under a timeout, kept a minute
in Redis; the audit log read-only and filtered by action,
object type, actor, tenant and the last day, week or month, with choices
that read nothing from the log; django-celery-beat's pages reachable."""

import datetime
import html
import itertools
import re

import pytest
from django.core.cache import cache
from django.db import connections, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from accounts.tests.factories import EmailAccountFactory
from emailclient.core import admin as core_admin
from emailclient.core.admin import tenant_usage
from emailclient.core.admin_base import EstimatedCountPaginator
from emailclient.core.audit import AUDIT_ACTIONS, AUDIT_OBJECT_TYPES
from emailclient.core.models import AuditLog
from emailclient.core.services import audit_log_record, audit_log_record_many
from emailclient.core.tenancy import tenant_scope
from emailclient.core.tests.factories import TenantFactory, UserFactory
from messages.models import QuarantinedMessage
from messages.tests.factories import FolderFactory, MessageFactory


@pytest.fixture
def operator(committed_db):
    return UserFactory(username="operator", is_staff=True, is_superuser=True)


@pytest.fixture
def operator_client(operator):
    client = Client()
    client.force_login(operator)
    return client


def field(page: str, row_text: str, name: str) -> str:
    """The text of column `name` in the list row holding `row_text`."""
    [row] = [row for row in page.split("<tr")[1:] if row_text in row]
    return row.split(f'class="field-{name}">', 1)[1].split("</td>", 1)[0]


def test_tenant_usage_counts_each_tenant_as_its_quotas_do(operator_client, tenant_a, tenant_b):
    account = EmailAccountFactory(tenant=tenant_a)
    EmailAccountFactory(tenant=tenant_a, is_deleted=True, email_address="gone@a.example")
    folder = FolderFactory(account=account, name="INBOX", type="inbox")
    MessageFactory(folder=folder, size_bytes=1000)
    MessageFactory(folder=folder, size_bytes=2048)
    with tenant_scope(tenant_a.id):
        QuarantinedMessage.objects.create(
            tenant=tenant_a,
            account=account,
            folder=folder,
            imap_uid=7,
            uidvalidity=1,
            reason="test",
            size_bytes=500,
            raw_blob_key="a" * 64,
        )

    usage = tenant_usage([tenant_a.id, tenant_b.id])

    assert (usage[tenant_a.id].accounts, usage[tenant_a.id].messages) == (1, 3)
    assert usage[tenant_a.id].stored_bytes == 3548
    assert (usage[tenant_b.id].accounts, usage[tenant_b.id].messages, usage[tenant_b.id].stored_bytes) == (
        0,
        0,
        0,
    )

    page = operator_client.get("/admin/core/tenant/").content.decode()
    assert field(page, "tenant-a", "accounts") == "1"
    assert field(page, "tenant-a", "messages") == "3"
    assert field(page, "tenant-a", "stored") == "3.5\xa0KB"
    assert field(page, "tenant-b", "messages") == "0"
    detail = operator_client.get(f"/admin/core/tenant/{tenant_a.id}/change/").content.decode()
    assert "Usage" in detail and "3.5\xa0KB" in detail


def test_tenant_usage_list_is_one_query_for_the_page(
    operator_client, tenant_a, tenant_b, django_assert_num_queries
):
    from django.contrib import admin as django_admin
    from django.test import RequestFactory

    from emailclient.core.models import Tenant

    request = RequestFactory().get("/admin/core/tenant/")
    request.user = UserFactory(username="operator-2", is_staff=True, is_superuser=True)
    model_admin = django_admin.site._registry[Tenant]
    changelist = model_admin.get_changelist_instance(request)
    cache.clear()  # the changelist counted on its way in
    with django_assert_num_queries(4, using="admin") as captured:
        changelist.get_results(request)
    statements = [q["sql"].split()[0] for q in captured.captured_queries]
    assert statements == ["BEGIN", "SELECT", "SELECT", "COMMIT"]  # the timeout set, then the count
    assert "statement_timeout" in captured.captured_queries[1]["sql"]
    assert {tenant.slug for tenant in changelist.result_list} >= {"tenant-a", "tenant-b"}
    assert all(tenant.usage.accounts == 0 for tenant in changelist.result_list)


def tenants_page_queries(client) -> list[str]:
    """The statements a view of the tenants list runs, on both aliases."""
    with (
        CaptureQueriesContext(connections["default"]) as runtime,
        CaptureQueriesContext(connections["admin"]) as operator,
    ):
        assert client.get("/admin/core/tenant/").status_code == 200
    return [q["sql"] for q in (*runtime.captured_queries, *operator.captured_queries)]


def test_tenant_list_queries_do_not_grow_with_its_tenants_and_are_cached(operator_client, tenant_a, tenant_b):
    EmailAccountFactory(tenant=tenant_a)
    two = tenants_page_queries(operator_client)
    TenantFactory.create_batch(6)
    cache.clear()

    eight = tenants_page_queries(operator_client)

    assert len(eight) == len(two)
    assert sum("email_messages" in sql for sql in eight) == 1
    # Counted a moment ago: read from Redis, no count at all.
    again = tenants_page_queries(operator_client)
    assert not any("email_messages" in sql for sql in again)
    page = operator_client.get("/admin/core/tenant/").content.decode()
    assert field(page, "tenant-a", "accounts") == "1"


def test_tenant_usage_past_its_timeout_shows_a_placeholder_not_a_500(operator_client, tenant_a, monkeypatch):
    EmailAccountFactory(tenant=tenant_a)
    monkeypatch.setattr(core_admin, "USAGE_TIMEOUT_MS", 200)
    placeholder = '<span title="Not counted: it took longer than 0.2 s. Try again in a minute.">—</span>'

    # Without a timeout of its own the count would wait for ever: fail instead.
    with connections["admin"].cursor() as cursor:
        cursor.execute("SET lock_timeout = '10s'")
    # The count waits for the messages table, held by another session, until its timeout.
    with transaction.atomic(using="owner"), connections["owner"].cursor() as cursor:
        cursor.execute("LOCK TABLE email_messages IN ACCESS EXCLUSIVE MODE")
        response = operator_client.get("/admin/core/tenant/")
        detail = operator_client.get(f"/admin/core/tenant/{tenant_a.id}/change/")

    assert response.status_code == 200 and detail.status_code == 200
    page = response.content.decode()
    assert field(page, "tenant-a", "accounts") == placeholder
    assert field(page, "tenant-a", "stored") == placeholder
    assert placeholder in detail.content.decode()
    # Nothing was cached: once the table is free, the next view counts.
    page = operator_client.get("/admin/core/tenant/").content.decode()
    assert field(page, "tenant-a", "accounts") == "1"


@pytest.fixture
def entries(operator, tenant_a, tenant_b, user_a):
    """Audit entries of two tenants, two actors, two actions, two days."""
    made = [
        audit_log_record(
            tenant=tenant_a,
            actor=user_a,
            action="account.create",
            object_type="email_account",
            object_id=None,
        ),
        audit_log_record(
            tenant=tenant_a,
            actor=operator,
            action="account.update",
            object_type="email_account",
            object_id=None,
        ),
        audit_log_record(
            tenant=tenant_b, actor=operator, action="compose.send.queued", object_type="draft", object_id=None
        ),
    ]
    # An old entry: the runtime role may not update the log, its owner may.
    with tenant_scope(tenant_b.id, using="owner"):
        AuditLog.objects.using("owner").filter(id=made[2].id).update(
            created_at=timezone.now() - datetime.timedelta(days=40)
        )
    return made


def listed(client, query: str = "") -> list[str]:
    """The actions of the listed entries, sorted."""
    page = client.get("/admin/core/auditlog/" + query).content.decode()
    return sorted(re.findall(r'<td class="field-action">([^<]*)</td>', page))


def test_the_audit_log_filters_by_action_type_actor_tenant_and_date(
    operator_client, operator, entries, tenant_b, user_a
):
    assert listed(operator_client) == ["account.create", "account.update", "compose.send.queued"]
    assert listed(operator_client, "?action=account.update") == ["account.update"]
    assert listed(operator_client, "?object_type=draft") == ["compose.send.queued"]
    assert listed(operator_client, f"?actor__id__exact={operator.id}") == [
        "account.update",
        "compose.send.queued",
    ]
    assert listed(operator_client, f"?q={user_a.username}") == ["account.create"]
    assert listed(operator_client, f"?tenant__id__exact={tenant_b.id}") == ["compose.send.queued"]
    # The sidebar's "Last 7 days", as its link says it.
    page = operator_client.get("/admin/core/auditlog/").content.decode()
    [past_week] = re.findall(r'href="(\?created=[^"]*)"[^>]*>Last 7 days<', page)
    assert listed(operator_client, html.unescape(past_week)) == ["account.create", "account.update"]


@pytest.fixture
def a_log(operator, tenant_a, tenant_b) -> dict[int, str]:
    """3,000 entries, the n-th made n and a half hours ago, cycling through
    the known actions, the object types and the two tenants: n → its id."""
    made: dict[int, str] = {}
    for tenant, action, object_type in itertools.product(
        (tenant_a, tenant_b), AUDIT_ACTIONS, AUDIT_OBJECT_TYPES
    ):
        ns = [n for n in range(3000) if entry_of(n) == (tenant.slug, action, object_type)]
        rows = audit_log_record_many(
            tenant_id=tenant.id,
            actor_id=operator.id,
            action=action,
            object_type=object_type,
            entries=[(None, {"n": n}) for n in ns],
        )
        made.update(zip(ns, (str(row.id) for row in rows), strict=True))
    # Dated as their owner (the runtime role may not update the log).
    for tenant in (tenant_a, tenant_b):
        with tenant_scope(tenant.id, using="owner"), connections["owner"].cursor() as cursor:
            cursor.execute(
                "UPDATE email_audit_log SET created_at = now() - ((changes->>'n')::int + 0.5)"
                " * interval '1 hour' WHERE tenant_id = %s",
                [tenant.id],
            )
    return made


def entry_of(n: int) -> tuple[str, str, str]:
    """The tenant, action and object type of the log's n-th entry."""
    return (
        ("tenant-a", "tenant-b")[n // 7 % 2],
        AUDIT_ACTIONS[n % len(AUDIT_ACTIONS)],
        AUDIT_OBJECT_TYPES[n % len(AUDIT_OBJECT_TYPES)],
    )


def changelist(client, query: str) -> tuple[set[str], list[str]]:
    """The ids of the entries the audit log's page lists at `query`, and
    the statements its view ran that read the log."""
    with (
        CaptureQueriesContext(connections["default"]) as runtime,
        CaptureQueriesContext(connections["admin"]) as operator_db,
    ):
        response = client.get("/admin/core/auditlog/" + query)
    assert response.status_code == 200
    ran = [q["sql"] for q in (*runtime.captured_queries, *operator_db.captured_queries)]
    return {str(entry.id) for entry in response.context["cl"].result_list}, [
        sql for sql in ran if "email_audit_log" in sql
    ]


@pytest.mark.parametrize(
    ("query", "hours", "action", "object_type", "tenant"),
    [
        ("?action=message.move&object_type=message", None, "message.move", "message", None),
        ("?created=24h", 24, None, None, None),
        ("?action=message.move&created=7d", 24 * 7, "message.move", None, None),
        (
            "?action=compose.send.sent&object_type=draft&created=30d",
            24 * 30,
            "compose.send.sent",
            "draft",
            None,
        ),
        (
            "?object_type=email_account&created=7d&tenant__id__exact={tenant_b}",
            24 * 7,
            None,
            "email_account",
            "tenant-b",
        ),
    ],
)
def test_the_audit_log_filters_by_known_actions_types_and_recent_ranges_reading_no_distinct_values(
    operator_client, a_log, tenant_b, query, hours, action, object_type, tenant
):
    expected = {
        id_
        for n, id_ in a_log.items()
        if (hours is None or n + 0.5 < hours)
        and action in (None, entry_of(n)[1])
        and object_type in (None, entry_of(n)[2])
        and tenant in (None, entry_of(n)[0])
    }

    shown, ran = changelist(operator_client, query.format(tenant_b=tenant_b.id))
    everything, ran_unfiltered = changelist(operator_client, "")

    assert 0 < len(expected) < 100  # one page
    assert shown == expected
    assert len(everything) == 100  # a page of the 3,000
    # Neither page reads the log's distinct actions, types or dates.
    assert not [sql for sql in (*ran, *ran_unfiltered) if re.search(r"\b(DISTINCT|GROUP BY)\b", sql)]


def test_a_filtered_audit_log_page_counts_its_own_rows_only(operator_client, a_log):
    """Neither the whole log's total ("10 results (3000 total)") nor the
    filters' counts (the sidebar's "Show counts", ?_facets): each reads
    every row, or every row in the range."""
    shown, ran = changelist(operator_client, "?action=message.move&created=7d&_facets=True")

    counts = [sql for sql in ran if "COUNT(" in sql]
    assert len(counts) == 1 and " WHERE " in counts[0]
    assert len(shown) == 11


def test_the_whole_audit_log_page_reads_its_index_and_an_estimated_count(operator_client, a_log, monkeypatch):
    """Unfiltered, the page neither counts nor sorts the whole log: its
    count is the table's estimate once the log is big (here the threshold is
    lowered under the 3,000 entries), its rows come from the newest end of
    idx_audit_created_id."""
    with connections["owner"].cursor() as cursor:
        cursor.execute("ANALYZE email_audit_log")
    monkeypatch.setattr(EstimatedCountPaginator, "estimate_from", 1_000)

    response = operator_client.get("/admin/core/auditlog/")
    shown, ran = changelist(operator_client, "")
    cl = response.context["cl"]
    with transaction.atomic(using="admin"), connections["admin"].cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = cl.queryset[:100].explain()

    assert shown == {a_log[n] for n in range(100)}  # the newest hundred
    assert cl.result_count == 3000  # ANALYZE of a small table reads all of it
    assert not [sql for sql in ran if "COUNT(" in sql]
    assert "idx_audit_created_id" in plan and "Sort" not in plan


def test_the_audit_log_filters_offer_the_known_values_and_refuse_others(operator_client, a_log):
    filters = {
        spec.title: spec for spec in operator_client.get("/admin/core/auditlog/").context["cl"].filter_specs
    }

    assert [value for value, _ in filters["action"].lookup_choices] == list(AUDIT_ACTIONS)
    assert [value for value, _ in filters["object type"].lookup_choices] == list(AUDIT_OBJECT_TYPES)
    assert [label for _, label in filters["created"].lookup_choices] == [
        "Last 24 hours",
        "Last 7 days",
        "Last 30 days",
    ]
    # Any other value is refused (the admin's ?e=1), not listed as nothing.
    for query in ("?action=account.forged", "?object_type=tenant", "?created=1y"):
        response = operator_client.get("/admin/core/auditlog/" + query)
        assert response.status_code == 302 and response.url.endswith("?e=1"), query


def test_the_audit_logs_date_filter_can_use_its_created_at_index(operator_client, a_log):
    queryset = operator_client.get("/admin/core/auditlog/?created=7d").context["cl"].queryset

    with transaction.atomic(using="admin"), connections["admin"].cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = queryset.explain()

    assert "brin_audit_created" in plan


def test_the_actor_filter_offers_operators_and_the_chosen_tenants_members_without_reading_the_log(
    operator, entries, tenant_a, user_a
):
    from django.contrib import admin as django_admin
    from django.test import RequestFactory

    from emailclient.core.admin import ActorFilter

    def actors(query: str) -> tuple[set[str], list[str]]:
        """The filter's choices for the list at `query`, and the statements building them ran."""
        request = RequestFactory().get("/admin/core/auditlog/" + query)
        request.user = operator
        model_admin = django_admin.site._registry[AuditLog]
        with (
            CaptureQueriesContext(connections["default"]) as runtime,
            CaptureQueriesContext(connections["admin"]) as operator_db,
        ):
            built = ActorFilter(
                AuditLog._meta.get_field("actor"), request, {}, AuditLog, model_admin, "actor"
            )
        ran = [q["sql"] for q in (*runtime.captured_queries, *operator_db.captured_queries)]
        return {name for _, name in built.lookup_choices}, ran

    everyone, ran = actors("")
    assert everyone == {"operator"}
    narrowed, ran_narrowed = actors(f"?tenant__id__exact={tenant_a.id}")
    assert narrowed == {"operator", user_a.username}
    assert actors("?tenant__id__exact=not-a-uuid")[0] == {"operator"}
    assert not [sql for sql in (*ran, *ran_narrowed) if "email_audit_log" in sql]


def test_the_audit_log_is_read_only(operator_client, entries):
    entry = entries[0]
    url = f"/admin/core/auditlog/{entry.id}/change/"
    page = operator_client.get(url)
    assert page.status_code == 200
    assert "Save" not in page.content.decode() and 'name="action"' not in page.content.decode()
    assert operator_client.post(url, {"action": "forged"}).status_code == 403
    assert operator_client.get(f"/admin/core/auditlog/{entry.id}/delete/").status_code == 403
    assert operator_client.get("/admin/core/auditlog/add/").status_code == 403
    listing = operator_client.get("/admin/core/auditlog/").content.decode()
    assert "delete_selected" not in listing
    with tenant_scope(entry.tenant_id):
        assert AuditLog.objects.get(id=entry.id).action == "account.create"


def test_the_periodic_tasks_admin_is_reachable(operator_client):
    every = IntervalSchedule.objects.create(every=5, period=IntervalSchedule.MINUTES)
    PeriodicTask.objects.create(
        name="backup-test", task="emailclient.core.tasks.backup_scheduled", interval=every
    )

    for path in (
        "/admin/django_celery_beat/",
        "/admin/django_celery_beat/periodictask/",
        "/admin/django_celery_beat/intervalschedule/",
        "/admin/django_celery_beat/crontabschedule/",
    ):
        assert operator_client.get(path).status_code == 200, path
    assert "backup-test" in operator_client.get("/admin/django_celery_beat/periodictask/").content.decode()
    assert "/admin/django_celery_beat/periodictask/" in operator_client.get("/admin/").content.decode()
