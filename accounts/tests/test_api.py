"""The accounts API, always with a second tenant in the room."""

import json

import pytest
from django.db import connection

from accounts.models import EmailAccount
from accounts.services import account_credentials
from accounts.tests.factories import EmailAccountFactory
from emailclient.core.models import AuditLog
from emailclient.core.tenancy import tenant_scope

pytestmark = pytest.mark.django_db

URL = "/api/accounts/"

VALID = {
    "account_name": "Work",
    "email_address": "alice@example.com",
    "protocol": "imap",
    "hostname": "imap.example.com",
    "encryption": "tls",
    "password": "s3cret pass ",
    "smtp_hostname": "smtp.example.com",
    "smtp_encryption": "starttls",
}


def detail(account) -> str:
    return f"{URL}{account.id}/"


def scoped(tenant, queryset_fn):
    with tenant_scope(tenant.id):
        return queryset_fn()


def test_create_fills_defaults_encrypts_and_never_returns_the_password(client_a, tenant_a, user_a):
    response = client_a.post(URL, VALID, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert "password" not in body and "smtp_password" not in body
    assert "s3cret" not in response.content.decode()
    assert body["port"] == 993
    assert body["smtp_port"] == 587
    assert body["username"] == "alice@example.com"
    assert body["smtp_username"] == "alice@example.com"
    account = scoped(tenant_a, lambda: EmailAccount.objects.get(id=body["id"]))
    assert account.tenant_id == tenant_a.id
    assert account.user_id == user_a.id
    assert "s3cret" not in account.password_encrypted
    # Whitespace in a password is kept: it is the user's, not ours to trim.
    assert account_credentials(account=account).password == "s3cret pass "
    assert account_credentials(account=account, smtp=True).password == "s3cret pass "


@pytest.mark.parametrize(
    ("protocol", "encryption", "port"),
    [
        ("imap", "tls", 993),
        ("imap", "starttls", 143),
        ("imap", "none", 143),
        ("pop3", "tls", 995),
        ("pop3", "starttls", 110),
        ("pop3", "none", 110),
    ],
)
def test_default_port_per_protocol_and_encryption(client_a, protocol, encryption, port):
    payload = {**VALID, "protocol": protocol, "encryption": encryption}
    response = client_a.post(URL, payload, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["port"] == port


def test_tenant_and_owner_fields_in_the_body_are_ignored(client_a, tenant_a, tenant_b, user_a, user_b):
    payload = {
        **VALID,
        "tenant": str(tenant_b.id),
        "tenant_id": str(tenant_b.id),
        "user": user_b.id,
        "user_id": user_b.id,
        "id": "00000000-0000-0000-0000-000000000001",
    }
    response = client_a.post(URL, payload, format="json")
    assert response.status_code == 201
    account = scoped(tenant_a, lambda: EmailAccount.objects.get(id=response.json()["id"]))
    assert (account.tenant_id, account.user_id) == (tenant_a.id, user_a.id)
    assert str(account.id) != payload["id"]
    assert scoped(tenant_b, lambda: EmailAccount.objects.count()) == 0


def test_list_shows_own_accounts_to_members_and_all_to_admins(
    client_a, client_admin_a, tenant_a, tenant_b, user_a, admin_a
):
    mine = EmailAccountFactory(tenant=tenant_a, user=user_a)
    admins = EmailAccountFactory(tenant=tenant_a, user=admin_a)
    EmailAccountFactory(tenant=tenant_b)
    deleted = EmailAccountFactory(tenant=tenant_a, user=user_a, is_deleted=True)

    member_ids = {a["id"] for a in client_a.get(URL).json()["results"]}
    admin_ids = {a["id"] for a in client_admin_a.get(URL).json()["results"]}

    assert member_ids == {str(mine.id)}
    assert admin_ids == {str(mine.id), str(admins.id)}
    assert str(deleted.id) not in admin_ids


def test_list_query_count_is_constant(client_admin_a, tenant_a, admin_a, django_assert_num_queries):
    EmailAccountFactory.create_batch(5, tenant=tenant_a, user=admin_a)
    # The tenant found and set, the membership with its user and tenant, one
    # page of accounts; and, only because the test wraps everything in a
    # transaction, the tenant scope's savepoint, its restore of the setting
    # and the release.
    with django_assert_num_queries(6):
        response = client_admin_a.get(URL)
    assert len(response.json()["results"]) == 5
    EmailAccountFactory.create_batch(5, tenant=tenant_a, user=admin_a)
    with django_assert_num_queries(6):
        client_admin_a.get(URL)


def test_update_and_patch_keep_the_password_unless_given(client_a, tenant_a, user_a):
    account = EmailAccountFactory(tenant=tenant_a, user=user_a)
    before = account.password_encrypted

    response = client_a.patch(detail(account), {"account_name": "Renamed"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["account_name"] == "Renamed"
    stored = scoped(tenant_a, lambda: EmailAccount.objects.get(id=account.id))
    assert stored.password_encrypted == before

    response = client_a.put(
        detail(account), {**VALID, "password": "new-one", "smtp_password": "smtp-one"}, format="json"
    )
    assert response.status_code == 200, response.content
    stored = scoped(tenant_a, lambda: EmailAccount.objects.get(id=account.id))
    assert account_credentials(account=stored).password == "new-one"


def test_changing_encryption_without_a_port_moves_to_that_default(client_a, tenant_a, user_a):
    account = EmailAccountFactory(tenant=tenant_a, user=user_a, port=993, encryption="tls")
    response = client_a.patch(detail(account), {"encryption": "starttls", "password": "pw"}, format="json")
    assert response.json()["port"] == 143


@pytest.mark.parametrize("restated", [{"encryption": "tls"}, {"protocol": "imap"}])
def test_restating_the_encryption_without_a_port_needs_the_password(
    client_admin_a, tenant_a, user_a, restated
):
    """The same encryption (or protocol) sent again without a port moves a
    custom port to the default: that sends the stored password elsewhere,
    so it needs the password like any other new endpoint."""
    account = EmailAccountFactory(tenant=tenant_a, user=user_a, port=1993, encryption="tls")
    response = client_admin_a.patch(detail(account), restated, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["password"] == ["Required when port changes."]
    stored = scoped(tenant_a, lambda: EmailAccount.objects.get(id=account.id))
    assert stored.port == 1993
    ok = client_admin_a.patch(detail(account), {**restated, "password": "pw"}, format="json")
    assert ok.status_code == 200
    assert ok.json()["port"] == 993


def test_restating_the_encryption_of_a_default_port_needs_nothing(client_a, tenant_a, user_a):
    account = EmailAccountFactory(tenant=tenant_a, user=user_a, port=993, encryption="tls")
    response = client_a.patch(detail(account), {"encryption": "tls", "account_name": "Home"}, format="json")
    assert response.status_code == 200
    assert response.json()["port"] == 993


@pytest.mark.parametrize("field", ["username", "password", "smtp_username", "smtp_password"])
@pytest.mark.parametrize("bad", ["a\r\nb", "a\nb", "a\x00b", "a\tb", "a\x7fb", "a\x85b"])
def test_control_characters_in_usernames_and_passwords_are_refused(client_a, tenant_a, user_a, field, bad):
    """IMAP LOGIN sends the username unquoted: `x\r\nA1 DELETE INBOX` would
    be a second command. Refused on create and on update."""
    response = client_a.post(URL, {**VALID, field: bad}, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    account = EmailAccountFactory(tenant=tenant_a, user=user_a)
    response = client_a.patch(
        detail(account), {"password": "pw", "smtp_password": "pw", field: bad}, format="json"
    )
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert scoped(tenant_a, lambda: EmailAccount.objects.filter(tenant=tenant_a).count()) == 1


def test_printable_unicode_usernames_and_passwords_are_kept(client_a, tenant_a):
    body = {**VALID, "username": "jürgen@exämple.com", "password": "pässwört ✓ ", "smtp_password": "ü ß"}
    response = client_a.post(URL, body, format="json")
    assert response.status_code == 201, response.content
    account = scoped(tenant_a, lambda: EmailAccount.objects.get(id=response.json()["id"]))
    assert account_credentials(account=account).password == "pässwört ✓ "
    assert account.username == "jürgen@exämple.com"


@pytest.mark.parametrize(
    ("change", "secret"),
    [
        ({"hostname": "evil.example.net"}, "password"),
        ({"port": 1143}, "password"),
        ({"encryption": "none"}, "password"),
        ({"username": "someone-else"}, "password"),
        ({"protocol": "pop3"}, "password"),
        ({"smtp_hostname": "evil.example.net"}, "smtp_password"),
    ],
)
def test_redirecting_a_stored_password_needs_the_password(client_admin_a, tenant_a, user_a, change, secret):
    """A tenant admin may edit a member's account, but cannot send the
    member's stored password to another server without knowing it."""
    account = EmailAccountFactory(tenant=tenant_a, user=user_a)
    response = client_admin_a.patch(detail(account), change, format="json")
    assert response.status_code == 400
    assert secret in response.json()["error"]["fields"]
    stored = scoped(tenant_a, lambda: EmailAccount.objects.get(id=account.id))
    assert (stored.hostname, stored.port, stored.encryption) == ("imap.example.com", 993, "tls")
    ok = client_admin_a.patch(
        detail(account), {**change, "password": "x", "smtp_password": "y"}, format="json"
    )
    assert ok.status_code == 200


def test_delete_is_soft_and_hides_the_account(client_a, tenant_a, user_a):
    account = EmailAccountFactory(tenant=tenant_a, user=user_a)
    assert client_a.delete(detail(account)).status_code == 204
    assert client_a.get(detail(account)).status_code == 404
    stored = scoped(tenant_a, lambda: EmailAccount.objects.get(id=account.id))
    assert stored.is_deleted and stored.deleted_at is not None
    assert not stored.is_sync_enabled


def test_every_change_is_audited_without_secrets(client_a, tenant_a, user_a):
    created = client_a.post(URL, VALID, format="json").json()
    client_a.patch(f"{URL}{created['id']}/", {"password": "another", "port": 1993}, format="json")
    client_a.delete(f"{URL}{created['id']}/")

    entries = scoped(tenant_a, lambda: list(AuditLog.objects.order_by("created_at")))
    assert [e.action for e in entries] == ["account.create", "account.update", "account.delete"]
    assert all(e.actor_id == user_a.id and str(e.object_id) == created["id"] for e in entries)
    assert entries[0].changes["fields"] == sorted(
        [
            "account_name",
            "email_address",
            "protocol",
            "hostname",
            "encryption",
            "password",
            "smtp_hostname",
            "smtp_encryption",
        ]
    )
    assert entries[1].changes == {"password": "changed", "port": {"old": 993, "new": 1993}}
    dumped = json.dumps([e.changes for e in entries])
    assert "another" not in dumped and "s3cret" not in dumped


# --- Another tenant's objects --------------------------------------------------


@pytest.fixture
def account_b(tenant_b, user_b):
    return EmailAccountFactory(tenant=tenant_b, user=user_b, account_name="B's")


@pytest.mark.parametrize(
    ("method", "body"),
    [("get", None), ("put", VALID), ("patch", {"account_name": "x"}), ("delete", None)],
)
def test_another_tenants_account_is_a_404_and_unchanged(client_a, account_b, tenant_b, method, body):
    response = getattr(client_a, method)(detail(account_b), body, format="json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    stored = scoped(tenant_b, lambda: EmailAccount.objects.get(id=account_b.id))
    assert (stored.account_name, stored.is_deleted) == ("B's", False)


@pytest.mark.parametrize(
    ("method", "path_suffix", "body"),
    [
        ("get", "", None),
        ("post", "", VALID),
        ("get", "{id}/", None),
        ("put", "{id}/", VALID),
        ("patch", "{id}/", {"account_name": "x"}),
        ("delete", "{id}/", None),
    ],
)
def test_naming_a_tenant_the_user_is_not_in_is_a_404(
    client_a, account_b, tenant_b, method, path_suffix, body
):
    client_a.credentials(
        HTTP_AUTHORIZATION=client_a._credentials["HTTP_AUTHORIZATION"], HTTP_X_TENANT_ID=tenant_b.slug
    )
    url = URL + path_suffix.format(id=account_b.id)
    response = getattr(client_a, method)(url, body, format="json")

    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Tenant not found."}}
    assert scoped(tenant_b, lambda: list(EmailAccount.objects.values_list("account_name", "is_deleted"))) == [
        ("B's", False)
    ]


def test_unknown_tenant_and_foreign_tenant_look_the_same(client_a, tenant_b):
    client_a.credentials(
        HTTP_AUTHORIZATION=client_a._credentials["HTTP_AUTHORIZATION"], HTTP_X_TENANT_ID="nope"
    )
    unknown = client_a.get(URL)
    client_a.credentials(
        HTTP_AUTHORIZATION=client_a._credentials["HTTP_AUTHORIZATION"], HTTP_X_TENANT_ID=str(tenant_b.id)
    )
    foreign = client_a.get(URL)
    assert unknown.status_code == foreign.status_code == 404
    assert unknown.json() == foreign.json()


def test_tenant_by_uuid_works_like_slug(client_a, tenant_a, user_a):
    EmailAccountFactory(tenant=tenant_a, user=user_a)
    client_a.credentials(
        HTTP_AUTHORIZATION=client_a._credentials["HTTP_AUTHORIZATION"], HTTP_X_TENANT_ID=str(tenant_a.id)
    )
    assert len(client_a.get(URL).json()["results"]) == 1


def test_missing_tenant_header_is_a_400(user_a):
    from conftest import bearer_client

    response = bearer_client(user_a).get(URL)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "tenant_required"
    assert response.json()["error"]["fields"] == {"X-Tenant-ID": ["This header is required."]}


def test_missing_tenant_in_the_browsable_api_is_a_400_page(user_a):
    """The browsable API's renderer checks the permissions again to draw its
    forms and catches DRF's exceptions only: the missing tenant was a 500."""
    from django.test import RequestFactory
    from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
    from rest_framework.test import force_authenticate

    from accounts.views import AccountViewSet

    view = AccountViewSet.as_view(
        {"get": "list", "post": "create"}, renderer_classes=[JSONRenderer, BrowsableAPIRenderer]
    )
    request = RequestFactory().get(URL, HTTP_ACCEPT="text/html")
    request.tenant = None  # what the tenant middleware leaves when none is named
    force_authenticate(request, user_a)
    response = view(request).render()
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
    assert b"X-Tenant-ID" in response.content


def test_anonymous_is_a_401(tenant_a, api_client, django_assert_num_queries):
    with django_assert_num_queries(0):  # no tenant lookup for strangers
        response = api_client.get(URL, HTTP_X_TENANT_ID=tenant_a.slug)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_a_garbage_token_is_a_401_not_a_tenant_lookup(tenant_a, api_client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = api_client.get(URL, HTTP_X_TENANT_ID=tenant_a.slug, HTTP_AUTHORIZATION="Bearer not.a.jwt")
    assert response.status_code == 401


# --- The tenant-in-path form -------------------------------------------------------


def test_seed_path_alias_takes_the_tenant_from_the_path(user_a, tenant_a, tenant_b, account_b):
    from conftest import bearer_client

    own = EmailAccountFactory(tenant=tenant_a, user=user_a)
    client = bearer_client(user_a)
    base = f"/api/v1/{tenant_a.slug}/email_client/accounts/"

    listed = client.get(base)
    assert listed.status_code == 200
    assert [a["id"] for a in listed.json()["results"]] == [str(own.id)]
    assert client.get(f"{base}{own.id}/").status_code == 200
    assert client.post(base, VALID, format="json").status_code == 201
    assert client.get(f"{base}{account_b.id}/").status_code == 404
    assert client.get(f"/api/v1/{tenant_b.slug}/email_client/accounts/").status_code == 404


# --- Bad input --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"port": "abc"}, "port"),
        ({"port": [993]}, "port"),
        ({"protocol": "smtp"}, "protocol"),
        ({"encryption": "ssl3"}, "encryption"),
        ({"smtp_encryption": "rot13"}, "smtp_encryption"),
        ({"email_address": "not-an-address"}, "email_address"),
        ({"hostname": "bad host!"}, "hostname"),
        ({"hostname": "-leading.example.com"}, "hostname"),
        ({"hostname": "a" * 64 + ".example.com"}, "hostname"),
        ({"smtp_hostname": "under_score.example.com"}, "smtp_hostname"),
        ({"account_name": "x" * 256}, "account_name"),
        ({"username": "u" * 256}, "username"),
        ({"password": "p" * 1025}, "password"),
        ({"password": ""}, "password"),
        ({"sync_interval": 5}, "sync_interval"),
        ({"sync_interval": "often"}, "sync_interval"),
        ({"is_enabled": "maybe"}, "is_enabled"),
        ({"account_name": {"nested": 1}}, "account_name"),
        ({"account_name": None}, "account_name"),
    ],
)
def test_bad_fields_are_400_with_field_errors(client_a, tenant_a, change, field):
    response = client_a.post(URL, {**VALID, **change}, format="json")

    assert response.status_code == 400, response.content
    body = response.json()["error"]
    assert body["code"] == "validation_error"
    assert field in body["fields"]
    assert scoped(tenant_a, lambda: EmailAccount.objects.count()) == 0


@pytest.mark.parametrize("missing", ["account_name", "email_address", "protocol", "hostname", "password"])
def test_missing_required_fields_are_400(client_a, missing):
    payload = {k: v for k, v in VALID.items() if k != missing}
    response = client_a.post(URL, payload, format="json")
    assert response.status_code == 400
    assert missing in response.json()["error"]["fields"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"a string"', b"\xff\xfe"])
def test_non_json_or_non_object_bodies_are_400(client_a, raw):
    response = client_a.generic("POST", URL, raw, content_type="application/json")
    assert response.status_code == 400, response.content
    assert "error" in response.json()


def test_a_form_body_is_refused_as_unsupported(client_a):
    response = client_a.post(URL, VALID)  # multipart
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_duplicate_address_for_the_same_user_is_a_field_error(client_a):
    assert client_a.post(URL, VALID, format="json").status_code == 201
    response = client_a.post(URL, {**VALID, "email_address": "ALICE@example.com"}, format="json")
    assert response.status_code == 400
    assert "email_address" in response.json()["error"]["fields"]


def test_idn_hostnames_are_stored_in_ascii(client_a):
    response = client_a.post(URL, {**VALID, "hostname": "MAIL.Bücher.example"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["hostname"] == "mail.xn--bcher-kva.example"


def test_connection_is_left_without_tenant_after_a_request(client_a, tenant_a, user_a):
    EmailAccountFactory(tenant=tenant_a, user=user_a)
    client_a.get(URL)
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('app.current_tenant_id', true)")
        assert cursor.fetchone()[0] in (None, "")


def test_plaintext_accounts_are_refused_unless_allowed(client_a, settings):
    settings.MAIL_ALLOW_PLAINTEXT = False
    response = client_a.post(URL, {**VALID, "encryption": "none"}, format="json")
    assert response.status_code == 400
    assert "clear text" in response.json()["error"]["fields"]["encryption"][0]
    response = client_a.post(URL, {**VALID, "smtp_encryption": "none"}, format="json")
    assert "smtp_encryption" in response.json()["error"]["fields"]
