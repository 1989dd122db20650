"""The operator runs the service from the admin, in a real browser against the
development server (see conftest.py): "sync now" puts a sync task on the real
broker and the list shows the account queued; "disable" and "enable" flip
the flag the list shows, audited; "resend" queues an uncertain send again;
the audit log's filters narrow it; the periodic tasks' pages open; a
tenant's usage is on the tenants list. Screenshots go to var/screenshots/."""

import base64
import json

import pytest
import redis
from django.conf import settings
from playwright.sync_api import expect

from accounts.models import EmailAccount
from accounts.services import account_update
from compose.models import SendQueueItem
from compose.tests.factories import DraftFactory
from emailclient.core.tenancy import tenant_scope

from .test_pages import log_in

pytestmark = pytest.mark.browser


def broker_tasks() -> list[tuple[str, dict]]:
    """The tasks waiting on the broker's default queue: (name, kwargs)."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    tasks = []
    for raw in client.lrange("celery", 0, -1):
        message = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        tasks.append((message["headers"]["task"], kwargs))
    return tasks


def run_action(page, row_id, action: str) -> None:
    """Tick one row of a change list, choose `action` and run it."""
    page.locator(f'input.action-select[value="{row_id}"]').check()
    page.select_option("select[name=action]", action)
    page.get_by_role("button", name="Go").click()
    page.wait_for_load_state()


def row(page, text: str):
    return page.locator("#result_list tbody tr", has_text=text)


@pytest.fixture
def uncertain_send(site, blobs_for_server):
    """Rita's send whose outcome is unknown, on an account that can send."""
    with tenant_scope(site.tenant.id):
        EmailAccount.objects.filter(id=site.account.id).update(
            smtp_hostname="smtp.acme.example", smtp_port=465, smtp_encryption="tls"
        )
        account = EmailAccount.objects.get(id=site.account.id)
        draft = DraftFactory(
            account=account, subject="Unsure of Acme", status="uncertain", message_id="<u@acme>"
        )
        SendQueueItem.objects.create(
            tenant_id=draft.tenant_id,
            draft=draft,
            account=account,
            message_id="<u@acme>",
            raw_blob_key="0" * 64,
            size_bytes=1,
            envelope_from=account.email_address,
            recipients=["reader@example.com"],
            attempts=3,
            phase="data",
        )
    return draft


@pytest.fixture
def blobs_for_server():
    """The live server writes a resent message into the suite's blob store."""
    settings.BLOB_STORAGE_DIR.mkdir(parents=True, exist_ok=True)


@pytest.fixture
def account_secrets(site) -> list[str]:
    """Gus's passwords (an SMTP one stored too) and their stored, encrypted
    forms: none may reach a page. Read before the browser's loop starts."""
    with tenant_scope(site.other_tenant.id):
        account_update(
            account=EmailAccount.objects.select_related("tenant").get(id=site.other_account.id),
            actor=None,
            data={
                "smtp_hostname": "smtp.globex.example",
                "smtp_port": 465,
                "smtp_encryption": "tls",
                "smtp_username": "gus",
                "smtp_password": "smtp-password",
            },
            verify=False,
        )
        stored = EmailAccount.objects.get(id=site.other_account.id)
    secrets = ["mail-password", "smtp-password", stored.password_encrypted, stored.smtp_password_encrypted]
    assert all(secrets)
    return secrets


def test_operator_syncs_disables_and_enables_accounts(dev_server, site, account_secrets, visit):
    secrets = account_secrets
    visit = visit(dev_server)
    log_in(visit, "/admin/login/?next=/admin/accounts/emailaccount/", "operator")
    page = visit.page
    rita, gus = row(page, "rita@acme.example"), row(page, "gus@globex.example")
    expect(rita.locator("td.field-sync_state")).to_have_text("idle")
    expect(rita.locator("td.field-message_count")).to_have_text("1")
    assert broker_tasks() == []

    run_action(page, site.account.id, "sync_now")

    expect(page.locator(".messagelist")).to_contain_text("Queued 1 sync(s)")
    expect(rita.locator("td.field-sync_state")).to_have_text("queued")
    expect(gus.locator("td.field-sync_state")).to_have_text("idle")
    # The task on the real broker, with ids only.
    assert broker_tasks() == [
        (
            "mailboxes.tasks.sync_account",
            {"tenant_id": str(site.tenant.id), "account_id": str(site.account.id)},
        )
    ]
    visit.shot("sync-now")
    # The sidebar's filter by state narrows the list to it.
    page.locator("#changelist-filter details[data-filter-title='sync state']").get_by_role(
        "link", name="queued", exact=True
    ).click()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(row(page, "rita@acme.example")).to_be_visible()

    page = visit.goto("/admin/accounts/emailaccount/")
    run_action(page, site.other_account.id, "disable_accounts")
    expect(page.locator(".messagelist")).to_contain_text("Disabled 1 account(s).")
    gus = row(page, "gus@globex.example")
    expect(gus.locator("td.field-sync_state")).to_have_text("disabled")
    expect(gus.locator("td.field-is_enabled img")).to_have_attribute("alt", "False")
    visit.shot("disabled")

    run_action(page, site.other_account.id, "enable_accounts")
    expect(page.locator(".messagelist")).to_contain_text("Enabled 1 account(s).")
    expect(gus.locator("td.field-is_enabled img")).to_have_attribute("alt", "True")
    expect(gus.locator("td.field-sync_state")).to_have_text("idle")
    # No secret on the list or the account's page: neither the passwords
    # nor their stored (encrypted) forms.
    assert not [s for s in secrets if s in page.content()]
    page = visit.goto(f"/admin/accounts/emailaccount/{site.other_account.id}/change/")
    expect(page.locator("input[name=password]")).to_have_value("")
    expect(page.locator("input[name=smtp_password]")).to_have_value("")
    assert not [s for s in secrets if s in page.content()]

    # Both changes are in the audit log, the operator as their actor.
    page = visit.goto(
        f"/admin/core/auditlog/?object_id={site.other_account.id}&action=account.update"
        f"&actor__id__exact={site.operator.id}"
    )
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    expect(page.locator("#result_list tbody td.field-actor").first).to_have_text("operator")

    # Each tenant's usage on the tenants list.
    page = visit.goto("/admin/core/tenant/")
    acme = row(page, "acme")
    expect(acme.locator("td.field-accounts")).to_have_text("1")
    expect(acme.locator("td.field-messages")).to_have_text("1")
    visit.shot("tenants")
    visit.check()


def test_operator_resends_reads_the_log_and_the_periodic_tasks(dev_server, uncertain_send, visit):
    visit = visit(dev_server)
    log_in(visit, "/admin/login/?next=/admin/compose/sendqueueitem/", "operator")
    page = visit.page
    item = row(page, "u@acme")
    expect(item.locator("td.field-draft_status")).to_have_text("uncertain")
    outbox_item = page.locator("#result_list input.action-select").first.get_attribute("value")

    run_action(page, outbox_item, "resend")

    expect(page.locator(".messagelist")).to_contain_text("Queued 1 send(s) again.")
    expect(item.locator("td.field-draft_status")).to_have_text("queued")
    expect(item.locator("td.field-attempts")).to_have_text("0")
    [(name, kwargs)] = broker_tasks()
    assert name == "compose.tasks.send" and kwargs["draft_id"] == str(uncertain_send.id)
    visit.shot("resend")

    # The audit log, narrowed by its sidebar to the sends queued.
    page = visit.goto("/admin/core/auditlog/")
    expect(page.locator("#result_list")).to_contain_text("account.create")
    page.locator("#changelist-filter details[data-filter-title='action']").get_by_role(
        "link", name="compose.send.queued", exact=True
    ).click()
    entries = page.locator("#result_list tbody tr")
    expect(entries).to_have_count(1)
    expect(entries.first.locator("td.field-actor")).to_have_text("operator")
    visit.shot("audit-filtered")
    # Read-only: its entry opens without a form to save.
    entries.first.locator("th a").click()
    expect(page.locator("#content")).to_contain_text("compose.send.queued")
    expect(page.locator("input[type=submit][name=_save]")).to_have_count(0)

    page = visit.goto("/admin/")
    page.get_by_role("link", name="Periodic tasks", exact=True).click()
    expect(page.locator("#content h1")).to_contain_text("periodic task")
    visit.shot("periodic-tasks")
    visit.check()
