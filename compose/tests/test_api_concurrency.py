"""Two requests with one Idempotency-Key at the same moment queue one
message. Real commits (`committed_db`): the second request must wait on the
first's uncommitted key and then read its result."""

import threading

import pytest
from celery import current_app
from django.db import connections

from accounts.tests.factories import EmailAccountFactory
from compose import services
from compose.models import Draft, SendQueueItem
from compose.tests.test_api import body
from conftest import bearer_client
from emailclient.core.tenancy import tenant_scope


@pytest.fixture
def sender(tenant_a, user_a):
    return EmailAccountFactory(tenant=tenant_a, user=user_a, smtp_hostname="smtp.example.com")


@pytest.fixture
def queued(monkeypatch):
    names = []
    monkeypatch.setattr(current_app, "send_task", lambda name, *args, **kwargs: names.append(name))
    return names


def test_two_concurrent_requests_with_one_key_queue_one_message(
    committed_db,
    tenant_a,
    user_a,
    sender,
    queued,
    monkeypatch,
):
    """The second request waits on the key's unique index until the first
    commits, then answers with its result."""
    build = services.message_build
    started = threading.Event()

    def slow_build(*args, **kwargs):
        started.set()
        threading.Event().wait(0.5)  # the other request arrives meanwhile
        return build(*args, **kwargs)

    monkeypatch.setattr(services, "message_build", slow_build)
    payload = body(sender)
    responses = {}

    def post(name: str) -> None:
        try:
            client = bearer_client(user_a, tenant_a)
            responses[name] = client.post(
                "/api/compose/send", payload, format="json", HTTP_IDEMPOTENCY_KEY="same"
            )
        finally:
            connections.close_all()

    first = threading.Thread(target=post, args=("first",))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=post, args=("second",))
    second.start()
    first.join(20)
    second.join(20)

    assert responses["first"].status_code == responses["second"].status_code == 202
    assert responses["first"].json()["id"] == responses["second"].json()["id"]
    with tenant_scope(tenant_a.id):
        assert SendQueueItem.objects.count() == Draft.objects.count() == 1
    assert queued == ["compose.tasks.send"]
