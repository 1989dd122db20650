"""No secret in the logs: real flows (a login for tokens, a refresh, a wrong
password, an account created with its IMAP and SMTP passwords and checked
against the real Dovecot and SMTP sink, a sync against Dovecot, a send
through the sink) with every logger at DEBUG, as production writes them but
WITHOUT the redaction filter, so that a secret the code logs is found here
rather than hidden by the safety net; then the same lines with it."""

import json
import logging

import pytest

from compose.models import Status
from compose.tests.conftest import SMTP_PASSWORD, SMTP_USER, smtp_server, smtp_sink  # noqa: F401
from compose.tests.test_outbox import queue_message, send
from emailclient.core.tests.test_logs import Captured, captured  # noqa: F401
from mailboxes.tests.conftest import PASSWORD as MAIL_PASSWORD
from mailboxes.tests.conftest import devmail, mail_settings, mail_user, mailbox  # noqa: F401
from mailboxes.tests.test_imap_sync import seed
from mailboxes.tests.test_tasks_and_api import run_task
from messages.tests.corpus import corpus_files

USER_PASSWORD = "Login-Pass-7f3c9e21"
WRONG_PASSWORD = "Wrong-Pass-0a9d2b64"
BODY_MARKER = "Body-Marker-5e1b8c77"


@pytest.mark.django_db
def test_a_full_run_logs_no_secret(
    captured,  # noqa: F811
    api_client,
    user_a,
    tenant_a,
    mail_settings,  # noqa: F811
    devmail,  # noqa: F811
    mail_user,  # noqa: F811
    mailbox,  # noqa: F811
    smtp_server,  # noqa: F811
):
    mail_settings.ACCOUNT_VERIFY_ON_SAVE = True  # the passwords go to the servers at creation
    # The SMTP sink (aiosmtpd, in this process) logs what it receives at
    # DEBUG: the test's server, not the service.
    sink_log = logging.getLogger("mail.log")
    sink_level = sink_log.level
    sink_log.setLevel(logging.WARNING)
    redacted = Captured(redacted=True)
    logging.getLogger().addHandler(redacted.handler)
    try:
        user_a.set_password(USER_PASSWORD)
        user_a.save()
        # A wrong password, then the right one.
        wrong = api_client.post(
            "/api/auth/token", {"username": "alice", "password": WRONG_PASSWORD}, format="json"
        )
        assert wrong.status_code == 401
        tokens = api_client.post(
            "/api/auth/token", {"username": "alice", "password": USER_PASSWORD}, format="json"
        ).json()
        access, refresh = tokens["access"], tokens["refresh"]
        refreshed = api_client.post("/api/auth/token/refresh", {"refresh": refresh}, format="json").json()
        access, new_refresh = refreshed["access"], refreshed["refresh"]
        api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}", HTTP_X_TENANT_ID=tenant_a.slug)

        created = api_client.post(
            "/api/accounts/",
            {
                "account_name": "Work",
                "email_address": f"{mail_user}@example.com",
                "protocol": "imap",
                "hostname": "127.0.0.1",
                "port": devmail.imap_port,
                "encryption": "starttls",
                "username": mail_user,
                "password": MAIL_PASSWORD,
                "smtp_hostname": "127.0.0.1",
                "smtp_port": smtp_server.port("starttls"),
                "smtp_encryption": "starttls",
                "smtp_username": SMTP_USER,
                "smtp_password": SMTP_PASSWORD,
            },
            format="json",
        )
        assert created.status_code == 201, created.json()
        account_id = created.json()["id"]
        # A wrong IMAP password is refused after a real login attempt.
        refused = api_client.patch(f"/api/accounts/{account_id}", {"password": WRONG_PASSWORD}, format="json")
        assert refused.status_code == 400

        from accounts.models import EmailAccount
        from emailclient.core.tenancy import tenant_scope

        seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")[:3]})
        with tenant_scope(tenant_a.id):
            account = EmailAccount.objects.get(id=account_id)
        assert run_task(account)["result"] == "ok"
        assert api_client.get("/api/messages", {"folder": "INBOX"}).status_code in (200, 400)

        draft = queue_message(account, text=f"Hello,\r\n{BODY_MARKER}\r\n")
        assert send(draft) == Status.SENT
        assert BODY_MARKER.encode() in smtp_server.deliveries[-1].data  # it went out
    finally:
        logging.getLogger().removeHandler(redacted.handler)
        sink_log.setLevel(sink_level)

    raw = captured.text()
    secrets = {
        "user password": USER_PASSWORD,
        "wrong password": WRONG_PASSWORD,
        "access token": access,
        "first access token": tokens["access"],
        "refresh token": refresh,
        "rotated refresh token": new_refresh,
        "IMAP password": MAIL_PASSWORD,
        "SMTP password": SMTP_PASSWORD,
        "message body": BODY_MARKER,
    }
    # The run did log: each request's access line, the task's lines, the send's.
    lines = [json.loads(line) for line in raw.splitlines()]
    assert sum(line["logger"] == "emailclient.request" for line in lines) >= 6, raw
    assert any(line.get("task_name") == "mailboxes.tasks.sync_account" for line in lines), raw
    assert any(line["logger"] == "compose.outbox" for line in lines), raw
    for name, secret in secrets.items():
        assert secret not in raw, f"{name} in the logs"
        assert secret not in redacted.text(), f"{name} in the redacted logs"
