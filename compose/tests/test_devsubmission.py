"""The development mail path of `make run` (deploy/devmail/devsubmission.py):
submission with STARTTLS and AUTH, delivery into the Dovecot mailbox of a
devmail user, everything else caught and never relayed."""

import io
import smtplib
import socket
import ssl
import subprocess
import sys
import time

import pytest
from django.conf import settings

from accounts.services import Credentials
from compose.smtp import AuthenticationFailed, InsecureServer, message_deliver
from mailboxes.imap.connection import ServerConfig
from mailboxes.tests.conftest import PASSWORD, free_port

SCRIPT = settings.BASE_DIR / "deploy" / "devmail" / "devsubmission.py"


@pytest.fixture(scope="module")
def submission(devmail):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(devmail.root), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"devsubmission did not start: {process.stderr.read().decode()}") from None
            time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(10)


def config(devmail, port, **overrides):
    values = {
        "host": "127.0.0.1",
        "port": port,
        "encryption": "starttls",
        "allow_private": True,
        "ca_file": str(devmail.ca_file),
        "connect_timeout": 5.0,
        "read_timeout": 10.0,
    }
    return ServerConfig(**{**values, **overrides})


def message(sender, to, message_id):
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: Through the dev path\r\n"
        f"Message-ID: <{message_id}@localhost>\r\n\r\nHello.\r\n"
    ).encode()


def test_delivers_to_the_users_inbox_and_catches_the_rest(devmail, submission, mail_user, mailbox):
    sender = f"{mail_user}@localhost"
    result = message_deliver(
        config=config(devmail, submission),
        credentials=Credentials(mail_user, PASSWORD),
        envelope_from=sender,
        recipients=[f"{mail_user}@localhost", "stranger@example.org"],
        data=message(sender, f"{mail_user}@localhost, stranger@example.org", f"dev-{mail_user}"),
    )

    assert result.reply.code == 250
    assert sorted(result.accepted) == sorted([f"{mail_user}@localhost", "stranger@example.org"])
    mailbox.select_folder("INBOX")
    uids = mailbox.search(["HEADER", "Message-ID", f"dev-{mail_user}@localhost"])
    assert len(uids) == 1
    body = mailbox.fetch(uids, ["BODY.PEEK[]"])[uids[0]][b"BODY[]"]
    assert b"Subject: Through the dev path" in body
    caught = [
        p for p in (devmail.root / "caught").glob("*.eml") if f"dev-{mail_user}@".encode() in p.read_bytes()
    ]
    assert len(caught) == 1


def test_login_is_checked_against_the_devmail_user(devmail, submission, mail_user, mailbox):
    with pytest.raises(AuthenticationFailed):
        message_deliver(
            config=config(devmail, submission),
            credentials=Credentials(mail_user, "wrong"),
            envelope_from=f"{mail_user}@localhost",
            recipients=[f"{mail_user}@localhost"],
            data=message("x@localhost", f"{mail_user}@localhost", "refused"),
        )

    mailbox.select_folder("INBOX")
    assert mailbox.search(["ALL"]) == []


def test_no_login_and_no_mail_before_starttls(devmail, submission, mail_user):
    with smtplib.SMTP("127.0.0.1", submission, timeout=5) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        code, _ = client.docmd("MAIL", f"FROM:<{mail_user}@localhost>")
        assert code == 530
        client.starttls(context=ssl.create_default_context(cafile=str(devmail.ca_file)))
        client.ehlo()
        assert client.has_extn("auth")
    with pytest.raises(InsecureServer, match="not allowed"):
        message_deliver(
            config=config(devmail, submission, encryption="none", allow_plaintext=False),
            credentials=Credentials(mail_user, PASSWORD),
            envelope_from=f"{mail_user}@localhost",
            recipients=[f"{mail_user}@localhost"],
            data=b"Subject: x\r\n\r\nx\r\n",
        )


@pytest.mark.django_db
def test_the_demo_account_sends_into_its_own_inbox(devmail, submission, settings, tmp_path, monkeypatch):
    """`seeddemomail` points the demo account at the submission server (and
    moves an existing one there); what it sends lands in the demo INBOX."""
    from django.core.management import call_command

    from accounts.models import EmailAccount
    from accounts.services import account_credentials
    from compose.smtp import smtp_config
    from emailclient.core.tenancy import tenant_scope
    from emailclient.core.tests.factories import TenantFactory, UserFactory
    from mailboxes.tests.conftest import imap

    settings.DEBUG = True
    settings.DEMO_PASSWORD = PASSWORD
    settings.MAIL_TLS_CA_FILE = str(devmail.ca_file)
    devmail.add_user("demo", PASSWORD)
    monkeypatch.setattr(
        "mailboxes.management.commands.seeddemomail.sync_request", lambda account: ("no-sync", False)
    )
    tenant, _ = TenantFactory(slug="demo"), UserFactory(username="demo")
    seed = ["seeddemomail", "--imap-port", str(devmail.imap_port), "--corpus", str(tmp_path / "none")]
    call_command(*seed, "--smtp-port", "1", stdout=io.StringIO())  # created
    call_command(*seed, "--smtp-port", str(submission), stdout=io.StringIO())  # updated in place
    with tenant_scope(tenant.id):
        account = EmailAccount.objects.get(tenant=tenant, email_address="demo@localhost")
    assert (account.smtp_hostname, account.smtp_port, account.smtp_encryption) == (
        "127.0.0.1",
        submission,
        "starttls",
    )

    message_deliver(
        config=smtp_config(account),
        credentials=account_credentials(account=account, smtp=True),
        envelope_from="demo@localhost",
        recipients=["demo@localhost"],
        data=message("demo@localhost", "demo@localhost", "demo-to-demo"),
    )

    client = imap(devmail, "demo")
    try:
        client.select_folder("INBOX")
        assert len(client.search(["HEADER", "Message-ID", "demo-to-demo@localhost"])) == 1
    finally:
        client.logout()
