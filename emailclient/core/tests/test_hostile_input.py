"""Hostile input gets a 4xx, never a 500.

Every list endpoint, for hostile query-string values: NULs (PostgreSQL refuses them in text), LIKE and escape
characters, quotes, huge and malformed numbers and dates, bytes that are
not UTF-8, and cursors whose positions PostgreSQL refuses."""

import base64
import json
import uuid

import pytest

from accounts.tests.factories import EmailAccountFactory
from conftest import bearer_client
from messages.tests.factories import FolderFactory, MessageFactory

pytestmark = pytest.mark.django_db

VALUES = ["\x00", "a\x00b", "%", "_", "\\", "'", '"', "x" * 5000, "1e999", "-1", "2024-13-45", "🙂", " ", ""]
RAW_VALUES = ["%ED%A0%80", "%FF%FE", "%C0%AF", "%00"]  # as sent on the wire, not UTF-8


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


# Cursors that decode, with positions PostgreSQL refuses (the lists' form,
# then the thread list's).
_ID = str(uuid.UUID(int=1))
CURSORS = [
    _b64(json.dumps({"after": position}))
    for position in (
        ["\x00", _ID],
        ["1e999999999", _ID],
        ["2024-01-01 00:00:00+20:00", _ID],
        ["0001-01-01 00:00:00+15:00", _ID],
        ["2024-01-01T00:00:00+00:00", "\x00"],
        [None, None],
        [1e308, _ID, _ID],
        [{"a": 1}, _ID],
        ["\ud800", _ID],
        ["2024-01-01T00:00:00+00:00", "\udfff"],
    )
] + [
    _b64(f"2024-01-01T00:00:00+20:00|{uuid.UUID(int=1)}"),
    _b64(f"9999-12-31T23:00:00-05:30|{uuid.UUID(int=1)}"),
    _b64("[" * 5000),
]

PARAMETERS = {
    "/api/messages/": [
        "account",
        "folder",
        "thread",
        "is_read",
        "is_flagged",
        "has_attachments",
        "received_after",
        "received_before",
        "sender",
        "message_id",
        "q",
        "order",
        "page_size",
        "cursor",
    ],
    "/api/sync/search": ["query", "account", "order", "page_size", "cursor"],
    "/api/threads/": ["account", "cursor", "page_size"],
    "/api/folders/": ["account", "page_size", "cursor"],
    "/api/accounts/": ["page_size", "cursor"],
}


@pytest.mark.parametrize("path", list(PARAMETERS))
def test_no_query_value_makes_a_list_fail(tenant_a, user_a, path):
    account = EmailAccountFactory(tenant=tenant_a, user=user_a)
    FolderFactory(account=account)
    client = bearer_client(user_a, tenant_a)
    client.raise_request_exception = False
    # What each endpoint needs besides the parameter under test.
    needed = {"account": str(account.id), "query": "hello"}
    failed = []
    for name in PARAMETERS[path]:
        for value in VALUES + (CURSORS if name == "cursor" else []):
            response = client.get(path, {**needed, name: value})
            if response.status_code >= 500:
                failed.append((name, value[:20], response.status_code))
        for raw in RAW_VALUES:
            response = client.get(path, QUERY_STRING=f"account={account.id}&query=hello&{name}={raw}")
            if response.status_code >= 500:
                failed.append((name, raw, response.status_code))
    assert failed == []


# Every write endpoint, for hostile JSON values in each field and bodies that
# are not JSON objects (one nested a thousand deep overflowed the decoder).
BODY_VALUES = [None, True, 1, -1, 1e308, "x" * 5000, "\x00", "a\x00b", [], {}, [None], ["\x00"], {"$gt": 1}]
RAW_BODIES = [b"\xff\xfe", b"{", b"[]", b'"x"', b"null", b'{"a":' * 1000, b"[" * 100_000]


@pytest.mark.parametrize(
    ("method", "path", "fields"),
    [
        ("patch", "/api/messages/{message}/", ["is_read", "is_flagged"]),
        ("post", "/api/messages/{message}/move/", ["folder"]),
        ("post", "/api/messages/bulk/update/", ["ids", "is_read", "is_flagged"]),
        ("post", "/api/messages/bulk/move/", ["ids", "folder"]),
        ("post", "/api/messages/bulk/delete/", ["ids", "permanent"]),
        ("post", "/api/accounts/", ["email_address", "imap_host", "imap_port", "password", "encryption"]),
        ("patch", "/api/accounts/{account}/", ["email_address", "imap_port", "sync_interval_minutes"]),
    ],
)
def test_no_body_makes_a_write_fail(tenant_a, user_a, method, path, fields):
    account = EmailAccountFactory(tenant=tenant_a, user=user_a)
    message = MessageFactory(folder=FolderFactory(account=account))
    client = bearer_client(user_a, tenant_a)
    client.raise_request_exception = False
    url = path.format(message=message.id, account=account.id)
    send = getattr(client, method)
    failed = []
    for field in fields:
        for value in [*BODY_VALUES, "🙂", [str(uuid.uuid4())] * 501]:
            body = {"ids": [str(message.id)], field: value} if "ids" in fields else {field: value}
            response = send(url, json.dumps(body), content_type="application/json")
            if response.status_code >= 500:
                failed.append((field, repr(value)[:30], response.status_code))
    for raw in RAW_BODIES:
        response = send(url, raw, content_type="application/json")
        if response.status_code >= 500:
            failed.append(("body", raw[:12], response.status_code))
        elif raw.startswith((b'{"a":', b"[[")):
            assert response.json()["error"]["code"] == "parse_error"
    assert failed == []


@pytest.mark.parametrize("ref", ["\x00", "tenant-a\x00", "🙂", "x" * 101, "a b", "%", "'", "tenant-a/.."])
def test_a_tenant_reference_that_is_no_slug_or_id_names_no_tenant(tenant_a, user_a, api_client, ref):
    client = bearer_client(user_a)
    client.raise_request_exception = False
    assert client.get("/api/accounts/", HTTP_X_TENANT_ID=ref).status_code == 404
    if "/" not in ref:  # the tenant-in-path form, as a URL-decoded path
        assert client.get(f"/api/v1/{ref}/email_client/accounts/").status_code == 404
    assert api_client.get("/api/accounts/", HTTP_X_TENANT_ID=ref).status_code == 401
