"""The operator's admin form refuses what the API refuses: both go through
the same validators before `account_create` and `account_update`."""

import pytest
from django.test import Client

from accounts.models import EmailAccount
from accounts.services import account_credentials
from accounts.tests.factories import EmailAccountFactory
from emailclient.core.tenancy import tenant_scope
from emailclient.core.tests.factories import UserFactory

CONTROL = "Control characters (line breaks, tabs, NUL and the like) are not allowed."


@pytest.fixture
def operator_client(committed_db):
    client = Client()
    client.force_login(UserFactory(username="accounts-operator", is_staff=True, is_superuser=True))
    return client


def _form(**overrides):
    return {
        "account_name": "Ops made",
        "email_address": "made@b.example",
        "protocol": "imap",
        "hostname": "imap.b.example",
        "port": 993,
        "encryption": "tls",
        "username": "made",
        "sync_interval": 300,
        "is_sync_enabled": "on",
        "is_enabled": "on",
        "password": "pw from ops",
        "smtp_hostname": "",
        "smtp_encryption": "",
        "smtp_username": "",
        "smtp_password": "",
        **overrides,
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "made\r\nA1 LOGOUT"),
        ("password", "pw\nA2 DELETE INBOX"),
        ("smtp_username", "smtp\tuser"),
        ("smtp_password", "pw\x85"),
    ],
)
def test_admin_refuses_control_characters_in_credentials(operator_client, tenant_b, field, value):
    owner = UserFactory(username=f"owner-{field}")
    form = _form(tenant=tenant_b.id, user=owner.id, **{field: value})
    if field.startswith("smtp_"):
        form |= {"smtp_hostname": "smtp.b.example", "smtp_encryption": "tls", "smtp_port": 465}

    response = operator_client.post("/admin/accounts/emailaccount/add/", form)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {field: [CONTROL]}
    with tenant_scope(tenant_b.id):
        assert not EmailAccount.objects.filter(email_address="made@b.example").exists()


def test_admin_edit_refuses_a_control_character_and_keeps_the_password(operator_client, tenant_a):
    account = EmailAccountFactory(tenant=tenant_a)
    url = f"/admin/accounts/emailaccount/{account.id}/change/"
    form = _form(email_address=account.email_address, username="user", password="new\npassword")

    response = operator_client.post(url, form)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"password": [CONTROL]}
    with tenant_scope(tenant_a.id):
        account = EmailAccount.objects.get(pk=account.pk)
        assert "\n" not in account_credentials(account=account).password
    # The same form with a clean password is saved.
    assert operator_client.post(url, {**form, "password": "new password"}).status_code == 302


def test_admin_edit_of_the_server_without_the_password_is_a_form_error(operator_client, tenant_a, settings):
    """Whether or not the servers are tried on save, a new endpoint needs the
    password again: a form error (it was a 500 with verification off)."""
    settings.ACCOUNT_VERIFY_ON_SAVE = False
    account = EmailAccountFactory(tenant=tenant_a, hostname="imap.a.example")
    url = f"/admin/accounts/emailaccount/{account.id}/change/"
    form = _form(
        email_address=account.email_address, username=account.username, hostname="evil.example", password=""
    )

    response = operator_client.post(url, form)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"password": ["Required when hostname changes."]}
    with tenant_scope(tenant_a.id):
        assert EmailAccount.objects.get(pk=account.pk).hostname == "imap.a.example"


def test_admin_create_edit_and_delete_are_audited_with_the_client_address(operator_client, tenant_b):
    from emailclient.core.models import AuditLog

    owner = UserFactory(username="owner-audited")
    assert (
        operator_client.post(
            "/admin/accounts/emailaccount/add/", _form(tenant=tenant_b.id, user=owner.id)
        ).status_code
        == 302
    )
    with tenant_scope(tenant_b.id):
        account = EmailAccount.objects.get(email_address="made@b.example")
    url = f"/admin/accounts/emailaccount/{account.id}/"
    form = _form(account_name="Renamed", password="")
    assert operator_client.post(url + "change/", form).status_code == 302
    assert operator_client.post(url + "delete/", {"post": "yes"}).status_code == 302

    with tenant_scope(tenant_b.id):
        entries = dict(AuditLog.objects.filter(object_id=account.id).values_list("action", "ip_address"))
    assert entries == {
        "account.create": "127.0.0.1",
        "account.update": "127.0.0.1",
        "account.delete": "127.0.0.1",
    }


def test_admin_form_shows_and_saves_the_pop3_fields_in_their_own_section(operator_client, tenant_a):
    account = EmailAccountFactory(tenant=tenant_a, protocol="pop3", port=995, hostname="pop.a.example")
    url = f"/admin/accounts/emailaccount/{account.id}/change/"

    response = operator_client.get(url)

    sections = {fieldset.name: list(fieldset.fields) for fieldset in response.context["adminform"]}
    assert sections["POP3"] == ["pop3_leave_on_server", "pop3_delete_after_days"]
    page = response.content.decode()
    assert 'name="pop3_leave_on_server"' in page and 'name="pop3_delete_after_days"' in page
    assert "Used by POP3 accounts only" in page and "POP3 accounts only" in page
    # No field of the form is left out of the sections (the admin would drop it).
    shown = {name for fields in sections.values() for name in fields}
    assert set(response.context["adminform"].form.fields) <= shown

    form = _form(
        protocol="pop3",
        hostname="pop.a.example",
        port=995,
        email_address=account.email_address,
        username=account.username,
        password="",
        pop3_delete_after_days=7,
    )  # the leave-on-server box not ticked: off
    assert operator_client.post(url, form).status_code == 302
    with tenant_scope(tenant_a.id):
        account = EmailAccount.objects.get(pk=account.pk)
    assert (account.pop3_leave_on_server, account.pop3_delete_after_days) == (False, 7)
    # The API's bounds: a form error, not the database's refusal.
    for days in (0, 36501):
        response = operator_client.post(url, {**form, "pop3_delete_after_days": days})
        assert response.status_code == 200
        assert list(response.context["adminform"].form.errors) == ["pop3_delete_after_days"]


def test_admin_stores_host_names_as_the_api_does_and_refuses_bad_ones(operator_client, tenant_b):
    owner = UserFactory(username="owner-hosts")
    form = _form(
        tenant=tenant_b.id,
        user=owner.id,
        hostname=" IMAP.Bücher.example. ",
        smtp_hostname="SMTP.B.Example.",
        smtp_encryption="tls",
        smtp_port=465,
    )

    assert operator_client.post("/admin/accounts/emailaccount/add/", form).status_code == 302
    with tenant_scope(tenant_b.id):
        account = EmailAccount.objects.get(email_address="made@b.example")
    assert (account.hostname, account.smtp_hostname) == ("imap.xn--bcher-kva.example", "smtp.b.example")

    url = f"/admin/accounts/emailaccount/{account.id}/change/"
    for field, bad in (("hostname", "imap b.example"), ("smtp_hostname", "-smtp.b.example")):
        response = operator_client.post(url, {**form, "password": "", field: bad})
        assert response.status_code == 200
        assert response.context["adminform"].form.errors == {field: ["Enter a valid host name."]}


def test_admin_edit_of_an_account_whose_host_was_stored_as_typed_needs_no_password(operator_client, tenant_a):
    """Saved before the admin normalised names: the same server, not a new
    one that the stored password would be sent to."""
    account = EmailAccountFactory(
        tenant=tenant_a, hostname="IMAP.A.Example.", email_address="typed@a.example"
    )
    form = _form(
        hostname="IMAP.A.Example.",
        email_address="typed@a.example",
        username=account.username,
        port=account.port,
        encryption=account.encryption,
        password="",
        account_name="Renamed",
    )

    response = operator_client.post(f"/admin/accounts/emailaccount/{account.id}/change/", form)

    assert response.status_code == 302, response.context["adminform"].form.errors
    with tenant_scope(tenant_a.id):
        account = EmailAccount.objects.get(pk=account.pk)
    assert (account.account_name, account.hostname) == ("Renamed", "IMAP.A.Example.")
