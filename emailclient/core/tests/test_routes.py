"""Every API path answers the same with and without its trailing slash, on
the plain `/api/...` and the `/api/v1/{tenant}/email_client/...` form, and
never by a redirect; what names no endpoint, or a method an endpoint does
not take, is the API's JSON error.

The routes are read from the URLconf itself (`api_routes()`), so a route
added later is walked without touching this file. Each walk runs under the
test settings and under the development ones (`make run`: DEBUG, the
browsable API, session logins), where Django's APPEND_SLASH raised a
`RuntimeError` for a POST without the slash.
"""

import re
from dataclasses import dataclass

import pytest
from django.contrib.admindocs.views import simplify_regex
from django.urls import URLPattern, URLResolver, get_resolver

from accounts.models import EmailAccount
from accounts.tests.factories import EmailAccountFactory
from compose.tests.factories import DraftFactory
from emailclient.core.tenancy import tenant_scope
from emailclient.core.views import api_not_found
from messages.models import Message
from messages.tests.factories import AttachmentFactory, FolderFactory, MessageFactory

pytestmark = pytest.mark.django_db

METHODS = ("get", "post", "put", "patch", "delete")
TENANT_FORM = "/api/v1/{tenant}/email_client/"


@dataclass(frozen=True)
class Route:
    template: str  # "/api/v1/{tenant}/email_client/accounts/{pk}": no trailing slash
    view_name: str  # "seed:account-detail", what resolve() names it
    methods: tuple[str, ...]  # the HTTP methods it answers (lower case)

    @property
    def basename(self) -> str:
        """The kind of object its ids name: "account" of "seed:account-detail"."""
        return self.view_name.rpartition(":")[2].split("-")[0]

    def __str__(self) -> str:
        return self.template


def _methods(callback) -> tuple[str, ...]:
    actions = getattr(callback, "actions", None)  # a viewset's {method: action}
    if actions is not None:
        return tuple(method for method in METHODS if method in actions)
    view_class = getattr(callback, "view_class", None) or callback.cls
    return tuple(method for method in METHODS if hasattr(view_class, method))


def _walk(patterns, regex: str = "", namespaces: tuple[str, ...] = ()):
    for pattern in patterns:
        part = pattern.pattern.regex.pattern.removeprefix("^")
        if isinstance(pattern, URLResolver):
            inner = (*namespaces, pattern.namespace) if pattern.namespace else namespaces
            yield from _walk(pattern.url_patterns, regex + part, inner)
        elif isinstance(pattern, URLPattern):
            yield regex + part, ":".join((*namespaces, pattern.name or "")), pattern.callback


def api_routes() -> list[Route]:
    """Every endpoint of the URLconf under /api/ but the catch-all 404."""
    routes = []
    for regex, view_name, callback in _walk(get_resolver().url_patterns):
        # "<pk>" for a named group, no ^, $, \Z, and "/?" read as "/"
        template = re.sub(r"<(\w+)>", r"{\1}", simplify_regex(regex)).rstrip("/")
        if template.startswith("/api/") and callback is not api_not_found:
            routes.append(Route(template, view_name, _methods(callback)))
    return routes


ROUTES = api_routes()


def test_the_walk_finds_every_kind_of_route():
    # A walk that found nothing would pass every test below.
    by_template = {route.template: route for route in ROUTES}
    assert by_template["/api/accounts"].methods == ("get", "post")
    assert by_template["/api/v1/{tenant}/email_client/accounts/{pk}"].view_name == "seed:account-detail"
    assert by_template["/api/sync/imap/{account_id}"].methods == ("post",)
    assert by_template["/api/messages/bulk/update"].methods == ("post",)
    assert "/api/auth/token" in by_template
    assert "/api/schema" in by_template
    assert len(ROUTES) == len(by_template)


@pytest.fixture(params=["test", "development"])
def mode(request, settings):
    """The settings of the suite, or those `make run` uses."""
    if request.param == "development":
        from emailclient.settings import local

        settings.DEBUG = True
        settings.REST_FRAMEWORK = local.REST_FRAMEWORK
    return request.param


def mailbox(tenant, user, blobs) -> dict[str, str]:
    """An account with a folder, a message (with its source) and an
    attachment; the id each route's kind of object is named by."""
    account = EmailAccountFactory(tenant=tenant, user=user)
    folder = FolderFactory(account=account, name="INBOX", type="inbox")
    source = b"From: a@example.com\r\nSubject: hello\r\n\r\nbody\r\n"
    message = MessageFactory(folder=folder, raw_blob_key=blobs.put(tenant.id, source))
    attachment = AttachmentFactory(message=message, content_hash=blobs.put(tenant.id, b"%PDF"))
    draft = DraftFactory(account=account)
    return {
        "account": str(account.id),
        "sync": str(account.id),
        "folder": str(folder.id),
        "message": str(message.id),
        "thread": str(message.thread_id),
        "attachment": str(attachment.id),
        "compose": str(draft.id),  # a draft, and (by the same id) its attachment routes
    }


@pytest.fixture
def mailbox_a(tenant_a, user_a, blobs):
    return mailbox(tenant_a, user_a, blobs)


@pytest.fixture
def mailbox_b(tenant_b, user_b, blobs):
    return mailbox(tenant_b, user_b, blobs)


def url(route: Route, *, ids: dict[str, str], tenant) -> str:
    def value(match: re.Match) -> str:
        if match[1] == "tenant":
            return tenant.slug
        assert route.basename in ids, f"{route.view_name}: give mailbox() an id for {route.basename!r}"
        return ids[route.basename]

    return re.sub(r"\{(\w+)\}", value, route.template)


def both_ways(client, method: str, path: str, **extra):
    """The same request without and with the trailing slash."""
    assert not path.endswith("/")
    answers = []
    for each in (path, path + "/"):
        response = getattr(client, method)(each, {}, format="json", **extra)
        assert not 300 <= response.status_code < 400, f"{method.upper()} {each}: a redirect"
        answers.append(response)
    return answers


def assert_json_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_every_route_answers_the_same_with_and_without_the_slash(
    route, mode, client_a, client_b, tenant_a, tenant_b, mailbox_a, mailbox_b
):
    for method in route.methods:
        if method == "get":
            # Tenant A's own objects: found (never the catch-all's 404).
            path = url(route, ids=mailbox_a, tenant=tenant_a)
        else:
            # Tenant B's objects, as tenant A: nothing may change (checked below).
            path = url(route, ids=mailbox_b, tenant=tenant_a)
        without, with_slash = both_ways(client_a, method, path)
        assert without.status_code == with_slash.status_code, (method, path, with_slash.content)
        assert without.resolver_match.view_name == with_slash.resolver_match.view_name == route.view_name
        if method == "get":
            assert without.status_code != 404, (path, without.content)
        else:
            # An empty body, or an object of tenant B named by tenant A:
            # the same error either way (400 or 404, by what is checked first).
            assert without.status_code in (400, 404), (method, path, without.content)
            assert without.json() == with_slash.json()

        if route.template.startswith(TENANT_FORM):
            # Tenant B's user naming tenant A in the path: no such tenant.
            for response in both_ways(client_b, method, path):
                assert_json_error(response, 404, "not_found")

    with tenant_scope(tenant_b.id):
        assert EmailAccount.objects.get(id=mailbox_b["account"]).deleted_at is None
        message = Message.objects.get(id=mailbox_b["message"])
        assert str(message.folder_id) == mailbox_b["folder"]
        assert not (message.is_read or message.is_flagged or message.is_deleted)


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_a_method_a_route_does_not_take_is_a_json_405(route, mode, client_a, tenant_a, mailbox_a):
    method = next(method for method in METHODS if method not in route.methods)
    path = url(route, ids=mailbox_a, tenant=tenant_a)
    for response in both_ways(client_a, method, path):
        assert_json_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize("form", ["/api/", "/api/v1/tenant-a/email_client/"])
def test_a_post_without_the_slash_creates_an_account(form, mode, client_a, client_b, tenant_a):
    body = {
        "account_name": "Seed",
        "email_address": "seed@example.com",
        "protocol": "imap",
        "hostname": "imap.example.com",
        "password": "secret",
    }
    response = client_a.post(f"{form}accounts", body, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["account_name"] == "Seed"
    with tenant_scope(tenant_a.id):
        assert EmailAccount.objects.get(id=response.json()["id"]).email_address == "seed@example.com"
    assert client_a.get(f"{form}accounts/{response.json()['id']}").status_code == 200
    # Tenant B's user sees nothing of it.
    assert client_b.get("/api/accounts").json()["results"] == []
    assert client_b.get(f"/api/accounts/{response.json()['id']}").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/api",
        "/api/",
        "/api/nothing",
        "/api/nothing/",
        "/api/accounts/1/2/3",
        "/api/auth",
        "/api/v1",
        "/api/v1/tenant-a/email_client",
        "/api/v1/tenant-a/email_client/",
        "/api/v1/tenant-a/email_client/nothing",
        "/api/v1/tenant-a/email_client/nothing/",
        "/api/sync/imap/not-a-uuid",
    ],
)
@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_an_unknown_api_path_is_a_json_404(path, method, mode, client_a, client_b, api_client):
    assert_json_error(getattr(client_a, method)(path), 404, "not_found")
    # Without credentials too, and with the CSRF checks a browser's session gets.
    api_client.handler.enforce_csrf_checks = True
    assert_json_error(getattr(api_client, method)(path), 404, "not_found")
    if "tenant-a" in path:
        assert_json_error(getattr(client_b, method)(path), 404, "not_found")


def test_outside_the_api_django_keeps_its_pages(client, mode):
    # The admin is for people: its missing slash is still added for them.
    response = client.get("/admin")
    assert response.status_code == 301
    assert response["Location"] == "/admin/"
    response = client.get("/nothing")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_a_server_error_under_the_api_is_json(client_a, mailbox_a, monkeypatch):
    from mailboxes.views import SyncStatusView

    def fail(self, request, **kwargs):
        raise RuntimeError("boom: a secret detail")

    monkeypatch.setattr(SyncStatusView, "get", fail)
    client_a.raise_request_exception = False

    response = client_a.get(f"/api/sync/status/{mailbox_a['account']}")

    assert_json_error(response, 500, "server_error")
    assert b"secret detail" not in response.content
