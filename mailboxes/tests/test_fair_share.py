"""One tenant must not starve the others: sync slots per tenant and per mail
server host in Redis, deadlines on slow servers, storage quotas, and syncs
stopped for a deactivated tenant or a removed member. Real Redis, Dovecot
and PostgreSQL; the slow server is a tarpit (mailboxes/tests/tarpit.py)."""

import json
import socket
import time
import uuid
from email.message import EmailMessage

import pytest
import redis
from django.conf import settings

from accounts.tests.factories import EmailAccountFactory
from emailclient.core.models import Tenant, TenantMembership
from emailclient.core.tenancy import tenant_scope
from mailboxes import sync_status
from mailboxes.sync_slots import SlotRequest, slots_acquire, slots_held, slots_in_use, slots_release
from mailboxes.tasks import slot_request, sync_account_task, write_back_task
from mailboxes.tests.tarpit import Tarpit
from mailboxes.tests.test_imap_sync import seed
from messages.models import Message, MessageChange, QuarantinedMessage
from messages.tests.corpus import corpus_files


def reload(account):
    with tenant_scope(account.tenant_id):
        return type(account).objects.get(id=account.id)


def run_task(account, task_id=None):
    kwargs = {"tenant_id": str(account.tenant_id), "account_id": str(account.id)}
    return sync_account_task.apply(kwargs=kwargs, task_id=task_id or str(uuid.uuid4())).get()


def stored(account) -> int:
    with tenant_scope(account.tenant_id):
        return Message.objects.filter(account=account).count()


def _request(tenant_limit=2, host_limit=3, host="imap.example.com") -> SlotRequest:
    return SlotRequest(tenant_id=uuid.uuid4(), tenant_limit=tenant_limit, host=host, host_limit=host_limit)


# --- The semaphores ------------------------------------------------------------------------


def test_a_tenant_gets_at_most_its_slots_across_holders():
    request = _request(tenant_limit=2)
    assert slots_acquire(request=request, holder="a") == ""
    assert slots_acquire(request=request, holder="b") == ""
    assert "max_concurrent_syncs" in slots_acquire(request=request, holder="c")
    assert slots_acquire(request=request, holder="a") == ""  # a holder taking again renews
    slots_release(request=request, holder="a")
    assert slots_acquire(request=request, holder="c") == ""
    assert slots_in_use(request=request) == (2, 2)


def test_a_host_is_shared_by_every_tenant():
    first = _request(host_limit=1, host="IMAP.Example.com")
    other_tenant = _request(host_limit=1, host="imap.example.com.")
    assert slots_acquire(request=first, holder="a") == ""
    assert "SYNC_MAX_CONCURRENT_PER_HOST" in slots_acquire(request=other_tenant, holder="b")
    # Both or neither: the refused one holds no tenant slot either.
    assert slots_in_use(request=other_tenant) == (0, 1)


@pytest.mark.parametrize(
    ("typed", "again"),
    [
        ("Mail.Exämple.COM.", "mail.xn--exmple-cua.com"),  # IDNA, case, trailing dot
        (" imap.example.org", "IMAP.EXAMPLE.ORG"),
        ("[2001:DB8::1]", "2001:db8:0::1"),
    ],
)
def test_a_host_is_one_server_however_its_name_was_typed(typed, again):
    assert slots_acquire(request=_request(host_limit=1, host=typed), holder="a") == ""
    refused = slots_acquire(request=_request(host_limit=1, host=again), holder="b")
    assert "SYNC_MAX_CONCURRENT_PER_HOST" in refused


def test_a_killed_holder_does_not_keep_its_slot():
    request = _request(tenant_limit=1)
    assert slots_acquire(request=request, holder="killed", lease=1.0) == ""  # never released
    assert slots_acquire(request=request, holder="next", lease=1.0) != ""
    time.sleep(1.1)
    assert slots_acquire(request=request, holder="next", lease=1.0) == ""


def test_a_running_holder_keeps_its_slot_past_the_lease():
    request = _request(tenant_limit=1)
    assert slots_acquire(request=request, holder="runner", lease=0.6) == ""
    with slots_held(request=request, holder="runner", lease=0.6):
        time.sleep(1.0)  # renewed every 0.2 s
        assert slots_acquire(request=request, holder="other", lease=0.6) != ""
    assert slots_acquire(request=request, holder="other", lease=0.6) == ""  # released at the end


# --- The task --------------------------------------------------------------------------------


def _broker_messages() -> list[dict]:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return [json.loads(raw) for raw in client.lrange("celery", 0, -1)]


@pytest.mark.django_db
def test_a_sync_without_a_slot_is_queued_again_and_says_it_waits(imap_account, mailbox, settings):
    seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")[:3]})
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("celery")
    with tenant_scope(imap_account.tenant_id):
        Tenant.objects.filter(id=imap_account.tenant_id).update(max_concurrent_syncs=1)
    with tenant_scope(imap_account.tenant_id):
        request = slot_request(type(imap_account).objects.select_related("tenant").get(id=imap_account.id))
    assert request.tenant_limit == 1
    assert slots_acquire(request=request, holder="another-sync") == ""

    result = run_task(imap_account, task_id="waiting-sync")

    assert result["result"] == "waiting"
    status = sync_status.sync_status_get(imap_account.id)
    assert status["state"] == sync_status.WAITING
    assert "max_concurrent_syncs" in status["detail"]
    assert stored(imap_account) == 0  # no login, no worker held
    (queued,) = [m for m in _broker_messages() if m["headers"]["id"] == "waiting-sync"]
    assert queued["headers"]["eta"]  # again, later, the same task id (triggers keep joining it)

    slots_release(request=request, holder="another-sync")
    assert run_task(imap_account, task_id="waiting-sync")["result"] == "ok"
    assert stored(imap_account) == 3
    assert sync_status.sync_status_get(imap_account.id)["state"] == sync_status.IDLE
    assert slots_in_use(request=request) == (0, 0)  # released after the sync


@pytest.mark.django_db
def test_a_periodic_sync_that_finds_one_waiting_leaves_it_to_that_one(imap_account):
    with tenant_scope(imap_account.tenant_id):
        Tenant.objects.filter(id=imap_account.tenant_id).update(max_concurrent_syncs=1)
    with tenant_scope(imap_account.tenant_id):
        request = slot_request(type(imap_account).objects.select_related("tenant").get(id=imap_account.id))
    slots_acquire(request=request, holder="another-sync")
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("celery")
    assert run_task(imap_account, task_id="first")["result"] == "waiting"
    # Beat's task comes without a claim: it joins the waiting one, queues nothing.
    assert run_task(imap_account, task_id="beat-tick")["result"] == "joined"
    assert [m["headers"]["id"] for m in _broker_messages()] == ["first"]


@pytest.mark.django_db
def test_a_tarpit_fails_the_sync_at_its_deadline_with_a_clear_state(
    mail_settings, tenant_a, user_a, settings
):
    settings.SYNC_DEADLINE = 1.5
    settings.SYNC_MAX_RETRIES = 3
    tarpit = Tarpit(mode="after_login", interval=0.05, give_up_after=15)
    account = EmailAccountFactory(
        tenant=tenant_a, user=user_a, hostname="127.0.0.1", port=tarpit.port, encryption="none"
    )
    started = time.monotonic()
    try:
        result = run_task(account)
    finally:
        tarpit.close()
    assert time.monotonic() - started < 5  # not retried: a retry would be held as long again
    assert result["result"] == "failed"
    assert "SYNC_DEADLINE" in result["error"]
    assert sync_status.sync_status_get(account.id)["state"] == sync_status.FAILED
    account = reload(account)
    assert "SYNC_DEADLINE" in account.last_sync_error and not account.is_syncing
    assert tarpit.connections == 1


@pytest.mark.django_db
def test_a_trickled_greeting_fails_at_the_connection_deadline(mail_settings, tenant_a, user_a, settings):
    settings.MAIL_CONNECTION_DEADLINE = 1.0
    tarpit = Tarpit(mode="greeting", interval=0.05, give_up_after=15)
    account = EmailAccountFactory(
        tenant=tenant_a, user=user_a, hostname="127.0.0.1", port=tarpit.port, encryption="none"
    )
    try:
        result = run_task(account)
    finally:
        tarpit.close()
    assert result["result"] == "failed"
    assert "MAIL_CONNECTION_DEADLINE" in reload(account).last_sync_error


@pytest.mark.django_db
def test_a_slow_dns_server_fails_at_the_connection_deadline(
    mail_settings, tenant_a, user_a, settings, monkeypatch
):
    # getaddrinfo takes no timeout; a slow DNS server (simulated: the
    # resolver sleeps) must not hold the worker past MAIL_CONNECTION_DEADLINE.
    settings.MAIL_CONNECTION_DEADLINE = 1.0
    resolve = socket.getaddrinfo

    def slow_dns(host, *args, **kwargs):
        if host == "slow-dns.example.com":
            time.sleep(4)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_dns)
    account = EmailAccountFactory(tenant=tenant_a, user=user_a, hostname="slow-dns.example.com", port=993)
    started = time.monotonic()
    result = run_task(account)
    assert time.monotonic() - started < 2.5
    assert result["result"] == "failed"
    error = reload(account).last_sync_error
    assert "MAIL_CONNECTION_DEADLINE" in error and "slow-dns.example.com" in error


@pytest.mark.django_db
def test_an_internal_address_stays_out_of_the_accounts_error(mail_settings, tenant_a, user_a, settings):
    settings.MAIL_ALLOW_PRIVATE_HOSTS = False
    account = EmailAccountFactory(tenant=tenant_a, user=user_a, hostname="localhost", port=993)
    assert run_task(account)["result"] == "failed"
    error = reload(account).last_sync_error
    assert "localhost" in error
    assert "127.0.0.1" not in error and "::1" not in error


# --- Who may sync ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_deactivated_tenant_does_not_sync(imap_account, mailbox):
    seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")[:2]})
    Tenant.objects.filter(id=imap_account.tenant_id).update(is_active=False)
    result = run_task(imap_account)
    assert result["result"] == "skipped"
    assert "deactivated" in result["reason"]
    assert stored(imap_account) == 0
    status = sync_status.sync_status_get(imap_account.id)
    assert status["state"] == sync_status.IDLE and "deactivated" in status["detail"]

    Tenant.objects.filter(id=imap_account.tenant_id).update(is_active=True)
    assert run_task(imap_account)["result"] == "ok"
    assert stored(imap_account) == 2


@pytest.mark.django_db
def test_a_removed_members_accounts_do_not_sync(imap_account, mailbox, user_a):
    seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")[:2]})
    with tenant_scope(imap_account.tenant_id):
        TenantMembership.objects.filter(user=user_a).delete()
    result = run_task(imap_account)
    assert result["result"] == "skipped"
    assert "no longer an active member" in result["reason"]
    assert stored(imap_account) == 0


@pytest.mark.django_db
def test_a_deactivated_tenant_writes_nothing_back(imap_account, mailbox, client_a):
    seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")[:1]})
    assert run_task(imap_account)["result"] == "ok"
    with tenant_scope(imap_account.tenant_id):
        message = Message.objects.get(account=imap_account)
    assert (
        client_a.patch(f"/api/messages/{message.id}/", {"is_flagged": False}, format="json").status_code
        == 200
    )
    Tenant.objects.filter(id=imap_account.tenant_id).update(is_active=False)

    result = write_back_task.apply(args=[str(imap_account.tenant_id), str(imap_account.id)]).get()

    assert result["result"] == "skipped"
    mailbox.select_folder("INBOX", readonly=True)
    assert b"\\Flagged" in mailbox.get_flags(mailbox.search(["ALL"]))[message.imap_uid]  # seeded flagged
    with tenant_scope(imap_account.tenant_id):
        assert MessageChange.objects.get(message=message).state == MessageChange.State.PENDING


@pytest.mark.django_db
def test_a_deactivated_users_accounts_do_not_sync(imap_account, mailbox, user_a):
    seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")[:2]})
    type(user_a).objects.filter(id=user_a.id).update(is_active=False)
    assert run_task(imap_account)["result"] == "skipped"
    assert stored(imap_account) == 0


# --- Storage quota ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_over_the_message_quota_the_sync_stores_no_more_and_says_so(imap_account, mailbox):
    paths = corpus_files("notmuch", "threading")
    seeded = seed(mailbox, {"INBOX": paths[:8]})
    assert seeded == 8
    Tenant.objects.filter(id=imap_account.tenant_id).update(max_messages=5)

    result = run_task(imap_account)

    assert result["result"] == "over_quota"
    assert stored(imap_account) == 5
    status = sync_status.sync_status_get(imap_account.id)
    assert status["state"] == sync_status.OVER_QUOTA
    assert "max_messages" in status["detail"]
    assert "Over quota" in reload(imap_account).last_sync_error

    # Nothing stored is lost, and a flag change still syncs.
    mailbox.select_folder("INBOX")
    mailbox.add_flags(mailbox.search(["ALL"])[:1], [b"\\Flagged"])
    assert run_task(imap_account)["result"] == "over_quota"
    assert stored(imap_account) == 5
    with tenant_scope(imap_account.tenant_id):
        first = Message.objects.filter(account=imap_account).order_by("imap_uid").first()
    assert first.is_flagged

    # Raised: the rest comes on the next sync, from where it stopped.
    Tenant.objects.filter(id=imap_account.tenant_id).update(max_messages=None)
    assert run_task(imap_account)["result"] == "ok"
    assert stored(imap_account) == 8
    assert reload(imap_account).last_sync_error == ""


@pytest.mark.django_db
def test_over_the_byte_quota_the_sync_stops_before_the_message_that_does_not_fit(imap_account, mailbox):
    seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")[:4]})
    mailbox.select_folder("INBOX")
    fetched = mailbox.fetch(mailbox.search(["ALL"]), ["RFC822.SIZE"])
    sizes = [data[b"RFC822.SIZE"] for _, data in sorted(fetched.items())]
    Tenant.objects.filter(id=imap_account.tenant_id).update(max_stored_bytes=sum(sizes[:2]) + 1)

    assert run_task(imap_account)["result"] == "over_quota"
    assert stored(imap_account) == 2
    assert "max_stored_bytes" in sync_status.sync_status_get(imap_account.id)["detail"]


def _many_parts(parts: int) -> bytes:
    """A message of `parts` attachments of 4 KB each: quarantined, raw kept,
    once MAIL_MAX_PARTS is below its part count."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.com", "b@example.com", "parts"
    message.set_content("body")
    for i in range(parts):
        message.add_attachment(b"x" * 4096, maintype="application", subtype="octet-stream", filename=f"{i}")
    return message.as_bytes()


def _plain() -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.com", "b@example.com", "plain"
    message.set_content("a normal message")
    return message.as_bytes()


@pytest.mark.django_db
@pytest.mark.parametrize("limit", ["max_messages", "max_stored_bytes"])
def test_quarantined_mail_counts_towards_the_quota(imap_account, mailbox, settings, limit):
    # An outside sender's mail that is quarantined keeps its raw blob: it must
    # not grow the tenant's storage past its quota.
    settings.MAIL_MAX_PARTS = 3
    bad = _many_parts(5)
    mailbox.append("INBOX", bad)
    assert run_task(imap_account)["result"] == "ok"
    with tenant_scope(imap_account.tenant_id):
        (kept,) = QuarantinedMessage.objects.filter(account=imap_account)
    assert kept.raw_blob_key and kept.size_bytes >= len(bad)
    assert stored(imap_account) == 0
    quota = 1 if limit == "max_messages" else kept.size_bytes + 100
    Tenant.objects.filter(id=imap_account.tenant_id).update(**{limit: quota})
    mailbox.append("INBOX", _plain())  # ~250 bytes: fits 100 only if the quarantined blob is not counted

    assert run_task(imap_account)["result"] == "over_quota"
    assert stored(imap_account) == 0
    assert limit in sync_status.sync_status_get(imap_account.id)["detail"]


@pytest.mark.django_db
def test_a_write_back_without_a_slot_waits_off_the_worker(imap_account, mailbox, client_a):
    seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")[:1]})
    assert run_task(imap_account)["result"] == "ok"
    with tenant_scope(imap_account.tenant_id):
        message = Message.objects.get(account=imap_account)
    response = client_a.patch(f"/api/messages/{message.id}/", {"is_flagged": False}, format="json")
    assert response.status_code == 200
    Tenant.objects.filter(id=imap_account.tenant_id).update(max_concurrent_syncs=1)
    with tenant_scope(imap_account.tenant_id):
        request = slot_request(type(imap_account).objects.select_related("tenant").get(id=imap_account.id))
    assert slots_acquire(request=request, holder="a-running-sync") == ""
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("celery")
    args = [str(imap_account.tenant_id), str(imap_account.id)]

    assert write_back_task.apply(args=args, task_id="wb-1").get()["result"] == "waiting"
    assert write_back_task.apply(args=args, task_id="wb-2").get()["result"] == "joined"
    assert [m["headers"]["id"] for m in _broker_messages()] == ["wb-1"]
    mailbox.select_folder("INBOX", readonly=True)
    assert b"\\Flagged" in mailbox.get_flags(mailbox.search(["ALL"]))[message.imap_uid]  # not written yet

    slots_release(request=request, holder="a-running-sync")
    assert write_back_task.apply(args=args, task_id="wb-1").get()["result"] == "ok"
    assert b"\\Flagged" not in mailbox.get_flags(mailbox.search(["ALL"]))[message.imap_uid]
    assert slots_in_use(request=request) == (0, 0)
