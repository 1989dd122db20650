"""POP3 accounts against the real Dovecot POP3 listener (mail is put in the
user's INBOX over IMAP, which POP3 then serves), and a small fake server
(`pop3_fake`) for the faults Dovecot cannot show."""

import datetime
import time

import pytest
from django.utils import timezone

from accounts.tests.factories import EmailAccountFactory
from conftest import bearer_client
from emailclient.core.crypto import encrypt_secret
from emailclient.core.tenancy import tenant_scope
from mailboxes import sync_status
from mailboxes.imap import (
    AddressNotAllowed,
    AuthenticationFailed,
    DeadlineExceeded,
    InsecureServer,
    MailServerError,
    ProtocolViolation,
    ServerConfig,
)
from mailboxes.pop3 import Pop3Session
from mailboxes.sync import account_sync
from mailboxes.sync import pop3 as pop3_sync
from mailboxes.sync.pop3 import NO_UIDL_NOTICE
from mailboxes.tasks import sync_account_task
from mailboxes.tests.conftest import PASSWORD
from mailboxes.tests.pop3_fake import FakePop3
from mailboxes.tests.tarpit import Tarpit
from mailboxes.writeback import account_write_back
from messages.models import Folder, Message, MessageChange, Pop3Uidl, QuarantinedMessage
from messages.tests.corpus import corpus_files


def mail(n: int, subject: str = "hello") -> bytes:
    return (
        f"From: Sender <s{n}@example.com>\r\nTo: u@example.com\r\nSubject: {subject} {n}\r\n"
        f"Message-ID: <m{n}.{subject}@example.com>\r\nDate: Thu, 3 Dec 2026 10:00:{n % 60:02d} +0000\r\n\r\n"
        f"Body {n}\r\n.a line that starts with a dot\r\n"
    ).encode()


def sync(account):
    return account_sync(tenant_id=account.tenant_id, account_id=account.id)


def stored(account) -> list[Message]:
    with tenant_scope(account.tenant_id):
        return list(Message.objects.filter(account=account).order_by("imap_uid"))


def quarantined(account) -> int:
    with tenant_scope(account.tenant_id):
        return QuarantinedMessage.objects.filter(account=account).count()


def server_uidls(devmail, user) -> dict[int, str]:
    config = ServerConfig("127.0.0.1", devmail.pop3_port, "none", allow_private=True, allow_plaintext=True)
    with Pop3Session(config, user, PASSWORD) as session:
        return session.uidl() or {}


def server_count(mailbox) -> int:
    return mailbox.select_folder("INBOX")[b"EXISTS"]


@pytest.fixture
def pop3_account(mail_settings, devmail, mail_user, tenant_a, user_a):
    return EmailAccountFactory(
        tenant=tenant_a,
        user=user_a,
        email_address=f"{mail_user}@example.com",
        protocol="pop3",
        hostname="127.0.0.1",
        port=devmail.pop3_port,
        encryption="starttls",
        username=mail_user,
    )


def fake_account(tenant, user, server: FakePop3, **fields):
    fields = {"encryption": "none", **fields}
    return EmailAccountFactory(
        tenant=tenant,
        user=user,
        email_address="fake@example.com",
        protocol="pop3",
        hostname="127.0.0.1",
        port=server.port,
        username="user",
        password_encrypted=encrypt_secret("secret"),
        **fields,
    )


def update(account, **fields):
    with tenant_scope(account.tenant_id):
        type(account).objects.filter(id=account.id).update(**fields)
        account.refresh_from_db()


# --- Dovecot ----------------------------------------------------------------------


@pytest.mark.django_db
def test_first_sync_then_new_mail_only(pop3_account, mailbox, devmail, mail_user):
    for n in range(5):
        mailbox.append("INBOX", mail(n))

    report = sync(pop3_account)

    assert (report.new, report.quarantined, report.folders) == (5, 0, 1)
    rows = stored(pop3_account)
    uidls = server_uidls(devmail, mail_user)
    assert sorted(m.pop3_uidl for m in rows) == sorted(uidls.values())
    assert [m.subject for m in rows] == [f"hello {n}" for n in range(5)]
    assert all(m.thread_id and not m.is_read and m.raw_blob_key for m in rows)
    assert "\r\n.a line that starts with a dot" in rows[0].text_body.replace("\n", "\r\n")
    with tenant_scope(pop3_account.tenant_id):
        (folder,) = Folder.objects.filter(account=pop3_account)
        assert (folder.name, folder.type, folder.total_count, folder.unread_count) == ("INBOX", "inbox", 5, 5)
        assert Pop3Uidl.objects.filter(folder=folder).count() == 5
    assert server_count(mailbox) == 5  # left on the server

    assert sync(pop3_account).new == 0  # nothing new: nothing downloaded
    mailbox.append("INBOX", mail(5))
    mailbox.append("INBOX", mail(6))
    report = sync(pop3_account)
    assert report.new == 2
    assert [m.subject for m in stored(pop3_account)] == [f"hello {n}" for n in range(7)]


@pytest.mark.django_db
def test_mail_deleted_on_the_server_stays_here(pop3_account, mailbox):
    for n in range(4):
        mailbox.append("INBOX", mail(n))
    sync(pop3_account)
    mailbox.select_folder("INBOX")
    mailbox.delete_messages(mailbox.search(["ALL"])[:2])
    mailbox.expunge()

    report = sync(pop3_account)

    assert report.expunged == 0
    assert len(stored(pop3_account)) == 4  # a POP3 user expects the downloaded copy to stay
    with tenant_scope(pop3_account.tenant_id):
        # Kept through one more listing (a server may forget a unique id for a session)...
        assert Pop3Uidl.objects.filter(folder__account=pop3_account).count() == 4
    assert sync(pop3_account).new == 0
    with tenant_scope(pop3_account.tenant_id):
        # ...then only what the server lists.
        assert Pop3Uidl.objects.filter(folder__account=pop3_account).count() == 2
    mailbox.append("INBOX", mail(9))
    assert sync(pop3_account).new == 1
    assert len(stored(pop3_account)) == 5


@pytest.mark.django_db
def test_leave_on_server_off_deletes_only_what_is_stored(pop3_account, mailbox, settings):
    update(pop3_account, pop3_leave_on_server=False)
    settings.MAIL_MAX_MESSAGE_BYTES = 2000  # one message over it: quarantined unfetched
    for n in range(3):
        mailbox.append("INBOX", mail(n))
    mailbox.append("INBOX", mail(3) + b"x" * 3000 + b"\r\n")

    report = sync(pop3_account)

    assert (report.new, report.quarantined, report.deleted_on_server) == (3, 1, 3)
    assert len(stored(pop3_account)) == 3
    # The one only the server holds stays there.
    assert server_count(mailbox) == 1
    assert sync(pop3_account).new == 0
    assert server_count(mailbox) == 1


@pytest.mark.django_db
def test_delete_after_days(pop3_account, mailbox):
    update(pop3_account, pop3_leave_on_server=False, pop3_delete_after_days=7)
    for n in range(3):
        mailbox.append("INBOX", mail(n))

    assert sync(pop3_account).deleted_on_server == 0
    assert server_count(mailbox) == 3
    with tenant_scope(pop3_account.tenant_id):
        # Counted from when the message was stored, not from when its unique id was mapped.
        long_ago = timezone.now() - datetime.timedelta(days=8)
        Pop3Uidl.objects.filter(folder__account=pop3_account).update(created_at=long_ago)
        first = Message.objects.filter(account=pop3_account).order_by("imap_uid").first()
        Message.objects.filter(id=first.id).update(created_at=long_ago)

    report = sync(pop3_account)

    assert report.deleted_on_server == 1
    assert server_count(mailbox) == 2
    assert len(stored(pop3_account)) == 3


@pytest.mark.django_db
def test_crash_mid_download_then_resume_loses_and_duplicates_nothing(
    pop3_account, mailbox, settings, monkeypatch
):
    settings.SYNC_BATCH_MESSAGES = 4
    for n in range(10):
        mailbox.append("INBOX", mail(n))
    calls = []
    original = pop3_sync._Pop3Fetcher.fetch_full

    def crash_on_third_batch(self, uids):
        calls.append(uids)
        if len(calls) == 3:
            raise ConnectionResetError("worker died mid-download")
        return original(self, uids)

    monkeypatch.setattr(pop3_sync._Pop3Fetcher, "fetch_full", crash_on_third_batch)
    with pytest.raises(MailServerError):
        sync(pop3_account)
    assert len(stored(pop3_account)) == 8  # the two batches before the crash
    monkeypatch.setattr(pop3_sync._Pop3Fetcher, "fetch_full", original)

    report = sync(pop3_account)

    assert report.new == 2
    rows = stored(pop3_account)
    assert [m.subject for m in rows] == [f"hello {n}" for n in range(10)]
    assert len({m.pop3_uidl for m in rows}) == 10


@pytest.mark.django_db
def test_malformed_corpus_mail_is_quarantined_and_the_sync_goes_on(pop3_account, mailbox):
    paths = corpus_files("torture")  # among them one that is not mail, one of endless parts
    for path in paths:
        mailbox.append("INBOX", path.read_bytes())

    report = sync(pop3_account)

    assert report.new + report.quarantined == len(paths)
    assert report.quarantined >= 2
    assert report.new > len(paths) * 0.9
    with tenant_scope(pop3_account.tenant_id):
        held = list(QuarantinedMessage.objects.filter(account=pop3_account))
    assert len(held) == report.quarantined
    assert all(q.raw_blob_key and q.reason for q in held)  # the source kept, the reason said
    assert any("not an RFC 5322 message" in q.reason for q in held)
    again = sync(pop3_account)
    assert (again.new, again.quarantined) == (0, 0)


@pytest.mark.django_db
def test_tls_995_and_a_wrong_password(pop3_account, devmail, mailbox):
    mailbox.append("INBOX", mail(1))
    update(pop3_account, port=devmail.pop3s_port, encryption="tls")
    assert sync(pop3_account).new == 1
    config = ServerConfig("127.0.0.1", devmail.pop3s_port, "tls", allow_private=True)
    with pytest.raises(InsecureServer):  # the test CA is not trusted here
        Pop3Session(config, "x", "y")
    config = ServerConfig("127.0.0.1", devmail.pop3_port, "none", allow_private=True, allow_plaintext=True)
    with pytest.raises(AuthenticationFailed):
        Pop3Session(config, "nobody", "wrong")


@pytest.mark.django_db
def test_the_task_status_and_the_api(pop3_account, mailbox, client_a, client_b, user_a, tenant_a):
    mailbox.append("INBOX", mail(1))
    for url in (
        f"/api/sync/{pop3_account.id}",
        f"/api/sync/{pop3_account.id}/",
        f"/api/sync/imap/{pop3_account.id}",
    ):
        response = client_a.post(url)
        assert response.status_code == 202, url
        assert client_b.post(url).status_code == 404  # another tenant's account
    seed_form = f"/api/v1/{tenant_a.slug}/email_client/sync/{pop3_account.id}"
    assert bearer_client(user_a).post(seed_form).status_code == 202

    task_id = client_a.post(f"/api/sync/{pop3_account.id}").json()["task_id"]
    result = sync_account_task.apply(
        kwargs={"tenant_id": str(pop3_account.tenant_id), "account_id": str(pop3_account.id)}, task_id=task_id
    ).get()
    assert result["result"] == "ok"
    status = client_a.get(f"/api/sync/status/{pop3_account.id}").json()
    assert status["state"] == "idle" and status["last_error"] == ""

    account = client_a.get(f"/api/accounts/{pop3_account.id}/").json()
    assert account["server_sync"] == {"flags": "local", "moves": "local"}
    assert account["pop3_leave_on_server"] is True
    (message,) = stored(pop3_account)
    detail = client_a.get(f"/api/messages/{message.id}/").json()
    assert detail["server_sync"] == {"flags": "local", "moves": "local"}
    # A flag change is local: nothing queued for the server.
    assert client_a.patch(f"/api/messages/{message.id}/", {"is_read": True}, format="json").status_code == 200
    with tenant_scope(pop3_account.tenant_id):
        assert not MessageChange.objects.filter(account=pop3_account).exists()


@pytest.mark.django_db
def test_write_back_never_speaks_imap_to_a_pop3_account(pop3_account, mailbox, monkeypatch):
    mailbox.append("INBOX", mail(1))
    sync(pop3_account)
    (message,) = stored(pop3_account)
    with tenant_scope(pop3_account.tenant_id):  # left from when the account was IMAP
        MessageChange.objects.create(
            tenant_id=pop3_account.tenant_id, account=pop3_account, message=message, kind="flags"
        )

    def no_imap(*args, **kwargs):
        raise AssertionError("IMAP session opened for a POP3 account")

    monkeypatch.setattr("mailboxes.writeback.ImapSession", no_imap)
    report = account_write_back(tenant_id=pop3_account.tenant_id, account_id=pop3_account.id)
    assert report.written == 1
    with tenant_scope(pop3_account.tenant_id):
        assert MessageChange.objects.get(account=pop3_account).state == MessageChange.State.DONE


@pytest.mark.django_db
def test_account_creation_verifies_a_pop3_login(mail_settings, devmail, mail_user, client_a):
    mail_settings.ACCOUNT_VERIFY_ON_SAVE = True
    data = {
        "account_name": "Pop",
        "email_address": f"{mail_user}@example.com",
        "protocol": "pop3",
        "hostname": "127.0.0.1",
        "port": devmail.pop3_port,
        "encryption": "starttls",
        "username": mail_user,
        "password": "not-the-password",
    }
    refused = client_a.post("/api/accounts/", data, format="json")
    assert refused.status_code == 400
    assert list(refused.json()["error"]["fields"]) == ["password"]
    created = client_a.post("/api/accounts/", {**data, "password": PASSWORD}, format="json")
    assert created.status_code == 201, created.json()


# --- Faults (the fake server) ---------------------------------------------------


@pytest.mark.django_db
def test_a_connection_dropped_mid_retr_then_a_good_sync(mail_settings, tenant_a, user_a):
    messages = [mail(n) for n in range(6)]
    with FakePop3(messages, drop_in_retr=4) as server:
        account = fake_account(tenant_a, user_a, server)
        with pytest.raises(MailServerError):
            sync(account)
        assert quarantined(account) == 0
        before = len(stored(account))
        assert before < 6
        server.drop_in_retr = None
        report = sync(account)
    rows = stored(account)
    assert [m.subject for m in rows] == [f"hello {n}" for n in range(6)]
    assert report.new == 6 - before
    assert len({m.pop3_uidl for m in rows}) == 6


@pytest.mark.django_db
def test_a_server_without_uidl(mail_settings, tenant_a, user_a):
    messages = [mail(n) for n in range(3)] + [mail(0)]  # a byte-identical second copy
    with FakePop3(messages, uidl=False) as server:
        account = fake_account(tenant_a, user_a, server)
        report = sync(account)
        assert report.new == 4 and report.notice == NO_UIDL_NOTICE
        assert all(m.pop3_uidl.startswith("~") for m in stored(account))
        server.messages = [*messages, mail(7)]
        assert sync(account).new == 1
        assert "RETR" in server.commands  # each message's whole content tells it apart
        result = sync_account_task.apply(
            kwargs={"tenant_id": str(account.tenant_id), "account_id": str(account.id)}
        ).get()
    assert result["result"] == "ok"
    assert len(stored(account)) == 5
    assert "UIDL" in sync_status.sync_status_get(account.id)["detail"]


@pytest.mark.django_db
def test_stls_without_the_server_offering_it_is_refused_before_login(mail_settings, tenant_a, user_a):
    with FakePop3([mail(1)], stls=False) as server:
        account = fake_account(tenant_a, user_a, server, encryption="starttls")
        with pytest.raises(InsecureServer, match="does not offer STLS"):
            sync(account)
    assert "USER" not in server.commands and "PASS" not in server.commands
    assert stored(account) == []


@pytest.mark.django_db
def test_apop_on_an_unencrypted_connection_never_sends_the_password(mail_settings, tenant_a, user_a):
    with FakePop3([mail(1)], apop=True) as server:
        account = fake_account(tenant_a, user_a, server)
        assert sync(account).new == 1
    assert "APOP" in server.commands and "PASS" not in server.commands and "USER" not in server.commands


def test_the_connection_policy_is_the_imap_one(devmail):
    plain = {"allow_plaintext": True, "allow_private": True}
    with pytest.raises(AddressNotAllowed):  # the private-address guard
        Pop3Session(ServerConfig("127.0.0.1", devmail.pop3_port, "none", allow_plaintext=True), "u", "p")
    config = ServerConfig("127.0.0.1", devmail.pop3_port, "none", allowed_ports=frozenset({995}), **plain)
    with pytest.raises(AddressNotAllowed, match="MAIL_ALLOWED_PORTS"):
        Pop3Session(config, "u", "p")
    with pytest.raises(InsecureServer, match="MAIL_ALLOW_PLAINTEXT"):
        Pop3Session(ServerConfig("127.0.0.1", devmail.pop3_port, "none", allow_private=True), "u", "p")
    with pytest.raises(ProtocolViolation):  # Dovecot's greeting is longer than 10 bytes
        Pop3Session(ServerConfig("127.0.0.1", devmail.pop3_port, "none", max_line=10, **plain), "u", "p")
    tarpit = Tarpit(mode="greeting", interval=0.05)
    try:
        config = ServerConfig(
            "127.0.0.1", tarpit.port, "none", connect_deadline=1.0, read_timeout=5.0, **plain
        )
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            Pop3Session(config, "u", "p")
        assert time.monotonic() - started < 3
    finally:
        tarpit.close()


# --- Identities that must never be taken for another message ------------------


@pytest.mark.django_db
def test_another_mailbox_with_the_same_uidls_is_downloaded_before_anything_is_deleted(
    mail_settings, tenant_a, user_a
):
    # Sequential UIDLs (or Dovecot's %08Xu%08Xv on mailboxes made in the same second):
    # mailbox B names its messages as mailbox A did.
    with FakePop3([mail(1), mail(2)], uidls=["1", "2"]) as server_a:
        account = fake_account(tenant_a, user_a, server_a)
        assert sync(account).new == 2
    with FakePop3([mail(3, "other"), mail(4, "other")], uidls=["1", "2"], user="other") as server_b:
        update(account, port=server_b.port, username="other", pop3_leave_on_server=False)
        report = sync(account)
        assert (report.new, report.deleted_on_server) == (2, 2)
        assert server_b.messages == []
    assert sorted(m.subject for m in stored(account)) == ["hello 1", "hello 2", "other 3", "other 4"]


@pytest.mark.django_db
def test_without_uidl_a_new_message_with_the_header_of_a_deleted_one_is_downloaded(
    mail_settings, tenant_a, user_a
):
    first = mail(1)
    second = first.replace(b"Body 1", b"Another body, same header")
    with FakePop3([first], uidl=False) as server:
        account = fake_account(tenant_a, user_a, server, pop3_leave_on_server=False)
        assert (sync(account).new, server.messages) == (1, [])
        server.messages = [second]
        report = sync(account)
        assert (report.new, report.deleted_on_server) == (1, 1)
    assert sorted(m.text_body.split("\n")[0].strip() for m in stored(account)) == [
        "Another body, same header",
        "Body 1",
    ]


@pytest.mark.django_db
def test_dele_only_what_is_stored_under_that_identity(mail_settings, tenant_a, user_a):
    with FakePop3([mail(1), mail(2)], uidls=["a", "b"]) as server:
        account = fake_account(tenant_a, user_a, server)
        assert sync(account).new == 2
        # A mapping that names a stored row of another identity (as a reused UIDL would):
        with tenant_scope(account.tenant_id):
            Message.objects.filter(account=account, pop3_uidl="b").update(pop3_uidl="x")
        update(account, pop3_leave_on_server=False)
        assert sync(account).deleted_on_server == 1
        assert server.messages == [mail(2)]


@pytest.mark.django_db
def test_an_imap_account_turned_pop3_keeps_its_inbox_once(imap_account, mailbox, devmail):
    for n in range(3):
        mailbox.append("INBOX", mail(n))
    assert sync(imap_account).new == 3
    with tenant_scope(imap_account.tenant_id):
        Message.objects.filter(account=imap_account, subject="hello 1").update(is_read=True)
    before = {m.id: m.subject for m in stored(imap_account)}
    update(imap_account, protocol="pop3", port=devmail.pop3_port)

    report = sync(imap_account)

    rows = stored(imap_account)
    # The same rows, taken by content (no twin, none wiped), now under POP3's UIDs.
    assert {m.id: m.subject for m in rows} == before
    assert report.expunged == 0
    assert {m.uidvalidity for m in rows} == {pop3_sync.POP3_UIDVALIDITY}
    assert all(m.pop3_uidl for m in rows)
    assert [m.subject for m in rows if m.is_read] == ["hello 1"]  # local state kept
    mailbox.append("INBOX", mail(3))
    assert sync(imap_account).new == 1
    assert len(stored(imap_account)) == 4


@pytest.mark.django_db
def test_a_pop3_message_deleted_permanently_is_gone_and_frees_the_quota(
    mail_settings, tenant_a, user_a, client_a
):
    with FakePop3([mail(1), mail(2)]) as server:
        account = fake_account(tenant_a, user_a, server)
        assert sync(account).new == 2
        first = stored(account)[0]
        assert client_a.delete(f"/api/messages/{first.id}/?permanent=1").status_code == 204
        account_write_back(tenant_id=account.tenant_id, account_id=account.id)
        assert [m.subject for m in stored(account)] == ["hello 2"]
        mail_settings.TENANT_MAX_MESSAGES = 2
        assert sync(account).new == 0  # the mapping says it was stored: not downloaded again
        server.messages = [*server.messages, mail(3)]
        report = sync(account)
    assert (report.new, report.over_quota) == (1, "")  # the deleted one no longer counts
    assert [m.subject for m in stored(account)] == ["hello 2", "hello 3"]


@pytest.mark.django_db
def test_non_ascii_uidls_stay_apart(mail_settings, tenant_a, user_a):
    with FakePop3([mail(1), mail(2)], uidls=["\u00e9a", "\u00e8a"]) as server:
        account = fake_account(tenant_a, user_a, server)
        assert sync(account).new == 2
    assert len({m.pop3_uidl for m in stored(account)}) == 2


@pytest.mark.django_db
def test_a_refused_uidl_after_it_worked_fails_the_sync_and_changes_nothing(mail_settings, tenant_a, user_a):
    with FakePop3([mail(1), mail(2)]) as server:
        account = fake_account(tenant_a, user_a, server)
        assert sync(account).new == 2
        server.uidl = False  # "-ERR" to UIDL, as a server in trouble answers
        with pytest.raises(MailServerError, match="refused UIDL"):
            sync(account)
        server.uidl = True
        assert sync(account).new == 0
    assert len(stored(account)) == 2
    with tenant_scope(account.tenant_id):
        assert Pop3Uidl.objects.filter(folder__account=account).count() == 2


# --- Hostile replies (the fake server) ----------------------------------------


@pytest.mark.django_db
def test_a_message_far_over_its_list_size_is_quarantined_not_kept(mail_settings, tenant_a, user_a):
    mail_settings.MAIL_MAX_MESSAGE_BYTES = 50_000  # max_literal: 50,000 bytes + 1 MiB
    huge = mail(2) + b"x" * 1_200_000 + b"\r\n"  # over max_literal: read to its end, dropped
    liar = mail(3) + b"y" * 200_000 + b"\r\n"  # under it, but far over what LIST says
    messages = [mail(1), huge, liar, mail(4)]
    sizes = [len(mail(1)), 300, 300, len(mail(4))]
    with FakePop3(messages, list_sizes=sizes) as server:
        account = fake_account(tenant_a, user_a, server, pop3_leave_on_server=False)
        report = sync(account)
        assert (report.new, report.quarantined, report.deleted_on_server) == (2, 2, 2)
        assert len(server.messages) == 2  # only the server holds those two
    assert [m.subject for m in stored(account)] == ["hello 1", "hello 4"]
    with tenant_scope(account.tenant_id):
        reasons = sorted(
            QuarantinedMessage.objects.filter(account=account).values_list("reason", "raw_blob_key")
        )
    assert all("listed as 300 bytes" in reason and key == "" for reason, key in reasons)


@pytest.mark.django_db
def test_an_err_in_the_middle_of_a_pipeline(mail_settings, tenant_a, user_a):
    with FakePop3([mail(1), mail(2), mail(3)], refuse_retr={2}) as server:
        account = fake_account(tenant_a, user_a, server, pop3_leave_on_server=False)
        report = sync(account)
        assert (report.new, report.quarantined, report.deleted_on_server) == (2, 1, 2)
        assert server.messages == [mail(2)]  # the one not stored stays on the server
    assert [m.subject for m in stored(account)] == ["hello 1", "hello 3"]


@pytest.mark.django_db
def test_a_lone_dot_inside_a_message_is_its_end(mail_settings, tenant_a, user_a):
    # Not dot-stuffed: the message ends at the lone ".", the rest is not an answer.
    unstuffed = b"Subject: cut\r\nMessage-ID: <cut@x>\r\n\r\nbefore\r\n.\r\nafter\r\n.\r\n"
    with FakePop3([mail(1), mail(2)], raw_answers={1: unstuffed}) as server:
        account = fake_account(tenant_a, user_a, server, pop3_leave_on_server=False)
        with pytest.raises(ProtocolViolation):
            sync(account)
        assert "DELE" not in server.commands and len(server.messages) == 2


@pytest.mark.django_db
def test_a_message_without_its_terminator(mail_settings, tenant_a, user_a):
    mail_settings.MAIL_READ_TIMEOUT = 1
    with FakePop3([mail(1), mail(2)], raw_answers={2: mail(2)}) as server:  # no ".": the server waits
        account = fake_account(tenant_a, user_a, server, pop3_leave_on_server=False)
        started = time.monotonic()
        with pytest.raises(MailServerError):
            sync(account)
        assert time.monotonic() - started < 10
        assert "DELE" not in server.commands and len(server.messages) == 2


@pytest.mark.django_db
def test_server_sync_follows_the_account_protocol(mail_settings, tenant_a, user_a, client_a):
    with FakePop3([mail(1)]) as server:
        account = fake_account(tenant_a, user_a, server)
        assert sync(account).new == 1
    (message,) = stored(account)
    detail = client_a.get(f"/api/messages/{message.id}/").json()
    assert detail["server_sync"] == {"flags": "local", "moves": "local"}
    update(account, protocol="imap")  # its messages keep their pop3_uidl, the account writes back now
    detail = client_a.get(f"/api/messages/{message.id}/").json()
    assert detail["server_sync"] == {"flags": "server", "moves": "server"}


def test_first_sync_with_real_commits_deletes_only_what_is_stored(
    committed_db, pop3_account, mailbox, settings
):
    """With real commits, so the sync runs its blob writer and pipeline threads
    as in production; leave-on-server off, several batches."""
    settings.SYNC_BATCH_MESSAGES = 3
    update(pop3_account, pop3_leave_on_server=False)
    for n in range(8):
        mailbox.append("INBOX", mail(n))

    report = sync(pop3_account)

    assert (report.new, report.quarantined, report.deleted_on_server) == (8, 0, 8)
    rows = stored(pop3_account)
    assert [m.subject for m in rows] == [f"hello {n}" for n in range(8)]
    assert all(m.raw_blob_key and m.thread_id for m in rows)
    assert server_count(mailbox) == 0
    with tenant_scope(pop3_account.tenant_id):
        folder = Folder.objects.get(account=pop3_account)
        assert (folder.uidnext, folder.total_count) == (9, 8)
    mailbox.append("INBOX", mail(8))
    assert (sync(pop3_account).new, server_count(mailbox)) == (1, 0)


@pytest.mark.django_db
def test_the_same_mailbox_under_a_new_name_is_not_stored_twice(mail_settings, tenant_a, user_a):
    with FakePop3([mail(1), mail(2)], uidls=["1", "2"]) as server:
        account = fake_account(tenant_a, user_a, server)
        assert sync(account).new == 2
        before = {m.id for m in stored(account)}
        # Another endpoint (here: the user name's case) naming the same mailbox.
        update(account, username="User")
        server.user = "User"
        sync(account)
    rows = stored(account)
    assert {m.id for m in rows} == before
    assert len({m.imap_uid for m in rows}) == 2 and min(m.imap_uid for m in rows) >= 3


@pytest.mark.django_db
def test_rows_stored_under_the_former_pop3_uidvalidity_are_moved_not_fetched_again(
    mail_settings, tenant_a, user_a
):
    with FakePop3([mail(1), mail(2)]) as server:
        account = fake_account(tenant_a, user_a, server)
        assert sync(account).new == 2
        before = {m.id for m in stored(account)}
        with tenant_scope(account.tenant_id):  # as the first POP3 engine left them
            Folder.objects.filter(account=account).update(uidvalidity=1, sync_token="3")
            Message.objects.filter(account=account).update(uidvalidity=1)
        report = sync(account)
    assert (report.new, report.expunged) == (0, 0)
    rows = stored(account)
    assert {m.id for m in rows} == before
    assert {m.uidvalidity for m in rows} == {0}
