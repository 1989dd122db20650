"""Creating an account, or changing where its password goes, logs in to its
servers first (issue 14, section 2): against the real Dovecot and the SMTP
sink, a refusal is a 400 on the field it concerns and nothing is saved."""

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest
from devmail import free_port
from django.test import Client

from accounts.models import EmailAccount
from accounts.services import account_credentials
from accounts.tests.factories import EmailAccountFactory
from compose.tests.conftest import SMTP_PASSWORD, SMTP_USER, smtp_server, smtp_sink  # noqa: F401
from emailclient.core.semaphores import (
    semaphore_key,
    semaphores_acquire,
    semaphores_in_use,
    semaphores_release,
)
from emailclient.core.tenancy import tenant_scope
from emailclient.core.tests.factories import UserFactory
from mailboxes.tests.conftest import PASSWORD, imap

URL = "/api/accounts/"


@pytest.fixture
def verifying(mail_settings):
    mail_settings.ACCOUNT_VERIFY_ON_SAVE = True
    return mail_settings


def _account(devmail, user, **overrides):
    return {
        "account_name": "Work",
        "email_address": f"{user}@example.com",
        "protocol": "imap",
        "hostname": "127.0.0.1",
        "port": devmail.imap_port,
        "encryption": "starttls",
        "username": user,
        "password": PASSWORD,
        **overrides,
    }


def _smtp(port: int, password: str = SMTP_PASSWORD) -> dict:
    """The SMTP fields of an account sending through 127.0.0.1:`port`."""
    return {
        "smtp_hostname": "127.0.0.1",
        "smtp_port": port,
        "smtp_encryption": "starttls",
        "smtp_username": SMTP_USER,
        "smtp_password": password,
    }


@contextlib.contextmanager
def _tarpit() -> Iterator[int]:
    """A listening socket never accepted, its port: the kernel completes the
    connection, and no greeting ever comes (a read timeout would not help)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tarpit:
        tarpit.bind(("127.0.0.1", 0))
        tarpit.listen(8)
        yield tarpit.getsockname()[1]


def _saved(tenant) -> int:
    with tenant_scope(tenant.id):
        return EmailAccount.objects.filter(tenant=tenant).count()


@pytest.mark.django_db
def test_good_credentials_are_saved(verifying, devmail, mail_user, smtp_server, client_a, tenant_a):  # noqa: F811
    data = _account(devmail, mail_user, **_smtp(smtp_server.port("starttls")))

    response = client_a.post(URL, data, format="json")

    assert response.status_code == 201, response.json()
    assert _saved(tenant_a) == 1


@pytest.mark.django_db
def test_wrong_password_is_a_400_on_password_and_nothing_saved(
    verifying, devmail, mail_user, client_a, tenant_a
):
    response = client_a.post(URL, _account(devmail, mail_user, password="not-the-password"), format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "account_verification_failed"
    assert list(error["fields"]) == ["password"]
    message = error["fields"]["password"][0]
    assert "refused the login" in message
    assert "AUTHENTICATIONFAILED" in message.upper()  # what Dovecot answered
    assert "not-the-password" not in response.content.decode()
    assert _saved(tenant_a) == 0


@pytest.mark.django_db
def test_a_port_nothing_listens_on_is_a_400_on_port(verifying, devmail, mail_user, client_a, tenant_a):
    # A name, so the answer must not give away the address it resolved to.
    data = _account(devmail, mail_user, hostname="localhost", port=free_port())

    response = client_a.post(URL, data, format="json")

    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert list(fields) == ["port"]
    assert "refused" in fields["port"][0].lower()
    assert "localhost" in fields["port"][0]
    assert "127.0.0.1" not in response.content.decode()
    assert "::1" not in response.content.decode()
    assert _saved(tenant_a) == 0


@pytest.mark.django_db
def test_a_tarpit_that_never_greets_is_a_400_within_the_connection_deadline(
    verifying, devmail, mail_user, client_a, tenant_a
):
    verifying.MAIL_CONNECTION_DEADLINE = 1.0
    with _tarpit() as port:  # MAIL_READ_TIMEOUT, 120 s, would not help
        started = time.monotonic()
        response = client_a.post(URL, _account(devmail, mail_user, port=port), format="json")
        took = time.monotonic() - started

    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert list(fields) == ["hostname"]
    assert "MAIL_CONNECTION_DEADLINE" in fields["hostname"][0]
    assert took < 3.0
    assert _saved(tenant_a) == 0


@pytest.mark.django_db
def test_tarpits_for_both_servers_hold_the_request_at_most_the_verification_deadline(
    verifying, devmail, mail_user, client_a, tenant_a
):
    """The connection deadlines (60 s each) would hold a web thread two
    minutes; the verification has ACCOUNT_VERIFY_DEADLINE for both."""
    verifying.MAIL_CONNECTION_DEADLINE = 60.0
    verifying.SMTP_CONNECTION_DEADLINE = 60.0
    verifying.ACCOUNT_VERIFY_DEADLINE = 1.5
    with _tarpit() as imap_port, _tarpit() as smtp_port:
        data = _account(devmail, mail_user, port=imap_port, **_smtp(smtp_port))
        started = time.monotonic()
        response = client_a.post(URL, data, format="json")
        took = time.monotonic() - started

    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert list(fields) == ["hostname", "smtp_hostname"]
    assert fields["hostname"] == ["127.0.0.1: not logged in within 1.5 s (ACCOUNT_VERIFY_DEADLINE)"]
    assert fields["smtp_hostname"] == [
        "Not tried: the servers took the whole 1.5 s of ACCOUNT_VERIFY_DEADLINE."
    ]
    assert took < 3.0
    assert _saved(tenant_a) == 0


@pytest.mark.django_db
def test_an_smtp_tarpit_gets_what_the_incoming_login_left_of_the_deadline(
    verifying, devmail, mail_user, client_a, tenant_a
):
    verifying.SMTP_CONNECTION_DEADLINE = 60.0
    verifying.ACCOUNT_VERIFY_DEADLINE = 6.0
    imap(devmail, mail_user).logout()  # the user's first login (Dovecot makes its mailbox) before the clock
    with _tarpit() as smtp_port:
        data = _account(devmail, mail_user, **_smtp(smtp_port))
        started = time.monotonic()
        response = client_a.post(URL, data, format="json")
        took = time.monotonic() - started

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {
        "smtp_hostname": ["127.0.0.1: not logged in within 6 s (ACCOUNT_VERIFY_DEADLINE)"]
    }
    assert took < 7.5
    assert _saved(tenant_a) == 0


@pytest.mark.django_db
@pytest.mark.parametrize("cap", ["user", "tenant"])
def test_more_verifications_at_once_than_allowed_is_a_429_and_the_slot_is_given_back(
    verifying, devmail, mail_user, client_a, tenant_a, user_a, cap
):
    """Another of this owner's (or tenant's) accounts is being checked,
    holding the only slot: no server is tried; once it is done, one is."""
    verifying.ACCOUNT_VERIFY_MAX_CONCURRENT_PER_USER = 1 if cap == "user" else 5
    verifying.ACCOUNT_VERIFY_MAX_CONCURRENT_PER_TENANT = 1 if cap == "tenant" else 5
    owner = user_a.id if cap == "user" else "another-member"
    keys = [semaphore_key(f"accounts:verify:{cap}:{owner if cap == 'user' else tenant_a.id}")]
    assert semaphores_acquire(keys=keys, limits=[1], holder="running", lease=30) == 0

    busy = client_a.post(URL, _account(devmail, mail_user), format="json")
    semaphores_release(keys=keys, holder="running")
    done = client_a.post(URL, _account(devmail, mail_user), format="json")

    assert busy.status_code == 429
    assert busy["Retry-After"] == "5"
    error = busy.json()["error"]
    assert error["code"] == "verifications_busy"
    setting = f"ACCOUNT_VERIFY_MAX_CONCURRENT_PER_{cap.upper()}"
    assert setting in error["message"]
    assert done.status_code == 201, done.json()
    assert _saved(tenant_a) == 1
    user_key = semaphore_key(f"accounts:verify:user:{user_a.id}")
    tenant_key = semaphore_key(f"accounts:verify:tenant:{tenant_a.id}")
    assert semaphores_in_use(keys=[user_key, tenant_key]) == [0, 0]


@pytest.mark.django_db
def test_over_quota_no_server_is_tried(verifying, devmail, mail_user, client_a, tenant_a):
    verifying.MAIL_CONNECTION_DEADLINE = 5.0
    tenant_a.max_accounts = 0
    tenant_a.save(update_fields=["max_accounts"])
    with _tarpit() as port:  # would hold the request 5 s
        started = time.monotonic()
        response = client_a.post(URL, _account(devmail, mail_user, port=port), format="json")
        took = time.monotonic() - started

    assert (response.status_code, response.json()["error"]["code"]) == (403, "quota_exceeded")
    assert took < 2.0
    assert _saved(tenant_a) == 0


@pytest.mark.django_db
def test_a_refused_smtp_login_is_a_400_on_smtp_password(
    verifying,
    devmail,
    mail_user,
    smtp_server,  # noqa: F811
    client_a,
    tenant_a,
):
    data = _account(devmail, mail_user, **_smtp(smtp_server.port("starttls"), password="wrong-smtp-password"))

    response = client_a.post(URL, data, format="json")

    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert list(fields) == ["smtp_password"]
    assert "535" in fields["smtp_password"][0]
    assert "wrong-smtp-password" not in response.content.decode()
    assert _saved(tenant_a) == 0


@pytest.mark.django_db
def test_an_update_to_a_closed_port_is_refused_and_the_old_one_kept(
    verifying, devmail, mail_user, client_a, tenant_a, user_a
):
    account = EmailAccountFactory(
        tenant=tenant_a,
        user=user_a,
        email_address=f"{mail_user}@example.com",
        hostname="127.0.0.1",
        port=devmail.imap_port,
        encryption="starttls",
        username=mail_user,
    )
    url = f"{URL}{account.id}/"

    # (Not a wrong password: each refused login slows Dovecot's next ones from
    # this address by seconds; test_wrong_password... proves that field.)
    closed = free_port()
    response = client_a.patch(url, {"port": closed, "password": "a new one"}, format="json")

    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["port"]
    with tenant_scope(tenant_a.id):
        stored = EmailAccount.objects.get(pk=account.pk)
        assert stored.port == devmail.imap_port
        assert account_credentials(account=stored).password != "a new one"
    # A change that does not move the password is not tried.
    assert client_a.patch(url, {"sync_interval": 600}, format="json").status_code == 200
    assert client_a.patch(url, {"password": PASSWORD}, format="json").status_code == 200


def test_an_update_holds_no_lock_on_the_account_while_its_server_is_tried(
    verifying, committed_db, devmail, mail_user, tenant_a, user_a
):
    """A sync (which updates the account's row) must not wait on a slow
    server's deadlines because a user is changing the account."""
    import threading

    from django.db import connection, transaction

    from conftest import bearer_client

    verifying.MAIL_CONNECTION_DEADLINE = 2.0
    account = EmailAccountFactory(tenant=tenant_a, user=user_a, hostname="127.0.0.1", port=devmail.imap_port)
    answers = []
    with _tarpit() as port:
        body = {"port": port, "password": "new"}
        patch = threading.Thread(
            target=lambda: answers.append(
                bearer_client(user_a, tenant_a).patch(f"{URL}{account.id}/", body, format="json")
            )
        )
        patch.start()
        time.sleep(0.7)  # the update is waiting for the tarpit's greeting now
        with tenant_scope(tenant_a.id), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '300ms'")
            cursor.execute("SELECT 1 FROM email_accounts WHERE id = %s FOR UPDATE", [account.id])
        patch.join()

    assert answers[0].status_code == 400


@pytest.fixture
def operator_client(committed_db):
    client = Client()
    client.force_login(UserFactory(username="verify-operator", is_staff=True, is_superuser=True))
    return client


def test_the_admin_add_form_shows_the_refusal(verifying, devmail, mail_user, operator_client, tenant_b):
    owner = UserFactory(username="verify-owner")
    form = {
        **_account(devmail, mail_user, port=free_port()),
        "tenant": tenant_b.id,
        "user": owner.id,
        "sync_interval": 300,
        "is_sync_enabled": "on",
        "is_enabled": "on",
        "smtp_hostname": "",
        "smtp_encryption": "",
        "smtp_username": "",
        "smtp_password": "",
    }

    response = operator_client.post("/admin/accounts/emailaccount/add/", form)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["port"]
    assert "refused" in errors["port"][0].lower()
    assert _saved(tenant_b) == 0
    # With the server's port the same form is saved.
    response = operator_client.post("/admin/accounts/emailaccount/add/", {**form, "port": devmail.imap_port})
    assert response.status_code == 302
    assert _saved(tenant_b) == 1
