"""The outbox against a real SMTP server (the aiosmtpd sink) and the real
Dovecot: what arrives, the Sent copy, threading after a sync, the state
machine's outcomes and the dispatcher. Faults that need a worker killed or
two workers at once are in `test_send_faults.py`."""

import email
import email.policy
import json
import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from compose.mime import (
    OutgoingAttachment,
    OutgoingMessage,
    envelope_recipients,
    message_build,
    message_id_make,
    message_needs_smtputf8,
)
from compose.models import Draft, SendQueueItem, Status
from compose.outbox import draft_send_lock, outbox_dispatch_due, outbox_send, send_request
from compose.tests.conftest import broker_sends
from emailclient.core.models import AuditLog, Tenant, TenantMembership
from emailclient.core.tenancy import tenant_scope
from mailboxes.services import account_sync_run
from messages.blobs import default_store
from messages.models import Folder, Message

# --- Building queued items -------------------------------------------------------------


def queue_message(
    account,
    *,
    to=("Bob <bob@example.net>",),
    cc=(),
    bcc=(),
    subject="Hello",
    text="Hi Bob,\r\nthe report is attached.\r\n",
    html="",
    attachments=(),
    in_reply_to="",
    references="",
    status=Status.QUEUED,
    send_at=None,
    name="Alice Example",
    reply_to=(),
) -> Draft:
    """A queued draft with its frozen message, as `compose.services` leaves
    one (built here so these tests do not depend on the API's service)."""

    def mailbox(value):
        if isinstance(value, dict):
            return value
        display, _, address = value.rpartition(" <")
        return (
            {"name": display, "address": address.rstrip(">")} if display else {"name": "", "address": value}
        )

    domain = account.email_address.rpartition("@")[2]
    outgoing = OutgoingMessage(
        sender={"name": name, "address": account.email_address},
        to=[mailbox(v) for v in to],
        cc=[mailbox(v) for v in cc],
        bcc=[mailbox(v) for v in bcc],
        reply_to=[mailbox(v) for v in reply_to],
        subject=subject,
        text_body=text,
        html_body=html,
        message_id=message_id_make(domain),
        date=timezone.now(),
        in_reply_to=in_reply_to,
        references=references,
        attachments=tuple(OutgoingAttachment(*a) for a in attachments),
    )
    raw = message_build(outgoing, smtputf8=message_needs_smtputf8(outgoing))
    with tenant_scope(account.tenant_id):
        key = default_store().put(account.tenant_id, raw)
        draft = Draft.objects.create(
            tenant_id=account.tenant_id,
            user_id=account.user_id,
            account=account,
            status=status,
            to=outgoing.to,
            cc=outgoing.cc,
            bcc=outgoing.bcc,
            subject=subject,
            text_body=text,
            html_body=html,
            in_reply_to_header=in_reply_to,
            references_header=references,
            message_id=outgoing.message_id,
            send_at=send_at,
        )
        SendQueueItem.objects.create(
            tenant_id=account.tenant_id,
            draft=draft,
            account=account,
            message_id=outgoing.message_id,
            raw_blob_key=key,
            size_bytes=len(raw),
            envelope_from=account.email_address,
            recipients=envelope_recipients(outgoing),
            next_attempt_at=send_at,
        )
    return draft


def send(draft) -> str:
    return outbox_send(tenant_id=draft.tenant_id, draft_id=draft.id)


def state(draft) -> tuple[Draft, SendQueueItem]:
    with tenant_scope(draft.tenant_id):
        fresh = Draft.objects.get(id=draft.id)
        return fresh, SendQueueItem.objects.get(draft_id=draft.id)


def audit_actions(draft) -> list[str]:
    with tenant_scope(draft.tenant_id):
        return list(
            AuditLog.objects.filter(object_id=draft.id)
            .order_by("created_at", "id")
            .values_list("action", flat=True)
        )


def sent_folder_messages(mailbox) -> list[email.message.EmailMessage]:
    mailbox.select_folder("Sent", readonly=True)
    uids = mailbox.search(["ALL"])
    fetched = mailbox.fetch(uids, ["BODY.PEEK[]", "FLAGS"]) if uids else {}
    return [
        email.message_from_bytes(data[b"BODY[]"], policy=email.policy.default) for data in fetched.values()
    ]


@pytest.fixture
def imap_logins(monkeypatch) -> list[int]:
    """One entry per IMAP session opened (a login) while the test runs."""
    from mailboxes.imap import session as imap_session_module

    logins: list[int] = []
    init = imap_session_module.ImapSession.__init__

    def counted(self, *args, **kwargs):
        logins.append(1)
        return init(self, *args, **kwargs)

    monkeypatch.setattr(imap_session_module.ImapSession, "__init__", counted)
    return logins


@pytest.fixture
def imap_writes(monkeypatch) -> list[bytes]:
    """Each write of the IMAP clients to their server while the test runs."""
    import imaplib

    writes: list[bytes] = []
    send_bytes = imaplib.IMAP4.send

    def recorded(self, data):
        writes.append(bytes(data))
        return send_bytes(self, data)

    monkeypatch.setattr(imaplib.IMAP4, "send", recorded)
    return writes


@pytest.fixture
def short_runs(monkeypatch) -> list:
    """Runs of two batches of two, no helper; the syncs asked for after
    sending (the accounts' ids), instead of queued."""
    from compose import outbox
    from mailboxes import services as mailbox_services

    syncs: list = []
    monkeypatch.setattr(mailbox_services, "sync_request", lambda **kwargs: syncs.append(kwargs["account"].id))
    monkeypatch.setattr(outbox, "DRAIN_BATCH", 2)
    monkeypatch.setattr(outbox, "DRAIN_LIMIT", 2)
    monkeypatch.setattr(outbox, "DRAIN_HELPERS", 0)
    return syncs


@pytest.fixture
def synced_account(smtp_account):
    """The account after a first sync: its folders (Sent, Drafts) known."""
    account_sync_run(tenant_id=smtp_account.tenant_id, account_id=smtp_account.id, index_inline=True)
    return smtp_account


# --- What arrives ----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_sent_message_arrives_whole_and_is_stored_in_sent(synced_account, smtp_server, mailbox, broker):
    pdf = b"%PDF-1.4 " + bytes(range(256)) * 40
    draft = queue_message(
        synced_account,
        to=["Zoë Ångström <zoe@example.net>", "bob@example.net"],
        cc=["Carol <carol@example.org>"],
        bcc=["secret@example.org"],
        subject="Résumé — café ☕ for the 2e trimestre",
        text="Grüße aus Köln\r\n",
        html="<p>Grüße aus <b>Köln</b></p>",
        attachments=[
            ("Übersicht März.pdf", "application/pdf", pdf),
            ("notes.txt", "text/plain", b"plain\r\n"),
        ],
        name="Jürgen Müller",
    )

    assert send(draft) == Status.SENT

    [delivery] = smtp_server.deliveries
    assert delivery.mail_from == synced_account.email_address
    assert delivery.rcpt_tos == [
        "zoe@example.net",
        "bob@example.net",
        "carol@example.org",
        "secret@example.org",
    ]
    received = email.message_from_bytes(delivery.data, policy=email.policy.default)
    assert received["Subject"] == "Résumé — café ☕ for the 2e trimestre"
    assert received["From"].addresses[0].display_name == "Jürgen Müller"
    assert received["To"].addresses[0].display_name == "Zoë Ångström"
    assert "Bcc" not in received and b"secret@" not in delivery.data
    assert received["Message-ID"] == draft.message_id
    assert received.get_body(("plain",)).get_content().splitlines() == ["Grüße aus Köln"]
    assert "<b>Köln</b>" in received.get_body(("html",)).get_content()
    files = {part.get_filename(): part.get_payload(decode=True) for part in received.iter_attachments()}
    assert files == {"Übersicht März.pdf": pdf, "notes.txt": b"plain\r\n"}

    fresh, item = state(draft)
    assert fresh.status == Status.SENT
    assert (item.attempts, item.phase, item.last_reply_code, item.sent_copy) == (1, "done", 250, "appended")
    assert item.sent_at is not None and item.error == ""
    assert {a: r["status"] for a, r in item.recipient_results.items()} == {
        "zoe@example.net": "accepted",
        "bob@example.net": "accepted",
        "carol@example.org": "accepted",
        "secret@example.org": "accepted",
    }
    assert audit_actions(draft) == ["compose.send.sent"]

    # In Sent on the server, byte for byte what was sent, marked read.
    [copy] = sent_folder_messages(mailbox)
    assert copy["Message-ID"] == draft.message_id
    assert copy["Subject"] == received["Subject"]
    mailbox.select_folder("Sent", readonly=True)
    [(_uid, data)] = mailbox.fetch(mailbox.search(["ALL"]), ["BODY.PEEK[]", "FLAGS"]).items()
    assert data[b"BODY[]"] == delivery.data
    assert b"\\Seen" in data[b"FLAGS"]

    # A sync of the account was queued, so the Sent copy gets stored.
    queued = [json.loads(raw) for raw in broker.lrange("celery", 0, -1)]
    assert any(m["headers"]["task"] == "mailboxes.tasks.sync_account" for m in queued)

    # The task again (Celery delivers at least once): nothing sent, nothing appended.
    assert send(draft) == Status.SENT
    assert len(smtp_server.deliveries) == 1
    assert len(sent_folder_messages(mailbox)) == 1


@pytest.mark.django_db
def test_a_reply_threads_with_its_original_after_a_sync(synced_account, smtp_server, mailbox):
    original = (
        b"From: Bob <bob@example.net>\r\nTo: " + synced_account.email_address.encode() + b"\r\n"
        b"Subject: Quarterly numbers\r\nMessage-ID: <original-1@example.net>\r\n"
        b"Date: Mon, 01 Dec 2026 10:00:00 +0000\r\n\r\nThe numbers, please.\r\n"
    )
    mailbox.append("INBOX", original)
    account_sync_run(tenant_id=synced_account.tenant_id, account_id=synced_account.id, index_inline=True)
    draft = queue_message(
        synced_account,
        subject="Re: Quarterly numbers",
        in_reply_to="<original-1@example.net>",
        references="<original-1@example.net>",
    )

    assert send(draft) == Status.SENT
    received = email.message_from_bytes(smtp_server.deliveries[0].data, policy=email.policy.default)
    assert received["In-Reply-To"] == "<original-1@example.net>"
    assert received["References"] == "<original-1@example.net>"

    account_sync_run(tenant_id=synced_account.tenant_id, account_id=synced_account.id, index_inline=True)
    with tenant_scope(synced_account.tenant_id):
        first = Message.objects.get(account=synced_account, message_id="original-1@example.net")
        reply = Message.objects.get(account=synced_account, message_id=draft.message_id.strip("<>"))
        assert reply.folder.type == "sent"
    assert first.thread_id is not None and reply.thread_id == first.thread_id


@pytest.mark.django_db
def test_no_sent_copy_when_the_server_files_it_itself(synced_account, smtp_server, mailbox):
    with tenant_scope(synced_account.tenant_id):
        synced_account.save_sent_copy = False
        synced_account.save(update_fields=["save_sent_copy"])
    draft = queue_message(synced_account)

    assert send(draft) == Status.SENT

    assert state(draft)[1].sent_copy == "skipped"
    assert sent_folder_messages(mailbox) == []


@pytest.mark.django_db
def test_the_sent_folder_is_found_on_the_server_before_the_first_sync(smtp_account, smtp_server, mailbox):
    with tenant_scope(smtp_account.tenant_id):
        assert not Folder.objects.filter(account=smtp_account).exists()
    draft = queue_message(smtp_account)

    assert send(draft) == Status.SENT

    assert state(draft)[1].sent_copy == "appended"
    assert len(sent_folder_messages(mailbox)) == 1


@pytest.mark.django_db
def test_a_sent_copy_that_fails_is_recorded_and_the_message_stays_sent(smtp_account, smtp_server, devmail):
    with tenant_scope(smtp_account.tenant_id):
        smtp_account.port = smtp_server.port("plain")  # not an IMAP server
        smtp_account.encryption = "none"
        smtp_account.save(update_fields=["port", "encryption"])
    draft = queue_message(smtp_account)

    assert send(draft) == Status.SENT

    fresh, item = state(draft)
    assert fresh.status == Status.SENT and len(smtp_server.deliveries) == 1
    assert item.sent_copy == "failed" and item.error.startswith("Sent copy: ")


# --- Outcomes ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_temporary_failure_then_success_delivers_once(
    smtp_account, smtp_server, broker, django_capture_on_commit_callbacks
):
    smtp_server.fault("MAIL", 451, "4.3.0 Try again later")
    draft = queue_message(smtp_account)

    with django_capture_on_commit_callbacks(execute=True):
        assert send(draft) == Status.QUEUED
    fresh, item = state(draft)
    assert fresh.status == Status.QUEUED and item.attempts == 1
    assert (item.last_reply_code, item.last_reply) == (451, "4.3.0 Try again later")
    assert item.next_attempt_at > timezone.now()
    assert smtp_server.deliveries == []
    # The task is queued again for then, ids only.
    [(kwargs, headers)] = broker_sends()
    assert kwargs == {"args": [], "tenant_id": str(draft.tenant_id), "draft_id": str(draft.id)}
    assert headers["eta"] is not None

    # Too early: the task (or a duplicate of it) waits for its backoff.
    assert send(draft) == "not_due"
    with tenant_scope(draft.tenant_id):
        SendQueueItem.objects.filter(draft_id=draft.id).update(next_attempt_at=timezone.now())
    assert send(draft) == Status.SENT

    fresh, item = state(draft)
    assert (fresh.status, item.attempts, item.last_reply_code, item.error) == (Status.SENT, 2, 250, "")
    assert len(smtp_server.deliveries) == 1
    assert audit_actions(draft) == ["compose.send.retry", "compose.send.sent"]


@pytest.mark.django_db
def test_a_permanent_failure_fails_at_once(smtp_account, smtp_server):
    smtp_server.fault("DATA_END", 554, "5.7.1 Rejected as spam", times=None)
    draft = queue_message(smtp_account)

    assert send(draft) == Status.FAILED
    assert send(draft) == Status.FAILED  # not retried

    fresh, item = state(draft)
    assert (fresh.status, item.attempts, item.last_reply_code) == (Status.FAILED, 1, 554)
    assert "Rejected as spam" in item.error
    assert smtp_server.deliveries == []
    assert audit_actions(draft) == ["compose.send.failed"]


@pytest.mark.django_db
def test_temporary_failures_give_up_at_the_limit(smtp_account, smtp_server, settings):
    settings.COMPOSE_SEND_MAX_ATTEMPTS = 3
    smtp_server.fault("MAIL", 421, "4.7.0 Busy", times=None)
    draft = queue_message(smtp_account)

    outcomes = []
    for _ in range(4):
        outcomes.append(send(draft))
        with tenant_scope(draft.tenant_id):
            SendQueueItem.objects.filter(draft_id=draft.id).update(next_attempt_at=timezone.now())

    assert outcomes == [Status.QUEUED, Status.QUEUED, Status.FAILED, Status.FAILED]
    _, item = state(draft)
    assert item.attempts == 3 and "gave up after 3 attempts" in item.error
    assert audit_actions(draft) == ["compose.send.retry", "compose.send.retry", "compose.send.failed"]


@pytest.mark.django_db
def test_the_connection_dropped_after_the_body_is_uncertain_and_never_resent(smtp_account, smtp_server):
    smtp_server.drop("DATA_END")
    draft = queue_message(smtp_account)

    assert send(draft) == Status.UNCERTAIN

    fresh, item = state(draft)
    assert (fresh.status, item.attempts, item.phase) == (Status.UNCERTAIN, 1, "data")
    assert "may have been delivered" in item.error
    # The task again, and the dispatcher: nothing more goes out.
    assert send(draft) == Status.UNCERTAIN
    assert outbox_dispatch_due(now=timezone.now() + timedelta(hours=1)) == 0
    assert len(smtp_server.deliveries) == 1
    assert state(draft)[1].attempts == 1
    assert audit_actions(draft) == ["compose.send.uncertain"]


@pytest.mark.django_db
def test_the_connection_dropped_before_the_body_is_retried(smtp_account, smtp_server):
    smtp_server.drop("DATA")
    draft = queue_message(smtp_account)

    assert send(draft) == Status.QUEUED
    with tenant_scope(draft.tenant_id):
        SendQueueItem.objects.filter(draft_id=draft.id).update(next_attempt_at=timezone.now())
    assert send(draft) == Status.SENT
    assert len(smtp_server.deliveries) == 1 and state(draft)[1].attempts == 2


@pytest.mark.django_db
def test_a_recipient_refused_among_three(smtp_account, smtp_server):
    smtp_server.refuse("nobody@example.net", 550, "5.1.1 No such user")
    draft = queue_message(smtp_account, to=["a@example.net", "nobody@example.net", "c@example.net"])

    assert send(draft) == Status.SENT

    [delivery] = smtp_server.deliveries
    assert delivery.rcpt_tos == ["a@example.net", "c@example.net"]
    _, item = state(draft)
    assert item.recipient_results["nobody@example.net"] == {
        "status": "refused",
        "code": 550,
        "reply": "5.1.1 No such user",
    }
    assert item.recipient_results["a@example.net"]["status"] == "accepted"
    assert item.recipient_results["c@example.net"]["status"] == "accepted"


@pytest.mark.django_db
def test_every_recipient_refused_fails(smtp_account, smtp_server):
    smtp_server.fault("RCPT", 550, "5.1.1 No such user", times=None)
    draft = queue_message(smtp_account, to=["a@example.net", "b@example.net"])

    assert send(draft) == Status.FAILED
    assert smtp_server.deliveries == []
    _, item = state(draft)
    assert item.last_reply_code == 550
    assert {a: (r["status"], r["code"]) for a, r in item.recipient_results.items()} == {
        "a@example.net": ("refused", 550),
        "b@example.net": ("refused", 550),
    }


@pytest.mark.django_db
@pytest.mark.parametrize(
    "status", [Status.SENT, Status.FAILED, Status.UNCERTAIN, Status.CANCELLED, Status.DRAFT]
)
def test_a_task_finding_an_item_done_or_not_queued_does_nothing(smtp_account, smtp_server, status):
    draft = queue_message(smtp_account, status=status)
    with tenant_scope(draft.tenant_id):
        SendQueueItem.objects.filter(draft_id=draft.id).update(sent_copy="skipped")

    assert send(draft) == status

    assert smtp_server.deliveries == []
    assert state(draft)[1].attempts == 0


@pytest.mark.django_db
def test_a_scheduled_item_waits_until_it_is_due(smtp_account, smtp_server):
    draft = queue_message(smtp_account, status=Status.SCHEDULED, send_at=timezone.now() + timedelta(hours=1))

    assert send(draft) == "not_due"
    assert smtp_server.deliveries == []

    with tenant_scope(draft.tenant_id):
        Draft.objects.filter(id=draft.id).update(send_at=timezone.now() - timedelta(seconds=1))
    assert send(draft) == Status.SENT
    assert len(smtp_server.deliveries) == 1


@pytest.mark.django_db
def test_a_task_finding_the_send_lock_held_leaves_the_item(smtp_account, smtp_server):
    draft = queue_message(smtp_account)
    result = {}

    # Another session holds the lock: another worker is sending this draft.
    from django.db import connections

    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            from compose.outbox import SEND_LOCK_CLASS, _lock_key

            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [SEND_LOCK_CLASS, _lock_key(draft.id)])
            assert cursor.fetchone()[0]
        result["outcome"] = send(draft)
    finally:
        other.close()

    assert result["outcome"] == "busy"
    assert smtp_server.deliveries == [] and state(draft)[0].status == Status.QUEUED


@pytest.mark.django_db
def test_a_run_whose_draft_a_helper_holds_drains_the_accounts_other_items_and_hands_over(
    smtp_account, smtp_server, broker
):
    """The run that holds the account's drain mark finds its own draft held
    (a helper took it in its batch): it sends the account's other due items
    and hands over, instead of leaving the mark set with nobody draining."""
    from django.core.cache import cache
    from django.db import connections

    from compose.outbox import SEND_LOCK_CLASS, _drain_mark, _lock_key

    ids = {"tenant_id": smtp_account.tenant_id, "account_id": smtp_account.id}
    held, *others = [queue_message(smtp_account, subject=f"B{n}") for n in range(3)]
    assert send_request(draft_id=held.id, **ids) is True
    [(task, _headers)] = broker_sends()
    broker.delete("celery")
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [SEND_LOCK_CLASS, _lock_key(held.id)])
            assert cursor.fetchone()[0]
        # Any other run (the dispatcher's) finding its draft held leaves the rest alone.
        assert outbox_send(draft_id=held.id, **ids) == "busy"
        assert [state(d)[0].status for d in (held, *others)] == [Status.QUEUED] * 3
        outcome = outbox_send(draft_id=held.id, drain=task["drain"], **ids)
    finally:
        other.close()

    assert outcome == "busy"
    assert [state(d)[0].status for d in (held, *others)] == [Status.QUEUED, Status.SENT, Status.SENT]
    assert sorted(d.data.count(b"Subject: B") for d in smtp_server.deliveries) == [1, 1]
    # Handed over: the held item, still due, has a task, and the mark is the new task's.
    assert [task["draft_id"] for task, _ in broker_sends()] == [str(held.id)]
    assert cache.get(_drain_mark(smtp_account.id)) is not None


@pytest.mark.django_db
def test_a_sending_item_whose_worker_died_before_the_body_is_sent_again(smtp_account, smtp_server):
    draft = queue_message(smtp_account)
    with tenant_scope(draft.tenant_id):
        Draft.objects.filter(id=draft.id).update(status=Status.SENDING)
        SendQueueItem.objects.filter(draft_id=draft.id).update(phase="envelope", attempts=1)

    assert send(draft) == Status.SENT
    assert len(smtp_server.deliveries) == 1 and state(draft)[1].attempts == 2


@pytest.mark.django_db
def test_a_sending_item_whose_worker_died_after_the_body_is_uncertain(smtp_account, smtp_server):
    draft = queue_message(smtp_account)
    with tenant_scope(draft.tenant_id):
        Draft.objects.filter(id=draft.id).update(status=Status.SENDING)
        SendQueueItem.objects.filter(draft_id=draft.id).update(phase="data", attempts=1)

    assert send(draft) == Status.UNCERTAIN
    assert smtp_server.deliveries == []
    assert audit_actions(draft) == ["compose.send.uncertain"]


@pytest.mark.django_db
def test_a_deleted_account_fails_the_send(smtp_account, smtp_server):
    draft = queue_message(smtp_account)
    with tenant_scope(draft.tenant_id):
        smtp_account.is_deleted = True
        smtp_account.save(update_fields=["is_deleted"])

    assert send(draft) == Status.FAILED
    assert smtp_server.deliveries == []


@pytest.mark.django_db
def test_a_deactivated_tenants_mail_is_not_sent(smtp_account, smtp_server):
    draft = queue_message(smtp_account)
    Tenant.objects.filter(id=draft.tenant_id).update(is_active=False)

    assert send(draft) == Status.FAILED

    _fresh, item = state(draft)
    assert item.error == "The tenant is deactivated: its accounts are not used."
    assert smtp_server.deliveries == []


@pytest.mark.django_db
def test_a_removed_members_mail_is_not_sent(smtp_account, smtp_server):
    draft = queue_message(smtp_account)
    with tenant_scope(draft.tenant_id):
        TenantMembership.objects.filter(tenant_id=draft.tenant_id, user_id=smtp_account.user_id).delete()

    assert send(draft) == Status.FAILED
    assert smtp_server.deliveries == []


@pytest.mark.django_db
def test_an_smtp_port_that_is_not_a_mail_port_is_not_reached(smtp_account, smtp_server, settings):
    settings.MAIL_ALLOWED_PORTS = [25, 465, 587]
    draft = queue_message(smtp_account)

    assert send(draft) == Status.FAILED

    _fresh, item = state(draft)
    assert f"port {smtp_server.port()}" in item.error
    assert smtp_server.deliveries == []


@pytest.mark.django_db
def test_no_body_and_no_secret_in_the_audit_log_or_the_task(smtp_account, smtp_server, broker):
    smtp_server.fault("MAIL", 451)
    draft = queue_message(smtp_account, subject="Top secret subject", text="the secret body text")

    send(draft)
    with tenant_scope(draft.tenant_id):
        entries = json.dumps(
            list(AuditLog.objects.filter(object_id=draft.id).values_list("changes", flat=True))
        )
    assert "secret" not in entries and "smtp-password" not in entries


# --- The dispatcher ------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_dispatcher_queues_what_lost_tasks_left_behind(smtp_account, tenant_b, broker, smtp_server):
    from accounts.tests.factories import EmailAccountFactory
    from emailclient.core.tests.factories import UserFactory

    now = timezone.now()
    due = queue_message(smtp_account, status=Status.SCHEDULED, send_at=now - timedelta(minutes=2))
    later = queue_message(smtp_account, status=Status.SCHEDULED, send_at=now + timedelta(hours=1))
    lost = queue_message(smtp_account)
    fresh_queued = queue_message(smtp_account)
    backing_off = queue_message(smtp_account)
    retry_due = queue_message(smtp_account)
    died = queue_message(smtp_account)
    done = queue_message(smtp_account, status=Status.SENT)
    account_b = EmailAccountFactory(
        tenant=tenant_b, user=UserFactory(), smtp_hostname="127.0.0.1", smtp_port=25
    )
    other_tenant = queue_message(account_b, status=Status.SCHEDULED, send_at=now - timedelta(minutes=5))
    with tenant_scope(smtp_account.tenant_id):
        Draft.objects.filter(id__in=[lost.id, died.id]).update(updated_at=now - timedelta(minutes=5))
        SendQueueItem.objects.filter(draft_id=backing_off.id).update(
            next_attempt_at=now + timedelta(minutes=5)
        )
        SendQueueItem.objects.filter(draft_id=retry_due.id).update(next_attempt_at=now - timedelta(minutes=2))
        Draft.objects.filter(id=died.id).update(status=Status.SENDING)

    queued = outbox_dispatch_due(now=now)

    sent_for = {kwargs["draft_id"] for kwargs, _ in broker_sends()}
    assert sent_for == {str(d.id) for d in (due, lost, retry_due, died, other_tenant)}
    assert queued == 5
    for kwargs, _headers in broker_sends():  # ids only
        assert set(kwargs) == {"args", "tenant_id", "draft_id", "account_id"} and kwargs["args"] == []
    # Queued once: the next run leaves them (their tasks are on the queue).
    assert outbox_dispatch_due(now=now) == 0
    del later, fresh_queued, done


@pytest.mark.django_db
def test_the_dispatcher_leaves_the_queued_items_of_an_account_a_task_is_draining(smtp_account, broker):
    from django.core.cache import cache

    now = timezone.now()
    waiting, died = queue_message(smtp_account), queue_message(smtp_account)
    with tenant_scope(smtp_account.tenant_id):
        Draft.objects.filter(id__in=[waiting.id, died.id]).update(updated_at=now - timedelta(minutes=5))
        Draft.objects.filter(id=died.id).update(status=Status.SENDING)
    ids = {"tenant_id": smtp_account.tenant_id, "account_id": smtp_account.id}
    assert send_request(draft_id=queue_message(smtp_account).id, **ids) is True  # the drain's task
    broker.delete("celery")

    # The queued one is the drain's; the one whose worker died is not.
    assert outbox_dispatch_due(now=now) == 1
    assert [kwargs["draft_id"] for kwargs, _ in broker_sends()] == [str(died.id)]
    # The mark gone (the task ended, or was lost and the mark expired): queued.
    cache.delete(f"compose:drain:{smtp_account.id}")
    assert outbox_dispatch_due(now=now) == 1
    assert {kwargs["draft_id"] for kwargs, _ in broker_sends()} == {str(died.id), str(waiting.id)}


@pytest.mark.django_db
def test_the_dispatcher_leaves_an_item_whose_worker_is_alive(smtp_account, broker):
    draft = queue_message(smtp_account)
    with tenant_scope(draft.tenant_id):
        Draft.objects.filter(id=draft.id).update(status=Status.SENDING)

    holder_ready, release = threading.Event(), threading.Event()

    def hold():
        from django.db import connection

        with draft_send_lock(draft.id) as held:
            assert held
            holder_ready.set()
            release.wait(10)
        connection.close()

    worker = threading.Thread(target=hold)
    worker.start()
    try:
        assert holder_ready.wait(10)
        assert outbox_dispatch_due(now=timezone.now()) == 0
    finally:
        release.set()
        worker.join()
    assert outbox_dispatch_due(now=timezone.now()) == 1


@pytest.mark.django_db
def test_an_explicit_resend_gets_the_full_retry_budget(smtp_account, smtp_server, settings, user_a):
    from compose.services import draft_send

    settings.COMPOSE_SEND_MAX_ATTEMPTS = 2
    draft = queue_message(smtp_account)
    smtp_server.fault("MAIL", 451, "4.3.0 Try again later", times=None)
    assert send(draft) == Status.QUEUED
    with tenant_scope(draft.tenant_id):
        SendQueueItem.objects.filter(draft_id=draft.id).update(next_attempt_at=None)
    assert send(draft) == Status.FAILED and state(draft)[1].attempts == 2
    smtp_server.reset()
    smtp_server.fault("MAIL", 451, "4.3.0 Try again later", times=1)

    with tenant_scope(draft.tenant_id):  # the user sends it again (the API's service)
        draft_send(draft=Draft.objects.select_related("account", "tenant").get(id=draft.id), actor=user_a)
    assert state(draft)[1].attempts == 0

    # A temporary failure is retried, not the end of it; then it goes.
    assert send(draft) == Status.QUEUED and state(draft)[1].attempts == 1
    with tenant_scope(draft.tenant_id):
        SendQueueItem.objects.filter(draft_id=draft.id).update(next_attempt_at=None)
    assert send(draft) == Status.SENT
    assert state(draft)[1].attempts == 2 and len(smtp_server.deliveries) == 1


@pytest.mark.django_db
def test_a_sent_copy_lost_with_its_worker_is_made_by_the_next_delivery_once(
    synced_account, smtp_server, mailbox
):
    draft = queue_message(synced_account)
    assert send(draft) == Status.SENT
    # The worker died after the APPEND, before recording it.
    with tenant_scope(draft.tenant_id):
        SendQueueItem.objects.filter(draft_id=draft.id).update(sent_copy="")

    assert send(draft) == Status.SENT

    assert state(draft)[1].sent_copy == "appended"
    assert len(sent_folder_messages(mailbox)) == 1 and len(smtp_server.deliveries) == 1
    # Had the APPEND not happened, the next delivery makes it.
    mailbox.select_folder("Sent")
    mailbox.delete_messages(mailbox.search(["ALL"]))
    mailbox.expunge()
    with tenant_scope(draft.tenant_id):
        SendQueueItem.objects.filter(draft_id=draft.id).update(sent_copy="")
    assert send(draft) == Status.SENT
    assert len(sent_folder_messages(mailbox)) == 1 and len(smtp_server.deliveries) == 1


@pytest.mark.django_db
def test_a_lost_sent_copy_is_not_made_once_the_tenant_is_deactivated(synced_account, smtp_server, mailbox):
    draft = queue_message(synced_account)
    assert send(draft) == Status.SENT
    mailbox.select_folder("Sent")
    mailbox.delete_messages(mailbox.search(["ALL"]))
    mailbox.expunge()
    with tenant_scope(draft.tenant_id):
        SendQueueItem.objects.filter(draft_id=draft.id).update(sent_copy="")
    Tenant.objects.filter(id=draft.tenant_id).update(is_active=False)

    assert send(draft) == Status.SENT  # a later delivery of the task: no login now

    item = state(draft)[1]
    assert (item.sent_copy, item.error) == (
        "failed",
        "Sent copy: The tenant is deactivated: its accounts are not used.",
    )
    assert sent_folder_messages(mailbox) == []
    assert len(smtp_server.deliveries) == 1


# --- End to end: the API, the queued task, the server ------------------------------------


@pytest.mark.django_db
def test_end_to_end_a_message_sent_through_the_api(
    client_a, synced_account, smtp_server, mailbox, broker, django_capture_on_commit_callbacks
):
    from compose.tasks import send_task

    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.post(
            "/api/compose/send",
            {
                "account": str(synced_account.id),
                "to": ["Zoë Ångström <zoe@example.net>"],
                "bcc": ["audit@example.org"],
                "subject": "Grüße aus Köln",
                "html_body": "<p>Hallo <b>Zoë</b></p>",
            },
            format="json",
        )
    assert response.status_code == 202, response.content
    item_id = response.json()["id"]

    # What the worker gets from the broker: ids only; run it as the worker would.
    [(task, _headers)] = broker_sends()
    assert set(task) == {"args", "tenant_id", "draft_id", "account_id", "drain"} and item_id in json.dumps(
        task
    )
    args, kwargs = task.pop("args"), task
    assert send_task.apply(args=args, kwargs=kwargs).get() == {"result": "sent"}

    [delivery] = smtp_server.deliveries
    assert delivery.rcpt_tos == ["zoe@example.net", "audit@example.org"]
    received = email.message_from_bytes(delivery.data, policy=email.policy.default)
    assert received["Subject"] == "Grüße aus Köln" and "Bcc" not in received
    assert received.get_body(("plain",)).get_content().strip()  # the text alternative
    body = client_a.get(f"/api/compose/{item_id}").json()
    assert body["status"] == "sent" and body["message_id"] == received["Message-ID"]
    [copy] = sent_folder_messages(mailbox)
    assert copy["Message-ID"] == received["Message-ID"]
    # Redelivered: nothing more.
    assert send_task.apply(args=args, kwargs=kwargs).get() == {"result": "sent"}
    assert len(smtp_server.deliveries) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "fields",
    [{"to": ["Jürgen <jürgen@example.net>"]}, {"reply_to": ["jürgen@example.net"]}],
    ids=["recipient", "reply-to"],
)
def test_a_non_ascii_address_goes_with_smtputf8(smtp_account, smtp_server, fields):
    draft = queue_message(smtp_account, **fields)

    assert send(draft) == Status.SENT

    [delivery] = smtp_server.deliveries
    assert delivery.smtputf8
    assert "jürgen@example.net".encode() in delivery.data


# --- One task drains the account's queue over one connection ------------------------------


@pytest.mark.django_db
def test_one_task_sends_the_accounts_due_items_over_one_connection(synced_account, smtp_server, mailbox):
    drafts = [queue_message(synced_account, subject=f"Batch {n}") for n in range(5)]
    later = queue_message(
        synced_account, subject="Later", status=Status.SCHEDULED, send_at=timezone.now() + timedelta(hours=1)
    )

    assert send(drafts[0]) == Status.SENT

    assert sorted(d.data.count(b"Subject: Batch") for d in smtp_server.deliveries) == [1] * 5
    assert [login for login, accepted in smtp_server.logins if accepted] == [smtp_server_user(smtp_server)]
    assert [state(d)[0].status for d in drafts] == [Status.SENT] * 5
    assert [state(d)[1].sent_copy for d in drafts] == ["appended"] * 5
    assert state(later)[0].status == Status.SCHEDULED
    # Their own tasks come later and find nothing to do: no second delivery, no second copy.
    assert [send(d) for d in drafts[1:]] == [Status.SENT] * 4
    assert len(smtp_server.deliveries) == 5
    assert sorted(str(m["Subject"]) for m in sent_folder_messages(mailbox)) == [
        f"Batch {n}" for n in range(5)
    ]


def smtp_server_user(smtp_server) -> str:
    return next(login for login, accepted in smtp_server.logins if accepted)


@pytest.mark.django_db
def test_draining_leaves_an_item_another_worker_holds(smtp_account, smtp_server):
    from django.db import connections

    from compose.outbox import SEND_LOCK_CLASS, _lock_key

    first, held = queue_message(smtp_account), queue_message(smtp_account)
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [SEND_LOCK_CLASS, _lock_key(held.id)])
        assert send(first) == Status.SENT
    finally:
        other.close()

    assert state(held)[0].status == Status.QUEUED
    assert len(smtp_server.deliveries) == 1


@pytest.mark.django_db
def test_draining_stops_at_a_temporary_failure(smtp_account, smtp_server):
    first = queue_message(smtp_account, subject="N0")
    deferred = queue_message(smtp_account, subject="N1", to=("Slow <slow@example.net>",))
    third = queue_message(smtp_account, subject="N2")
    smtp_server.fault("RCPT", 451, "Try later", times=None, recipient="slow@example.net")

    assert send(first) == Status.SENT

    # The server deferred the second: queued again with backoff, and the
    # rest is left to the items' own tasks.
    assert state(deferred)[0].status == Status.QUEUED and state(deferred)[1].attempts == 1
    assert state(third)[0].status == Status.QUEUED and state(third)[1].attempts == 0
    assert len(smtp_server.deliveries) == 1
    assert send(third) == Status.SENT


@pytest.mark.django_db
def test_the_dispatcher_makes_the_sent_copy_a_dead_worker_left(synced_account, smtp_server, mailbox, broker):
    draft = queue_message(synced_account)
    now = timezone.now()
    with tenant_scope(draft.tenant_id):  # sent, and the worker died before its copy
        Draft.objects.filter(id=draft.id).update(status=Status.SENT)
        SendQueueItem.objects.filter(draft_id=draft.id).update(
            sent_at=now - timedelta(minutes=5), phase="done", attempts=1
        )

    assert outbox_dispatch_due(now=now) == 1
    assert [kwargs["draft_id"] for kwargs, _ in broker_sends()] == [str(draft.id)]
    assert send(draft) == Status.SENT
    assert send(draft) == Status.SENT  # a second delivery of the task: nothing more

    assert state(draft)[1].sent_copy == "appended"
    assert len(sent_folder_messages(mailbox)) == 1
    assert smtp_server.deliveries == []  # only the copy was made: nothing sent again


@pytest.mark.django_db
def test_one_copy_that_fails_leaves_the_others_of_the_batch(
    synced_account, smtp_server, mailbox, monkeypatch
):
    from compose import outbox
    from messages.blobs import BlobNotFound

    drafts = [queue_message(synced_account, subject=f"C{n}") for n in range(3)]
    lost_key = state(drafts[1])[1].raw_blob_key
    store, reads = default_store(), []

    class LosesOneAfterSending:
        """The store, but the second message's bytes are gone once sent."""

        def get(self, tenant_id, key):
            reads.append(key)
            if key == lost_key and reads.count(key) > 1:
                raise BlobNotFound(key)
            return store.get(tenant_id, key)

    monkeypatch.setattr(outbox, "default_store", LosesOneAfterSending)

    assert send(drafts[0]) == Status.SENT

    assert [state(d)[1].sent_copy for d in drafts] == ["appended", "failed", "appended"]
    assert sorted(str(m["Subject"]) for m in sent_folder_messages(mailbox)) == ["C0", "C2"]
    assert len(smtp_server.deliveries) == 3


@pytest.mark.django_db
def test_a_refused_login_stops_the_drain_after_one_try(smtp_account, smtp_server):
    drafts = [queue_message(smtp_account) for _ in range(3)]
    smtp_server.users = {smtp_server_user_name(): "another password"}

    assert send(drafts[0]) == Status.FAILED

    assert [state(d)[0].status for d in drafts] == [Status.FAILED, Status.QUEUED, Status.QUEUED]
    assert len(smtp_server.logins) == 1 and smtp_server.deliveries == []


def smtp_server_user_name() -> str:
    from compose.tests.conftest import SMTP_USER

    return SMTP_USER


# --- One task per account while it drains -------------------------------------------------


@pytest.mark.django_db
def test_sends_queued_while_a_drain_task_is_queued_get_no_task_and_are_sent_by_it(
    smtp_account, smtp_server, broker
):
    ids = {"tenant_id": smtp_account.tenant_id, "account_id": smtp_account.id}
    first, second = queue_message(smtp_account, subject="A"), queue_message(smtp_account, subject="B")

    assert send_request(draft_id=first.id, **ids) is True
    assert send_request(draft_id=second.id, **ids) is False
    [(task, _headers)] = broker_sends()
    assert task["draft_id"] == str(first.id) and task["account_id"] == str(smtp_account.id)

    assert outbox_send(draft_id=first.id, drain=task["drain"], **ids) == Status.SENT

    assert [state(d)[0].status for d in (first, second)] == [Status.SENT] * 2
    assert len(smtp_server.deliveries) == 2
    assert len(broker_sends()) == 1  # nothing left: no task handed over
    # The run cleared the account's mark: the next send queues a task again.
    assert send_request(draft_id=queue_message(smtp_account).id, **ids) is True


@pytest.mark.django_db
def test_a_run_that_sends_nothing_hands_the_accounts_due_items_to_a_new_task(
    smtp_account, smtp_server, broker, user_a
):
    from compose.services import draft_cancel

    ids = {"tenant_id": smtp_account.tenant_id, "account_id": smtp_account.id}
    cancelled, waiting = queue_message(smtp_account), queue_message(smtp_account)
    assert send_request(draft_id=cancelled.id, **ids) is True
    assert send_request(draft_id=waiting.id, **ids) is False  # the queued task will see it
    with tenant_scope(cancelled.tenant_id):
        draft_cancel(draft=Draft.objects.select_for_update().get(id=cancelled.id), actor=user_a)
    [(task, _headers)] = broker_sends()
    broker.delete("celery")

    assert outbox_send(draft_id=cancelled.id, drain=task["drain"], **ids) == Status.CANCELLED

    assert [task["draft_id"] for task, _ in broker_sends()] == [str(waiting.id)]
    assert state(waiting)[0].status == Status.QUEUED and smtp_server.deliveries == []


@pytest.mark.django_db
def test_a_batchs_sent_copies_go_in_one_command_to_a_server_with_literal_plus_and_multiappend(
    synced_account, smtp_server, mailbox, imap_writes
):
    """Dovecot takes non-synchronising literals and MULTIAPPEND: the copies
    of a batch are one APPEND command, written at once (one round trip and
    one transaction of the mailbox, not one a message); each copy is there
    once, seen, dated when it was sent."""
    drafts = [queue_message(synced_account, subject=f"P{n}") for n in range(5)]

    assert send(drafts[0]) == Status.SENT

    # One write, one MULTIAPPEND command carrying the five (the task's own one too).
    assert [(w.count(b" APPEND "), w.count(b"(\\Seen)")) for w in imap_writes if b" APPEND " in w] == [(1, 5)]
    assert [state(d)[1].sent_copy for d in drafts] == ["appended"] * 5
    mailbox.select_folder("Sent", readonly=True)
    fetched = mailbox.fetch(
        mailbox.search(["ALL"]), ["FLAGS", "INTERNALDATE", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]
    )
    assert sorted(v[b"BODY[HEADER.FIELDS (SUBJECT)]"].strip() for v in fetched.values()) == [
        f"Subject: P{n}".encode() for n in range(5)
    ]
    assert all(b"\\Seen" in v[b"FLAGS"] for v in fetched.values())
    sent_at = {state(d)[1].sent_at.replace(microsecond=0) for d in drafts}
    assert {v[b"INTERNALDATE"].astimezone(timezone.get_current_timezone()) for v in fetched.values()} <= {
        t.astimezone(timezone.get_current_timezone()) for t in sent_at
    }


@pytest.mark.django_db
def test_a_drains_sent_copies_go_over_one_imap_session_each_batch_answered_after_the_next_is_sent(
    synced_account, smtp_server, mailbox, monkeypatch, imap_logins
):
    """The server saves a batch's copies while the next batch is sent: a
    batch's MULTIAPPEND is answered only after the next batch's messages
    went, and the whole drain logs in to IMAP once."""
    import imaplib

    from compose import outbox

    monkeypatch.setattr(outbox, "DRAIN_BATCH", 2)
    events = []  # (what, messages delivered over SMTP by then)
    send_bytes, tagged = imaplib.IMAP4.send, imaplib.IMAP4._get_tagged_response
    appends = set()

    def recorded_send(self, data):
        if b" APPEND " in bytes(data):
            appends.add(bytes(data).split(b" ", 1)[0])
            copies = bytes(data).count(b"(\\Seen)")
            events.append((f"append {copies}", len(smtp_server.deliveries)))
        return send_bytes(self, data)

    def recorded_tagged(self, tag, *args, **kwargs):
        result = tagged(self, tag, *args, **kwargs)
        if tag in appends:
            events.append((f"answer {result[0]}", len(smtp_server.deliveries)))
        return result

    monkeypatch.setattr(imaplib.IMAP4, "send", recorded_send)
    monkeypatch.setattr(imaplib.IMAP4, "_get_tagged_response", recorded_tagged)
    drafts = [queue_message(synced_account, subject=f"D{n}") for n in range(5)]
    # While the second batch is sent, the first one's copies are in flight:
    # its send locks are still held (no other task may append them).
    held_during = []
    send_batch = outbox._send_batch

    def spied(sender, attempts, sent, **kwargs):
        held_during.append(outbox._send_locks_held([d.id for d in drafts[:3]]))
        return send_batch(sender, attempts, sent, **kwargs)

    monkeypatch.setattr(outbox, "_send_batch", spied)

    assert send(drafts[0]) == Status.SENT

    assert held_during[1] == {d.id for d in drafts[:3]}
    assert outbox._send_locks_held([d.id for d in drafts]) == set()  # all released at the end

    assert [state(d)[1].sent_copy for d in drafts] == ["appended"] * 5
    assert len(imap_logins) == 1
    # Batches of 3 (the task's own draft and two) and 2.
    assert events == [("append 3", 3), ("answer OK", 5), ("append 2", 5), ("answer OK", 5)]
    assert len(sent_folder_messages(mailbox)) == 5


@pytest.mark.django_db
def test_a_drain_to_a_server_without_multiappend_appends_one_each_over_one_session(
    synced_account, smtp_server, mailbox, monkeypatch, imap_logins, imap_writes
):
    """Gmail, say, has no MULTIAPPEND: each copy is its own APPEND, answered
    at once, and the run still logs in to IMAP once, not once a batch."""
    from imapclient import IMAPClient

    from compose import outbox

    monkeypatch.setattr(outbox, "DRAIN_BATCH", 2)
    has_capability = IMAPClient.has_capability
    monkeypatch.setattr(
        IMAPClient, "has_capability", lambda self, c: c.upper() != "MULTIAPPEND" and has_capability(self, c)
    )
    drafts = [queue_message(synced_account, subject=f"G{n}") for n in range(5)]

    assert send(drafts[0]) == Status.SENT

    assert [state(d)[1].sent_copy for d in drafts] == ["appended"] * 5
    assert len(imap_logins) == 1
    assert sum(w.count(b" APPEND ") for w in imap_writes) == 5  # one APPEND command a copy (LITERAL+)
    assert len(sent_folder_messages(mailbox)) == 5


@pytest.mark.django_db
def test_a_drains_multiappend_the_server_refuses_goes_again_one_append_each(
    synced_account, smtp_server, mailbox, monkeypatch
):
    """The drain's copies in flight (`_SentCopies`): a batch's MULTIAPPEND
    refused for one message the server will not save gets the others
    appended one by one, and only that one failed."""
    from compose import outbox
    from messages.blobs import BlobStore

    monkeypatch.setattr(outbox, "DRAIN_BATCH", 2)
    drafts = [queue_message(synced_account, subject=f"E{n}") for n in range(4)]
    bad_key = state(drafts[1])[1].raw_blob_key
    reads = []
    get = BlobStore.get

    def get_once_whole(self, tenant_id, key):
        reads.append(key)
        # Delivered whole over SMTP; empty when read again for its Sent copy.
        return b"" if key == bad_key and reads.count(key) > 1 else get(self, tenant_id, key)

    monkeypatch.setattr(BlobStore, "get", get_once_whole)

    assert send(drafts[0]) == Status.SENT

    assert [state(d)[0].status for d in drafts] == [Status.SENT] * 4
    copies = [state(d)[1] for d in drafts]
    assert [c.sent_copy for c in copies] == ["appended", "failed", "appended", "appended"]
    assert "zero byte" in copies[1].error
    mailbox.select_folder("Sent", readonly=True)
    fetched = mailbox.fetch(mailbox.search(["ALL"]), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
    subjects = [v[b"BODY[HEADER.FIELDS (SUBJECT)]"].strip() for v in fetched.values()]
    assert sorted(subjects) == [b"Subject: E0", b"Subject: E2", b"Subject: E3"]


@pytest.mark.django_db
def test_a_multiappend_the_server_refuses_goes_again_one_append_each_and_only_the_bad_copy_fails(
    synced_account, mailbox, monkeypatch
):
    """MULTIAPPEND is all or nothing: Dovecot refuses the whole command for
    one message it will not save (here an empty one). The others are then
    appended one by one; the refused one is failed with the server's reply."""
    from compose import outbox
    from messages.blobs import BlobStore

    drafts = [queue_message(synced_account, subject=f"M{n}") for n in range(3)]
    items = [state(d)[1] for d in drafts]
    get = BlobStore.get
    monkeypatch.setattr(
        BlobStore, "get", lambda self, t, key: b"" if key == items[1].raw_blob_key else get(self, t, key)
    )

    outcomes = outbox._sent_copies_store(items, synced_account, look_first=False)

    assert outcomes[items[0].id] == outcomes[items[2].id] == ("appended", "")
    state_1, error_1 = outcomes[items[1].id]
    assert state_1 == "failed" and error_1.startswith("NO ") and "zero byte" in error_1
    mailbox.select_folder("Sent", readonly=True)
    fetched = mailbox.fetch(mailbox.search(["ALL"]), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
    assert sorted(v[b"BODY[HEADER.FIELDS (SUBJECT)]"].strip() for v in fetched.values()) == [
        b"Subject: M0",
        b"Subject: M2",
    ]


@pytest.mark.django_db
def test_a_drain_asks_for_one_sync_at_its_end_not_one_a_batch(smtp_account, smtp_server, monkeypatch):
    from compose import outbox
    from mailboxes import services as mailbox_services

    syncs = []
    monkeypatch.setattr(mailbox_services, "sync_request", lambda **kwargs: syncs.append(kwargs))
    monkeypatch.setattr(outbox, "DRAIN_BATCH", 2)
    drafts = [queue_message(smtp_account, subject=f"S{n}") for n in range(5)]

    assert send(drafts[0]) == Status.SENT

    assert [state(d)[0].status for d in drafts] == [Status.SENT] * 5
    assert [(s["account"].id, s["again_if_joined"]) for s in syncs] == [(smtp_account.id, True)]


@pytest.mark.django_db
def test_a_run_that_hands_items_over_leaves_the_sync_to_the_run_that_sends_the_last(
    smtp_account, smtp_server, broker, short_runs
):
    """A backlog longer than a run syncs once, after its last run: a sync
    per run took the CPU the drain needed."""
    syncs = short_runs
    ids = {"tenant_id": smtp_account.tenant_id, "account_id": smtp_account.id}
    drafts = [queue_message(smtp_account, subject=f"L{n}") for n in range(5)]

    assert outbox_send(draft_id=drafts[0].id, **ids) == Status.SENT

    assert [state(d)[0].status for d in drafts] == [Status.SENT] * 3 + [Status.QUEUED] * 2
    [(task, _headers)] = broker_sends()
    assert task["draft_id"] == str(drafts[3].id)
    assert syncs == []

    assert outbox_send(draft_id=drafts[3].id, **ids) == Status.SENT

    assert [state(d)[0].status for d in drafts] == [Status.SENT] * 5
    assert syncs == [smtp_account.id]


@pytest.mark.django_db
def test_the_sync_a_run_left_owed_is_asked_for_by_the_next_even_if_it_sends_nothing(
    smtp_account, smtp_server, broker, short_runs, user_a
):
    from compose.services import draft_cancel

    syncs = short_runs
    ids = {"tenant_id": smtp_account.tenant_id, "account_id": smtp_account.id}
    drafts = [queue_message(smtp_account, subject=f"O{n}") for n in range(4)]
    assert outbox_send(draft_id=drafts[0].id, **ids) == Status.SENT
    [(task, _headers)] = broker_sends()
    assert task["draft_id"] == str(drafts[3].id) and syncs == []
    # The item handed over is cancelled before its task runs.
    with tenant_scope(smtp_account.tenant_id):
        draft_cancel(draft=Draft.objects.select_for_update().get(id=drafts[3].id), actor=user_a)

    assert outbox_send(draft_id=drafts[3].id, drain=task["drain"], **ids) == Status.CANCELLED

    assert syncs == [smtp_account.id]


@pytest.mark.django_db
def test_a_backlog_of_more_than_a_batch_gets_one_helper_task_and_each_item_is_sent_once(
    smtp_account, smtp_server, broker, monkeypatch
):
    from compose import outbox

    monkeypatch.setattr(outbox, "DRAIN_BATCH", 2)
    drafts = [queue_message(smtp_account, subject=f"H{n}") for n in range(7)]

    assert send(drafts[0]) == Status.SENT

    # One helper (DRAIN_HELPERS), queued for an item past the first batch.
    [(helper, _headers)] = broker_sends()
    assert helper["account_id"] == str(smtp_account.id)
    assert helper["draft_id"] == str(drafts[3].id)
    assert helper["helper"] == 0
    # This run got to everything first; the helper, arriving late, sends nothing again.
    assert [state(d)[0].status for d in drafts] == [Status.SENT] * 7
    ids = {"tenant_id": smtp_account.tenant_id, "account_id": smtp_account.id}
    assert outbox_send(draft_id=drafts[3].id, helper=0, **ids) == Status.SENT
    assert sorted(d.data.count(b"Subject: H") for d in smtp_server.deliveries) == [1] * 7


@pytest.mark.django_db
def test_a_helper_frees_its_slot_when_it_ends_and_leaves_the_accounts_drain_mark(
    smtp_account, smtp_server, broker, monkeypatch
):
    """A long backlog gets a helper for each of its runs, not one for the
    first run only; and a helper's end does not open the account to a third
    drain while the run that holds the mark goes on."""
    from django.core.cache import cache

    from compose import outbox

    monkeypatch.setattr(outbox, "DRAIN_BATCH", 2)
    ids = {"tenant_id": smtp_account.tenant_id, "account_id": smtp_account.id}
    drafts = [queue_message(smtp_account, subject=f"F{n}") for n in range(4)]
    assert send_request(draft_id=drafts[0].id, **ids) is True  # the mark: a run is queued
    broker.delete("celery")
    outbox._drain_helper(smtp_account.tenant_id, smtp_account.id, drafts[3].id)
    outbox._drain_helper(smtp_account.tenant_id, smtp_account.id, drafts[2].id)
    assert [(task["draft_id"], task["helper"]) for task, _ in broker_sends()] == [(str(drafts[3].id), 0)]

    assert outbox_send(draft_id=drafts[3].id, helper=0, **ids) == Status.SENT

    assert [state(d)[0].status for d in drafts] == [Status.SENT] * 4
    assert cache.get(outbox._drain_mark(smtp_account.id)) is not None  # the first run's, still queued
    broker.delete("celery")
    outbox._drain_helper(smtp_account.tenant_id, smtp_account.id, drafts[2].id)
    assert [(task["draft_id"], task["helper"]) for task, _ in broker_sends()] == [(str(drafts[2].id), 0)]


# --- What a drained message costs ---------------------------------------------------------


def test_each_further_message_of_a_drain_is_one_round_trip_to_the_database(
    committed_db, smtp_account, smtp_server
):
    """Real commits (no test transaction around it): a drained message's
    outcome goes with the next one's "data" phase, in one transaction and
    one round trip; the batch's claim, locks and Sent copies are per batch."""
    from django.db import connection

    def drain(count: int) -> int:
        drafts = [queue_message(smtp_account, subject=f"R{n}") for n in range(count)]
        statements = 0

        def counted(execute, sql, params, many, context):
            nonlocal statements
            statements += 1
            return execute(sql, params, many, context)

        with connection.execute_wrapper(counted):
            assert send(drafts[0]) == Status.SENT
        assert [state(d)[0].status for d in drafts] == [Status.SENT] * count
        assert {a for d in drafts for a in audit_actions(d)} == {"compose.send.sent"}
        return statements

    few, more = drain(3), drain(13)

    assert more - few == 10
    assert len(smtp_server.deliveries) == 16
