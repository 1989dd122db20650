"""The operator's admin of drafts and the outbox: every tenant, no bodies,
cancelling and resending (an `uncertain` item) through the services."""

import base64
import json

import pytest
import redis
from celery import current_app
from django.conf import settings
from django.test import Client

from compose.models import Draft, SendQueueItem
from compose.tests.factories import DraftFactory
from emailclient.core.models import AuditLog
from emailclient.core.tenancy import tenant_scope
from emailclient.core.tests.factories import UserFactory


@pytest.fixture
def operator_client(committed_db, monkeypatch):
    monkeypatch.setattr(current_app, "send_task", lambda *args, **kwargs: None)
    operator = UserFactory(username="operator", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(operator)
    return client


def queued(draft: Draft) -> SendQueueItem:
    with tenant_scope(draft.tenant_id):
        Draft.objects.filter(id=draft.id).update(status="queued", message_id="<q@example.com>")
        return SendQueueItem.objects.create(
            tenant_id=draft.tenant_id,
            draft=draft,
            account=draft.account,
            message_id="<q@example.com>",
            raw_blob_key="0" * 64,
            size_bytes=1,
            envelope_from=draft.account.email_address,
            recipients=["r@example.com"],
        )


def test_lists_show_every_tenants_items_without_bodies(operator_client, tenant_a, tenant_b):
    mine = DraftFactory(account__tenant=tenant_a, subject="Subject A", text_body="SECRET-BODY-A")
    theirs = DraftFactory(account__tenant=tenant_b, subject="Subject B", html_body="<p>SECRET-BODY-B</p>")
    queued(theirs)

    drafts = operator_client.get("/admin/compose/draft/").content.decode()
    outbox = operator_client.get("/admin/compose/sendqueueitem/").content.decode()
    detail = operator_client.get(f"/admin/compose/draft/{mine.id}/change/").content.decode()

    assert "Subject A" in drafts and "Subject B" in drafts
    assert "q@example.com" in outbox
    for page in (drafts, outbox, detail):
        assert "SECRET-BODY" not in page
    assert operator_client.get("/admin/compose/draft/add/").status_code == 403


def test_the_cancel_action_goes_through_the_service(operator_client, tenant_b):
    operator = UserFactory(username="operator")
    waiting = DraftFactory(account__tenant=tenant_b)
    queued(waiting)
    plain = DraftFactory(account__tenant=tenant_b)

    response = operator_client.post(
        "/admin/compose/draft/",
        {"action": "cancel_sends", "_selected_action": [str(waiting.id), str(plain.id)]},
    )

    assert response.status_code == 302
    with tenant_scope(tenant_b.id):
        assert Draft.objects.get(id=waiting.id).status == "cancelled"
        assert Draft.objects.get(id=plain.id).status == "draft"
        audit = AuditLog.objects.get(action="compose.send.cancelled")
    assert audit.object_id == waiting.id and audit.actor_id == operator.id


def test_the_cancel_action_skips_a_draft_deleted_meanwhile(operator_client, tenant_b, monkeypatch):
    from django.contrib import admin as django_admin
    from django.test import RequestFactory

    waiting, gone = DraftFactory(account__tenant=tenant_b), DraftFactory(account__tenant=tenant_b)
    queued(waiting)
    queued(gone)
    selected = [(waiting.id, tenant_b.id), (gone.id, tenant_b.id)]
    with tenant_scope(tenant_b.id):
        Draft.objects.filter(id=gone.id).delete()  # its removal finished between the list and the action

    class Selection:
        """The selected rows as the action reads them, a moment before one went."""

        def values_list(self, *fields):
            return self

        def order_by(self, *fields):
            return sorted(selected)

    model_admin = django_admin.site._registry[Draft]
    said = []
    monkeypatch.setattr(
        model_admin, "message_user", lambda request, message, level=None: said.append(message)
    )
    request = RequestFactory().post("/admin/compose/draft/")
    request.user = UserFactory(username="operator", is_staff=True, is_superuser=True)

    model_admin.cancel_sends(request, Selection())

    with tenant_scope(tenant_b.id):
        assert Draft.objects.get(id=waiting.id).status == "cancelled"
    assert "Cancelled 1 send(s)." in said
    assert any("1 could not be cancelled" in message for message in said)


def uncertain(draft: Draft, attempts: int = 3) -> SendQueueItem:
    """An item whose last attempt's outcome is unknown (the connection went
    after DATA): what the outbox leaves for a person to decide."""
    item = queued(draft)
    with tenant_scope(draft.tenant_id):
        Draft.objects.filter(id=draft.id).update(status="uncertain")
        SendQueueItem.objects.filter(id=item.id).update(attempts=attempts, phase="data", error="lost")
    return item


def broker_messages() -> list[dict]:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return [json.loads(raw) for raw in client.lrange("celery", 0, -1)]


@pytest.fixture
def resending_client(committed_db, blobs):
    """An operator's client whose sends reach the real broker."""
    client = Client()
    client.force_login(UserFactory(username="operator", is_staff=True, is_superuser=True))
    return client


def test_resend_queues_an_uncertain_item_again_through_the_service(resending_client, tenant_a, tenant_b):
    unsure = DraftFactory(account__tenant=tenant_b, subject="Unsure")
    item = uncertain(unsure)
    sent = DraftFactory(account__tenant=tenant_a, subject="Sent")
    queued(sent)
    with tenant_scope(tenant_a.id):
        Draft.objects.filter(id=sent.id).update(status="sent")

    response = resending_client.post(
        "/admin/compose/sendqueueitem/", {"action": "resend", "_selected_action": [str(item.id)]}, follow=True
    )

    assert [str(m) for m in response.context["messages"]] == ["Queued 1 send(s) again."]
    with tenant_scope(tenant_b.id):
        assert Draft.objects.get(id=unsure.id).status == "queued"
        again = SendQueueItem.objects.get(id=item.id)
        [audit] = AuditLog.objects.filter(action="compose.send.queued", object_id=unsure.id)
    # The same Message-ID, a fresh budget, the last outcome cleared.
    assert again.message_id == "<q@example.com>" and again.attempts == 0 and again.phase == ""
    assert audit.actor.username == "operator"
    assert audit.changes["resend"] is True and audit.changes["previous_attempts"] == 3
    [task] = broker_messages()
    assert task["headers"]["task"] == "compose.tasks.send"
    _, kwargs, _ = json.loads(base64.b64decode(task["body"]))
    assert kwargs["draft_id"] == str(unsure.id) and kwargs["tenant_id"] == str(tenant_b.id)
    assert '<td class="field-draft_status">queued</td>' in response.content.decode()

    # Anything but an uncertain item is refused, left as it is.
    with tenant_scope(tenant_a.id):
        sent_item = SendQueueItem.objects.get(draft_id=sent.id)
    response = resending_client.post(
        "/admin/compose/sendqueueitem/",
        {"action": "resend", "_selected_action": [str(sent_item.id)]},
        follow=True,
    )
    [said] = [str(m) for m in response.context["messages"]]
    assert said.startswith("1 not resent")
    with tenant_scope(tenant_a.id):
        assert Draft.objects.get(id=sent.id).status == "sent"
    assert len(broker_messages()) == 1


def test_resend_from_the_drafts_list(resending_client, tenant_a):
    unsure = DraftFactory(account__tenant=tenant_a)
    uncertain(unsure)

    resending_client.post("/admin/compose/draft/", {"action": "resend", "_selected_action": [str(unsure.id)]})

    with tenant_scope(tenant_a.id):
        assert Draft.objects.get(id=unsure.id).status == "queued"


@pytest.fixture
def viewer_client(committed_db, blobs):
    """A staff member who may only look at drafts and the outbox."""
    from django.contrib.auth.models import Permission

    viewer = UserFactory(username="viewer", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_draft", "view_sendqueueitem"]))
    client = Client()
    client.force_login(viewer)
    return client


def test_a_viewer_is_offered_no_action_and_a_forged_one_changes_nothing(viewer_client, tenant_a):
    unsure, waiting = DraftFactory(account__tenant=tenant_a), DraftFactory(account__tenant=tenant_a)
    item = uncertain(unsure)
    queued(waiting)

    for url, actions in (
        ("/admin/compose/draft/", ("cancel_sends", "resend")),
        ("/admin/compose/sendqueueitem/", ("resend",)),
    ):
        page = viewer_client.get(url)
        assert page.status_code == 200
        for action in actions:
            assert f'value="{action}"' not in page.content.decode()

    viewer_client.post("/admin/compose/draft/", {"action": "resend", "_selected_action": [str(unsure.id)]})
    viewer_client.post(
        "/admin/compose/sendqueueitem/", {"action": "resend", "_selected_action": [str(item.id)]}
    )
    viewer_client.post(
        "/admin/compose/draft/", {"action": "cancel_sends", "_selected_action": [str(waiting.id)]}
    )

    with tenant_scope(tenant_a.id):
        assert Draft.objects.get(id=unsure.id).status == "uncertain"
        assert Draft.objects.get(id=waiting.id).status == "queued"
        assert not AuditLog.objects.filter(action__startswith="compose.send").exists()
    assert broker_messages() == []


def test_resend_refuses_what_is_not_uncertain_or_deleted(resending_client, tenant_a):
    """A draft never sent, a failed one and an uncertain one its user
    deleted: draft_send would take the first two (a resend of a failed
    item is the user's to make) and the third; the action refuses them."""
    plain, failed, deleted = (DraftFactory(account__tenant=tenant_a) for _ in range(3))
    items = [queued(plain), queued(failed), uncertain(deleted)]
    with tenant_scope(tenant_a.id):
        Draft.objects.filter(id=plain.id).update(status="draft")
        Draft.objects.filter(id=failed.id).update(status="failed")
        Draft.objects.filter(id=deleted.id).update(is_deleted=True)

    response = resending_client.post(
        "/admin/compose/sendqueueitem/",
        {"action": "resend", "_selected_action": [str(item.id) for item in items]},
        follow=True,
    )

    [said] = [str(m) for m in response.context["messages"]]
    assert said.startswith("3 not resent")
    with tenant_scope(tenant_a.id):
        statuses = dict(Draft.objects.values_list("id", "status"))
        assert not AuditLog.objects.filter(action="compose.send.queued").exists()
    assert statuses == {plain.id: "draft", failed.id: "failed", deleted.id: "uncertain"}
    assert broker_messages() == []


def test_cancel_refuses_a_deleted_draft(operator_client, tenant_a):
    gone = DraftFactory(account__tenant=tenant_a)
    queued(gone)
    with tenant_scope(tenant_a.id):
        Draft.objects.filter(id=gone.id).update(is_deleted=True)

    response = operator_client.post(
        "/admin/compose/draft/", {"action": "cancel_sends", "_selected_action": [str(gone.id)]}, follow=True
    )

    assert [str(m) for m in response.context["messages"]] == [
        "1 could not be cancelled (not scheduled or queued, or gone)."
    ]
    with tenant_scope(tenant_a.id):
        assert Draft.objects.get(id=gone.id).status == "queued"
