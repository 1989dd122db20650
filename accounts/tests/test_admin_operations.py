"""The operators' accounts list runs the service: every tenant's accounts with
their sync state, last sync, last error and message count, filtered by state
and tenant; "sync now" queues a sync on the real broker through
`sync_request` (ids only); "disable" and "enable" go through `account_update`
and are audited with the operator as the actor."""

import base64
import json

import pytest
import redis
from django.conf import settings
from django.db import connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import EmailAccount
from accounts.tests.factories import EmailAccountFactory
from emailclient.core.models import AuditLog
from emailclient.core.tenancy import tenant_scope
from emailclient.core.tests.factories import MembershipFactory, UserFactory
from mailboxes import sync_status
from messages.tests.factories import FolderFactory, MessageFactory

LIST = "/admin/accounts/emailaccount/"


@pytest.fixture
def operator(committed_db):
    return UserFactory(username="operator", is_staff=True, is_superuser=True)


@pytest.fixture
def operator_client(operator):
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def accounts(tenant_a, tenant_b):
    """One account in each tenant, owned by a member (a sync needs one)."""
    made = []
    for tenant, address in ((tenant_a, "ann@a.example"), (tenant_b, "ben@b.example")):
        owner = UserFactory(username=address.split("@")[0])
        MembershipFactory(tenant=tenant, user=owner, role="member")
        made.append(EmailAccountFactory(tenant=tenant, user=owner, email_address=address))
    return made


def rows(page: str) -> list[str]:
    """The list's rows, as text: one per account (an empty list has no table)."""
    if 'id="result_list"' not in page:
        assert "0 email accounts" in page
        return []
    body = page.split('id="result_list"', 1)[1].split("</table>", 1)[0]
    return body.split("<tr")[2:]  # the header row first


def row_of(page: str, address: str) -> str:
    [row] = [row for row in rows(page) if address in row]
    return row


def broker_messages() -> list[dict]:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return [json.loads(raw) for raw in client.lrange("celery", 0, -1)]


def test_the_list_shows_each_accounts_sync_state_last_sync_error_and_messages(operator_client, accounts):
    ann, ben = accounts
    folder = FolderFactory(account=ann, name="INBOX", type="inbox")
    MessageFactory.create_batch(3, folder=folder)
    with tenant_scope(ben.tenant_id):
        EmailAccount.objects.filter(id=ben.id).update(
            last_sync_at=timezone.now(), last_sync_error="cannot connect to imap.b.example"
        )
    sync_status.sync_status_set(ben.id, state=sync_status.FAILED, error="cannot connect")

    page = operator_client.get(LIST).content.decode()

    ann_row, ben_row = row_of(page, "ann@a.example"), row_of(page, "ben@b.example")
    assert '<td class="field-sync_state">idle</td>' in ann_row
    assert '<td class="field-message_count">3</td>' in ann_row
    assert '<td class="field-sync_state">failed</td>' in ben_row
    assert "cannot connect to imap.b.example" in ben_row
    assert '<td class="field-message_count">0</td>' in ben_row
    assert ann.password_encrypted not in page and "password" not in page.split('id="result_list"')[1]


def test_the_list_filters_by_sync_state_and_tenant(operator_client, accounts, tenant_b):
    ann, ben = accounts
    sync_status.sync_status_set(ann.id, state=sync_status.RUNNING)
    off = EmailAccountFactory(tenant=tenant_b, user=ben.user, email_address="off@b.example", is_enabled=False)

    def listed(query: str) -> set[str]:
        page = operator_client.get(LIST + query).content.decode()
        return {a for a in ("ann@a.example", "ben@b.example", "off@b.example") if a in "".join(rows(page))}

    assert listed("?sync_state=running") == {"ann@a.example"}
    assert listed("?sync_state=idle") == {"ben@b.example"}
    assert listed("?sync_state=disabled") == {off.email_address}
    assert listed(f"?tenant__id__exact={tenant_b.id}") == {"ben@b.example", "off@b.example"}
    assert listed(f"?tenant__id__exact={tenant_b.id}&sync_state=running") == set()


def test_the_list_filters_by_tenant_first_and_by_the_known_sync_states_only(operator_client, accounts):
    filters = operator_client.get(LIST).context["cl"].filter_specs

    assert [spec.title for spec in filters[:2]] == ["tenant", "sync state"]
    assert [value for value, _ in filters[1].lookup_choices] == [*sync_status.STATES, "disabled"]
    # Any other state is refused before an account or a status is read.
    response = operator_client.get(LIST + "?sync_state=anything")
    assert response.status_code == 302 and response.url.endswith("?e=1")


def test_sync_now_queues_a_sync_with_ids_only(operator_client, accounts, tenant_b):
    ann, ben = accounts
    off = EmailAccountFactory(tenant=tenant_b, user=ben.user, email_address="off@b.example", is_enabled=False)

    response = operator_client.post(
        LIST, {"action": "sync_now", "_selected_action": [str(ann.id), str(off.id)]}, follow=True
    )

    said = [str(m) for m in response.context["messages"]]
    assert said == [
        "Queued 1 sync(s); 0 joined one already queued or running.",
        "1 skipped: disabled or deleted.",
    ]
    [queued] = broker_messages()
    assert queued["headers"]["task"] == "mailboxes.tasks.sync_account"
    args, kwargs, _ = json.loads(base64.b64decode(queued["body"]))
    assert args == [] and kwargs == {"tenant_id": str(ann.tenant_id), "account_id": str(ann.id)}
    assert "mail-password" not in json.dumps(queued)
    status = sync_status.sync_status_get(ann.id)
    assert status["state"] == "queued" and status["task_id"] == queued["headers"]["id"]
    assert sync_status.sync_status_get(off.id)["state"] == "idle"
    assert '<td class="field-sync_state">queued</td>' in row_of(response.content.decode(), "ann@a.example")

    # A second "sync now" joins the queued one: still one task.
    operator_client.post(LIST, {"action": "sync_now", "_selected_action": [str(ann.id)]})
    assert len(broker_messages()) == 1


def test_disable_and_enable_go_through_the_service_audited(operator_client, operator, accounts):
    ann, ben = accounts

    response = operator_client.post(
        LIST, {"action": "disable_accounts", "_selected_action": [str(ann.id)]}, follow=True
    )

    assert [str(m) for m in response.context["messages"]] == ["Disabled 1 account(s)."]
    assert '<td class="field-sync_state">disabled</td>' in row_of(response.content.decode(), "ann@a.example")
    with tenant_scope(ann.tenant_id):
        assert EmailAccount.objects.get(id=ann.id).is_enabled is False
        [entry] = AuditLog.objects.filter(action="account.update", object_id=ann.id)
    assert entry.actor_id == operator.id
    assert entry.changes == {"is_enabled": {"old": True, "new": False}}
    assert entry.ip_address == "127.0.0.1"
    with tenant_scope(ben.tenant_id):
        assert EmailAccount.objects.get(id=ben.id).is_enabled is True

    operator_client.post(LIST, {"action": "enable_accounts", "_selected_action": [str(ann.id), str(ben.id)]})

    with tenant_scope(ann.tenant_id):
        assert EmailAccount.objects.get(id=ann.id).is_enabled is True
        assert AuditLog.objects.filter(action="account.update", object_id=ann.id).count() == 2
    with tenant_scope(ben.tenant_id):  # enabled already: no change, no entry
        assert not AuditLog.objects.filter(action="account.update", object_id=ben.id).exists()


def test_the_list_reads_a_page_in_queries_that_do_not_grow_with_its_rows(operator_client, accounts, tenant_a):
    def queries() -> int:
        with (
            CaptureQueriesContext(connections["default"]) as default,
            CaptureQueriesContext(connections["admin"]) as operator_reads,
        ):
            assert operator_client.get(LIST).status_code == 200
        return len(default) + len(operator_reads)

    few = queries()
    owner = accounts[0].user
    for n in range(5):
        account = EmailAccountFactory(tenant=tenant_a, user=owner, email_address=f"more{n}@a.example")
        MessageFactory(folder=FolderFactory(account=account, name="INBOX", type="inbox"))
        sync_status.sync_status_set(account.id, state=sync_status.QUEUED)

    assert queries() == few


@pytest.fixture
def viewer_client(committed_db):
    """A staff member who may only look at the accounts."""
    from django.contrib.auth.models import Permission

    viewer = UserFactory(username="viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_emailaccount"))
    client = Client()
    client.force_login(viewer)
    return client


def test_a_viewer_is_offered_no_action_and_a_forged_one_changes_nothing(viewer_client, accounts):
    ann, _ = accounts

    page = viewer_client.get(LIST)

    assert page.status_code == 200 and "ann@a.example" in page.content.decode()
    for action in ("sync_now", "disable_accounts", "enable_accounts"):
        assert f'value="{action}"' not in page.content.decode()
    for action in ("sync_now", "disable_accounts"):
        viewer_client.post(LIST, {"action": action, "_selected_action": [str(ann.id)]})
    with tenant_scope(ann.tenant_id):
        assert EmailAccount.objects.get(id=ann.id).is_enabled is True
        assert not AuditLog.objects.filter(object_id=ann.id, action="account.update").exists()
    assert broker_messages() == []
    assert sync_status.sync_status_get(ann.id)["state"] == "idle"
