"""The reading API: folders, messages, threads, attachments, and the changes
made through it (database side; the mail-server side is in
mailboxes/tests/test_writeback.py)."""

import base64
import datetime
import json
import logging
import random
import uuid

import factory
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.renderers import JSONRenderer
from rest_framework.serializers import ModelSerializer

from accounts.services import account_delete
from accounts.tests.factories import EmailAccountFactory
from emailclient.core.models import AuditLog
from emailclient.core.tenancy import tenant_scope
from messages import selectors
from messages.indexing import search_index_pending
from messages.models import Folder, Message, MessageChange
from messages.serializers import MessageDetailSerializer, MessageListSerializer
from messages.tests.factories import AttachmentFactory, FolderFactory, MessageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def trash_a(account_a):
    return FolderFactory(account=account_a, name="Trash", type="trash")


@pytest.fixture
def account_b(tenant_b, user_b):
    return EmailAccountFactory(tenant=tenant_b, user=user_b)


@pytest.fixture
def inbox_b(account_b):
    return FolderFactory(account=account_b, name="INBOX", type="inbox")


@pytest.fixture
def message_b(inbox_b):
    return MessageFactory(folder=inbox_b, subject="Tenant B secret")


def as_json(data) -> str:
    return JSONRenderer().render(data).decode()


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


def reload(message: Message) -> Message:
    with tenant_scope(message.tenant_id):
        return Message.objects.get(id=message.id)


# --- Folders -------------------------------------------------------------------------


def test_folders_list_with_counts_and_hierarchy(client_a, account_a, inbox_a, inbox_b):
    projects = FolderFactory(account=account_a, name="INBOX/Projects", parent=inbox_a, unread_count=3)

    response = client_a.get("/api/folders/", {"account": account_a.id})

    body = {f["name"]: f for f in response.json()["results"]}
    assert set(body) == {"INBOX", "INBOX/Projects"}
    assert body["INBOX/Projects"]["parent"] == str(inbox_a.id)
    assert body["INBOX/Projects"]["display_name"] == "Projects"
    assert body["INBOX/Projects"]["unread_count"] == 3
    assert body["INBOX"]["type"] == "inbox"
    assert client_a.get(f"/api/folders/{projects.id}/").json()["name"] == "INBOX/Projects"


def test_folders_of_another_tenant_are_invisible(client_a, inbox_a, inbox_b, message_b):
    assert ids(client_a.get("/api/messages/", {"folder": inbox_b.id})) == []
    assert ids(client_a.get("/api/folders/")) == [str(inbox_a.id)]
    assert client_a.get(f"/api/folders/{inbox_b.id}/").status_code == 404
    assert ids(client_a.get("/api/folders/", {"account": inbox_b.account_id})) == []


def test_folder_filter_must_be_an_id(client_a):
    response = client_a.get("/api/folders/", {"account": "nope"})
    assert response.status_code == 400
    assert "account" in response.json()["error"]["fields"]


# --- Message list ----------------------------------------------------------------------


def test_messages_newest_first_with_preview_not_bodies(client_a, inbox_a, message_b):
    old = MessageFactory(folder=inbox_a, received_at=timezone.now() - datetime.timedelta(days=2))
    new = MessageFactory(
        folder=inbox_a, received_at=timezone.now(), text_body="Body text", snippet="Body text"
    )

    response = client_a.get("/api/messages/")

    assert ids(response) == [str(new.id), str(old.id)]
    item = response.json()["results"][0]
    assert item["preview"] == "Body text"
    assert item["sender"] == {"name": "Sam Sender", "address": "sender@example.com"}
    assert "text_body" not in item and "html" not in item


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"is_read": "true"}, {"read"}),
        ({"is_read": "false"}, {"unread", "flagged", "attached", "from-alice"}),
        ({"is_flagged": "true"}, {"flagged"}),
        ({"has_attachments": "true"}, {"attached"}),
        ({"sender": "alice@"}, {"from-alice"}),
        ({"sender": "Alice"}, {"from-alice"}),
        # A whole address is a substring too (unlike from:), in any case.
        ({"sender": "ICE@example.ORG"}, {"from-alice"}),
        ({"sender": "ce A"}, {"from-alice"}),
        ({"sender": "al"}, {"from-alice"}),  # no trigram: checked row by row
        ({"sender": "a%e"}, set()),  # LIKE's wildcards are plain characters
    ],
)
def test_message_filters(client_a, inbox_a, params, expected):
    MessageFactory(folder=inbox_a, subject="read", is_read=True)
    MessageFactory(folder=inbox_a, subject="unread")
    MessageFactory(folder=inbox_a, subject="flagged", is_flagged=True)
    MessageFactory(folder=inbox_a, subject="attached", has_attachments=True)
    MessageFactory(
        folder=inbox_a, subject="from-alice", from_address="alice@example.org", from_name="Alice A"
    )

    results = client_a.get("/api/messages/", params).json()["results"]

    assert {m["subject"] for m in results} == expected


def test_message_filters_by_folder_thread_account_and_dates(client_a, account_a, inbox_a):
    archive = FolderFactory(account=account_a, name="Archive", type="archive")
    thread = uuid.uuid4()
    now = timezone.now()
    a = MessageFactory(folder=inbox_a, thread_id=thread, received_at=now - datetime.timedelta(days=10))
    b = MessageFactory(folder=archive, thread_id=thread, received_at=now - datetime.timedelta(days=1))
    other_account = FolderFactory(account__tenant=account_a.tenant, account__user=account_a.user)
    c = MessageFactory(folder=other_account, received_at=now)

    assert ids(client_a.get("/api/messages/", {"folder": archive.id})) == [str(b.id)]
    assert ids(client_a.get("/api/messages/", {"thread": thread})) == [str(b.id), str(a.id)]
    assert ids(client_a.get("/api/messages/", {"account": other_account.account_id})) == [str(c.id)]
    since = (now - datetime.timedelta(days=2)).isoformat()
    assert ids(client_a.get("/api/messages/", {"received_after": since})) == [str(c.id), str(b.id)]
    assert ids(client_a.get("/api/messages/", {"received_before": since})) == [str(a.id)]


def test_bad_filters_are_400_with_field_errors(client_a):
    response = client_a.get(
        "/api/messages/", {"folder": "x", "is_read": "maybe", "received_after": "yesterday"}
    )
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {"folder", "is_read", "received_after"}


def test_cursor_pagination_walks_every_message_once(client_a, inbox_a):
    same_time = timezone.now()
    made = {str(MessageFactory(folder=inbox_a, received_at=same_time).id) for _ in range(5)}
    made |= {str(MessageFactory(folder=inbox_a).id) for _ in range(6)}

    seen, url = [], "/api/messages/?page_size=3"
    while url:
        body = client_a.get(url).json()
        seen += [m["id"] for m in body["results"]]
        url = body["next"]

    assert sorted(seen) == sorted(made)


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64!",
        base64.b64encode(b"p=2024-01-01&o=abc").decode(),  # DRF's form, no longer ours
        *(
            base64.urlsafe_b64encode(json.dumps(body).encode()).decode()
            for body in (
                {"after": ["not a date", str(uuid.UUID(int=1))]},
                {"after": ["\x00", str(uuid.UUID(int=1))]},
                {"after": ["1e999999999", str(uuid.UUID(int=1))]},
                {"after": ["2024-01-01 00:00:00", str(uuid.UUID(int=1))]},  # no offset
                {"after": ["2024-01-01T00:00:00+00:00", "not a uuid"]},
                {"after": ["2024-01-01T00:00:00+00:00"]},  # a key short
                {"sideways": ["2024-01-01T00:00:00+00:00", str(uuid.UUID(int=1))]},
                ["2024-01-01T00:00:00+00:00", str(uuid.UUID(int=1))],
            )
        ),
    ],
)
@pytest.mark.parametrize(
    ("path", "params"),
    [("/api/messages/", {}), ("/api/sync/search", {"query": "hello", "order": "relevance"})],
)
def test_a_bad_cursor_is_a_400_on_the_cursor_field(client_a, inbox_a, path, params, cursor):
    response = client_a.get(path, {**params, "cursor": cursor})
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"cursor": ["Invalid cursor."]}


@pytest.mark.parametrize("size", ["0", "201", "x", "-1", "1.5", "9" * 50])
@pytest.mark.parametrize(
    "path", ["/api/messages/", "/api/folders/", "/api/sync/search?query=x", "/api/threads/", "/api/accounts/"]
)
def test_a_page_size_out_of_range_is_a_400_on_every_list(client_a, account_a, path, size):
    separator = "&" if "?" in path else "?"
    response = client_a.get(f"{path}{separator}account={account_a.id}&page_size={size}")
    assert response.status_code == 400
    assert "page_size" in response.json()["error"]["fields"]


def test_a_folder_cursor_with_a_nul_is_a_400(client_a, account_a):
    cursor = base64.urlsafe_b64encode(
        json.dumps({"after": ["INBOX\x00", str(uuid.UUID(int=1))]}).encode()
    ).decode()
    response = client_a.get("/api/folders/", {"account": account_a.id, "cursor": cursor})
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"cursor": ["Invalid cursor."]}


def test_member_sees_only_own_accounts_admin_sees_all(client_a, client_admin_a, tenant_a, inbox_a, admin_a):
    colleague = FolderFactory(account__tenant=tenant_a)  # another member's account
    mine = MessageFactory(folder=inbox_a)
    theirs = MessageFactory(folder=colleague)

    assert ids(client_a.get("/api/messages/")) == [str(mine.id)]
    assert client_a.get(f"/api/messages/{theirs.id}/").status_code == 404
    assert client_admin_a.get(f"/api/messages/{theirs.id}/").status_code == 200
    assert client_a.get(f"/api/threads/{theirs.thread_id}/").status_code == 404
    assert client_admin_a.get(f"/api/threads/{theirs.thread_id}/").json()["message_count"] == 1
    assert ids(client_a.get("/api/messages/", {"folder": colleague.id})) == []
    assert ids(client_admin_a.get("/api/messages/", {"folder": colleague.id})) == [str(theirs.id)]
    assert set(ids(client_admin_a.get("/api/messages/"))) == {str(mine.id), str(theirs.id)}


def test_a_deleted_accounts_mail_is_gone_for_admin_and_member(client_a, client_admin_a, inbox_a, admin_a):
    kept = MessageFactory(folder=inbox_a, subject="kept budget")
    other_account = FolderFactory(account__tenant=inbox_a.tenant, account__user=inbox_a.account.user)
    gone = MessageFactory(folder=other_account, subject="gone budget")
    with tenant_scope(inbox_a.tenant_id):
        search_index_pending(tenant_id=inbox_a.tenant_id)
    account_delete(account=other_account.account, actor=admin_a)

    for client in (client_a, client_admin_a):
        assert ids(client.get("/api/messages/")) == [str(kept.id)]
        assert ids(client.get("/api/sync/search", {"query": "budget"})) == [str(kept.id)]
        assert ids(client.get("/api/messages/", {"folder": other_account.id})) == []
        assert client.get(f"/api/messages/{gone.id}/").status_code == 404


def test_list_items_are_drf_generic_form(inbox_a):
    """The list serializer builds its items by hand for speed, from a message
    or a list row; they must be exactly what DRF's generic field loop makes
    of the same message, once rendered as JSON."""
    odd = datetime.datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=datetime.UTC)
    messages = [
        MessageFactory(folder=inbox_a),
        MessageFactory(
            folder=inbox_a,
            thread_id=None,
            received_at=None,
            sent_at=odd,
            from_name="",
            subject="Zoë's «report» 日本",
            to=[{"name": "", "address": "a@example.com"}, {"name": "Bé", "address": "b@example.org"}],
            cc=[{"name": "C", "address": "c@example.net"}],
            is_read=True,
            is_flagged=True,
            is_answered=True,
            is_draft=True,
            has_attachments=True,
            snippet="",
        ),
    ]
    serializer = MessageListSerializer()
    with tenant_scope(inbox_a.tenant_id):
        found = Message.objects.filter(id__in=[m.id for m in messages])
        rows = {row["id"]: row for row in selectors.list_rows(found)}
        assert len(rows) == 2
        for message in found:
            generic = as_json(ModelSerializer.to_representation(serializer, message))
            assert as_json(serializer.to_representation(message)) == generic
            assert as_json(serializer.to_representation(rows[message.id])) == generic


def test_list_query_counts_are_pinned(client_a, inbox_a, account_a):
    """Per request: the scope (savepoint, set_config finding the tenant,
    restore, release: the test's outer transaction), the membership with its
    user and tenant, then the endpoint's own queries, whatever the page
    holds."""
    client_a.get("/api/messages/")  # warm up

    def count(url, params=None) -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client_a.get(url, params).status_code == 200
        return len(queries) - 5

    for n in (1, 25):
        for _ in range(n):
            message = MessageFactory(folder=inbox_a, thread_id=uuid.uuid4())
        search_index_pending(tenant_id=inbox_a.tenant_id)
        # Message reads: the visible account ids, then the page; a folder's
        # page checks the folder's visibility inside its own query.
        assert count("/api/messages/") == 2
        assert count("/api/messages/", {"folder": inbox_a.id, "is_read": "false"}) == 1
        # Searches: the search's statement timeout, the ids, the planner's
        # guesses (the scope, then each positive term: here the words, then
        # from:), the candidates' ids, then the page by primary key (planner
        # switch, page, switch back).
        assert count("/api/messages/", {"q": "message from:sender"}) == 9
        assert count("/api/sync/search", {"query": "message"}) == 8
        assert count("/api/folders/", {"account": account_a.id}) == 1
        # Threads: the account ids, the newest-first walk, the page's counts, their latest messages.
        assert count("/api/threads/", {"account": account_a.id}) == 4
        # A thread's or a message's accounts are a sub-select: the thread's
        # subject and counts, then its page; the message with its folder,
        # then its attachments.
        assert count(f"/api/threads/{message.thread_id}/") == 2
        assert count(f"/api/messages/{message.id}/") == 2


# --- Message detail ----------------------------------------------------------------------


def test_detail_sanitises_html_and_points_cid_images_at_attachments(client_a, inbox_a, blobs, api_client):
    html = (
        '<p onclick="steal()">Hi<script>alert(1)</script></p>'
        '<img src="cid:logo@x"><img src="https://tracker.example/pixel.gif">'
        '<a href="javascript:alert(1)">click</a>'
    )
    message = MessageFactory(folder=inbox_a, html_body=html, has_attachments=False)
    key = blobs.put(message.tenant_id, b"\x89PNG fake")
    logo = AttachmentFactory(
        message=message,
        filename="logo.png",
        mime_type="image/png",
        content_id="logo@x",
        is_inline=True,
        content_hash=key,
    )

    body = client_a.get(f"/api/messages/{message.id}/").json()

    assert "<script" not in body["html"] and "onclick" not in body["html"]
    assert "javascript:" not in body["html"]
    assert "tracker.example" not in body["html"]
    assert body["remote_images_blocked"] == 1
    [attachment] = body["attachments"]
    assert attachment["id"] == str(logo.id)
    assert attachment["download_url"] in body["html"].replace("&amp;", "&")
    # The <img> fetches it without a bearer token, by the signed URL.
    image = api_client.get(attachment["download_url"])
    assert image.status_code == 200
    assert b"".join(image.streaming_content) == b"\x89PNG fake"

    shown = client_a.get(f"/api/messages/{message.id}/", {"remote_images": "1"}).json()
    assert "tracker.example/pixel.gif" in shown["html"]
    assert shown["remote_images_blocked"] == 0


def test_detail_sanitises_a_body_once_then_serves_it_from_the_cache(
    client_a, client_admin_a, inbox_a, blobs, monkeypatch, settings
):
    """Sanitising a large body took seconds and hundreds of MB on every
    request. The fragment is cached per message and options; the signed
    attachment URL in it is each user's own, put in on the way out."""
    from messages import sanitize

    settings.MAIL_HTML_CACHE_MIN_CHARS = 0  # this small body cached too
    message = MessageFactory(folder=inbox_a, html_body='<p>Hello</p><img src="cid:logo@x">')
    AttachmentFactory(
        message=message, content_id="logo@x", is_inline=True, content_hash=blobs.put(message.tenant_id, b"x")
    )
    calls = []
    original = sanitize.sanitize_html
    monkeypatch.setattr(sanitize, "sanitize_html", lambda *a, **k: calls.append(1) or original(*a, **k))

    first = client_a.get(f"/api/messages/{message.id}/").json()
    again = client_a.get(f"/api/messages/{message.id}/").json()
    by_admin = client_admin_a.get(f"/api/messages/{message.id}/").json()
    assert len(calls) == 1

    def without_url(body):
        return body["html"].replace("&amp;", "&").replace(body["attachments"][0]["download_url"], "URL")

    assert without_url(first) == without_url(again) == '<p>Hello</p><img src="URL">'
    for body in (first, by_admin):
        [attachment] = body["attachments"]
        assert attachment["download_url"] in body["html"].replace("&amp;", "&")
    assert first["attachments"][0]["download_url"] != by_admin["attachments"][0]["download_url"]
    client_a.get(f"/api/messages/{message.id}/", {"remote_images": "1"})
    assert len(calls) == 2  # other options, another fragment


def test_detail_with_the_html_cache_away_sanitises_uncached(client_a, inbox_a, blobs, settings, caplog):
    """`cache.get` raised ConnectionError: every message detail was a 500
    while Redis was away (reads go on uncounted by the throttles then)."""
    from messages import sanitize

    caplog.set_level(logging.WARNING, logger="messages.sanitize")
    settings.MAIL_HTML_CACHE_MIN_CHARS = 0
    away = {
        "BACKEND": "emailclient.core.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
        "KEY_PREFIX": "emailclient-test",
    }
    settings.CACHES = {"default": away, "html": away}
    sanitize._cache_down["logged_at"] = float("-inf")
    message = MessageFactory(folder=inbox_a, html_body='<p>Hello</p><img src="cid:logo@x">')
    AttachmentFactory(
        message=message, content_id="logo@x", is_inline=True, content_hash=blobs.put(message.tenant_id, b"x")
    )

    responses = [client_a.get(f"/api/messages/{message.id}/") for _ in range(2)]

    assert [r.status_code for r in responses] == [200, 200]
    for body in (r.json() for r in responses):
        url = body["attachments"][0]["download_url"]
        assert body["html"].replace("&amp;", "&") == f'<p>Hello</p><img src="{url}">'
    warnings = [r.getMessage() for r in caplog.records if r.name == "messages.sanitize"]
    assert warnings == ["sanitised HTML cache unavailable (ConnectionError); sanitising uncached"]


def test_detail_cuts_a_huge_html_body_and_says_so(client_a, inbox_a, settings):
    settings.MAIL_HTML_MAX_CHARS = 50_000
    paragraph = "<p>" + "word " * 40 + "</p>\n"
    html = paragraph * (120_000 // len(paragraph))
    message = MessageFactory(folder=inbox_a, html_body=html)

    body = client_a.get(f"/api/messages/{message.id}/").json()

    assert body["html_truncated"] is True
    assert len(body["html"]) < 51_000
    whole_paragraphs = 50_000 // len(paragraph)  # cut at a tag's start, not inside one
    assert body["html"].endswith(
        f"<p><strong>[Message truncated: its HTML is {len(html):,} characters; the first"
        f" {whole_paragraphs * len(paragraph):,} are shown. Download the original message to read all of it.]"
        "</strong></p>"
    )
    assert body["html"].count("<p>word") == whole_paragraphs
    small = MessageFactory(folder=inbox_a, html_body=paragraph)
    assert client_a.get(f"/api/messages/{small.id}/").json()["html_truncated"] is False


def test_reads_of_a_message_leave_the_search_columns_behind(client_a, inbox_a):
    """The trigram vectors and the other search keys are read by searches
    only: a message's detail does not fetch them."""
    message = MessageFactory(folder=inbox_a, subject="A subject with many trigrams")
    with CaptureQueriesContext(connection) as queries:
        assert client_a.get(f"/api/messages/{message.id}/").status_code == 200
    sql = " ".join(q["sql"] for q in queries.captured_queries)
    assert '"email_messages"."subject"' in sql
    for column in ("subject_trigrams", "from_trigrams", "to_trigrams", "cc_trigrams", "search_vector"):
        assert column not in sql


def test_detail_is_drf_generic_form(client_a, inbox_a, blobs, monkeypatch):
    """The detail serializer builds its answer by hand too; it must be what
    DRF's generic field loop makes of the same message."""
    message = MessageFactory(
        folder=inbox_a,
        html_body='<p>Hi <img src="cid:logo@x"> <img src="https://tracker.example/p.gif"></p>',
        text_body="Hi, Zoë\n",
        bcc=[{"name": "B", "address": "b@example.org"}],
        reply_to=[{"name": "", "address": "r@example.net"}],
        in_reply_to="<parent@example.com>",
        references=["<root@example.com>", "<parent@example.com>"],
        flags=["\\Seen", "$Label1"],
        deleted_at=datetime.datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=datetime.UTC),
    )
    AttachmentFactory(message=message, content_id="logo@x", content_hash=blobs.put(message.tenant_id, b"png"))
    AttachmentFactory(message=message, filename="a.pdf")
    url = f"/api/messages/{message.id}/"
    by_hand = client_a.get(url).content
    monkeypatch.setattr(
        MessageDetailSerializer, "to_representation", ModelSerializer.to_representation, raising=True
    )
    generic = client_a.get(url).content
    assert json.loads(by_hand) == json.loads(generic)
    assert by_hand == generic  # the keys in the same order too


def test_detail_of_another_tenant_is_404(client_a, message_b):
    assert client_a.get(f"/api/messages/{message_b.id}/").status_code == 404
    assert client_a.get(f"/api/messages/{message_b.id}/raw").status_code == 404
    assert client_a.get(f"/api/messages/{uuid.uuid4()}/").status_code == 404


def test_raw_download_is_the_stored_source(client_a, inbox_a, blobs):
    raw = b"From: a@example.com\r\nSubject: hello\r\n\r\nbody\r\n"
    message = MessageFactory(
        folder=inbox_a, subject="Re: plan/../x", raw_blob_key=blobs.put(inbox_a.tenant_id, raw)
    )

    response = client_a.get(f"/api/messages/{message.id}/raw")

    assert response.status_code == 200
    assert response["Content-Type"] == "message/rfc822"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Disposition"].startswith("attachment;")
    assert "/" not in response["Content-Disposition"].split("filename=")[1]
    assert b"".join(response.streaming_content) == raw


# --- Attachments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mime_type", "filename", "disposition", "served_type"),
    [
        ("text/html", "page.html", "attachment", "text/html"),
        ("image/svg+xml", "logo.svg", "attachment", "image/svg+xml"),
        ("image/png", "photo.png", "inline", "image/png"),
        ("text/html; charset=x\r\nSet-Cookie: a=b", "x.html", "attachment", "application/octet-stream"),
    ],
)
def test_attachment_download_is_safe(client_a, inbox_a, blobs, mime_type, filename, disposition, served_type):
    message = MessageFactory(folder=inbox_a)
    attachment = AttachmentFactory(
        message=message,
        mime_type=mime_type,
        filename=f"../../{filename}",
        content_hash=blobs.put(inbox_a.tenant_id, b"<svg onload=alert(1)>"),
    )

    response = client_a.get(f"/api/attachments/{attachment.id}/download", {"inline": "1"})

    assert response.status_code == 200
    assert response["Content-Type"] == served_type
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"]
    assert response["Content-Disposition"].startswith(disposition)
    assert f'filename="{filename}"' in response["Content-Disposition"]


def test_attachment_of_another_tenant_is_404_even_with_its_token(client_a, client_b, message_b, blobs):
    attachment = AttachmentFactory(message=message_b, content_hash=blobs.put(message_b.tenant_id, b"x"))

    assert client_a.get(f"/api/attachments/{attachment.id}/download").status_code == 404
    # B's signed URL does not open another attachment.
    url = client_b.get(f"/api/messages/{message_b.id}/").json()["attachments"][0]["download_url"]
    other = AttachmentFactory(message=message_b, content_hash=attachment.content_hash)
    assert client_a.get(url.replace(str(attachment.id), str(other.id))).status_code == 404
    assert client_a.get(f"/api/attachments/{attachment.id}/download", {"token": "forged"}).status_code == 404


def test_attachment_download_needs_credentials(api_client, inbox_a, blobs):
    attachment = AttachmentFactory(message=MessageFactory(folder=inbox_a))
    assert api_client.get(f"/api/attachments/{attachment.id}/download").status_code == 401


# --- Threads ---------------------------------------------------------------------------------


def test_threads_list_and_detail(client_a, account_a, inbox_a):
    thread = uuid.uuid4()
    now = timezone.now()
    first = MessageFactory(
        folder=inbox_a,
        thread_id=thread,
        subject="Plan",
        is_read=True,
        received_at=now - datetime.timedelta(hours=2),
        from_address="a@x.org",
    )
    second = MessageFactory(
        folder=inbox_a,
        thread_id=thread,
        subject="Re: Plan",
        received_at=now - datetime.timedelta(hours=1),
        from_address="b@x.org",
    )
    lonely = MessageFactory(folder=inbox_a, received_at=now - datetime.timedelta(days=3))

    body = client_a.get("/api/threads/", {"account": account_a.id}).json()

    assert [t["thread_id"] for t in body["results"]] == [str(thread), str(lonely.thread_id)]
    top = body["results"][0]
    assert top["message_count"] == 2 and top["unread_count"] == 1
    assert sorted(top["participants"]) == ["a@x.org", "b@x.org"]
    assert top["latest_message"]["id"] == str(second.id)

    detail = client_a.get(f"/api/threads/{thread}/").json()
    assert [m["id"] for m in detail["messages"]] == [str(first.id), str(second.id)]


def test_a_thread_is_served_a_page_at_a_time_oldest_first(client_a, inbox_a, message_b):
    """A References header can put any number of messages in one thread:
    its messages are paged (keyset, like every list), its counts whole."""
    thread = uuid.uuid4()
    start = timezone.now() - datetime.timedelta(days=1)
    made = [
        MessageFactory(
            folder=inbox_a,
            thread_id=thread,
            subject="Plan" if i == 0 else "Re: Plan",
            is_read=i % 2 == 0,
            # Two pairs share a date: the id orders them.
            received_at=start + datetime.timedelta(minutes=i // 2 * 2 if i in (2, 3, 6, 7) else i),
        )
        for i in range(7)
    ]
    expected = [str(m.id) for m in sorted(made, key=lambda m: (m.received_at, m.id))]

    seen, url, pages = [], f"/api/threads/{thread}/?page_size=3", 0
    while url:
        body = client_a.get(url).json()
        assert (body["subject"], body["message_count"], body["unread_count"]) == ("Plan", 7, 3)
        assert len(body["messages"]) <= 3
        seen += [m["id"] for m in body["messages"]]
        url, pages = body["next"], pages + 1
    assert (seen, pages) == (expected, 3)
    first = client_a.get(f"/api/threads/{thread}/").json()
    assert [m["id"] for m in first["messages"]] == expected and first["next"] is None
    assert client_a.get(f"/api/threads/{thread}/", {"page_size": "0"}).status_code == 400
    assert client_a.get(f"/api/threads/{thread}/", {"cursor": "garbage"}).status_code == 400
    assert client_a.get(f"/api/threads/{message_b.thread_id}/").status_code == 404


def test_threads_need_an_account_and_hide_other_tenants(client_a, message_b):
    assert client_a.get("/api/threads/").status_code == 400
    assert ids_of_threads(client_a.get("/api/threads/", {"account": message_b.account_id})) == []
    assert client_a.get(f"/api/threads/{message_b.thread_id}/").status_code == 404


def test_thread_pages_walk_every_thread_once_in_order_of_latest_activity(client_a, account_a, inbox_a):
    """Threads whose messages straddle page and walk-chunk boundaries: every
    thread on exactly one page, ordered by its newest message, counted whole."""
    start = timezone.now() - datetime.timedelta(days=30)
    threads = [uuid.uuid4() for _ in range(9)]
    rng = random.Random(7)
    made: dict[uuid.UUID, list] = {t: [] for t in threads}
    for n in range(60):
        thread = rng.choice(threads)
        received = start + datetime.timedelta(minutes=rng.randrange(0, 40_000))
        made[thread].append(
            MessageFactory(folder=inbox_a, thread_id=thread, received_at=received, is_read=n % 3 == 0)
        )
    # A copy without a date counts in its thread but places nothing.
    MessageFactory(folder=inbox_a, thread_id=threads[0], received_at=None)
    expected = sorted(
        (t for t in threads if made[t]),
        key=lambda t: max((m.received_at, m.id) for m in made[t]),
        reverse=True,
    )

    seen, url = [], f"/api/threads/?account={account_a.id}&page_size=2"
    while url:
        body = client_a.get(url).json()
        assert body["previous"] is None
        seen.extend(body["results"])
        url = body["next"]

    assert [uuid.UUID(t["thread_id"]) for t in seen] == expected
    for item in seen:
        messages = made[uuid.UUID(item["thread_id"])]
        assert item["message_count"] == len(messages) + (item["thread_id"] == str(threads[0]))
        assert item["unread_count"] == sum(not m.is_read for m in messages) + (
            item["thread_id"] == str(threads[0])
        )
        newest = max(messages, key=lambda m: (m.received_at, m.id))
        assert item["latest_message"]["id"] == str(newest.id)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "nope",
        "bm9wZQ==",
        _b64("2024-01-01|x"),
        "MjAyNC0wMS0wMXw" + "A" * 30,
        _b64(f"2024-01-01T00:00:00|{uuid.uuid4()}"),  # no offset
        _b64(f"2024-01-01T00:00:00+20:00|{uuid.uuid4()}"),  # an offset PostgreSQL refuses
        _b64(f"9999-12-31T23:00:00-05:30|{uuid.uuid4()}"),
        _b64(f"2024-01-01T00:00:00+00:00|{uuid.uuid4()}|more"),
    ],
)
def test_a_bad_thread_cursor_or_page_size_is_a_400(client_a, account_a, cursor):
    response = client_a.get("/api/threads/", {"account": account_a.id, "cursor": cursor})
    assert response.status_code == 400
    assert "cursor" in response.json()["error"]["fields"]
    for size in (0, 201, "x"):
        response = client_a.get("/api/threads/", {"account": account_a.id, "page_size": size})
        assert response.status_code == 400
        assert "page_size" in response.json()["error"]["fields"]


def test_many_long_threads_cost_a_few_walk_steps(client_a, account_a, inbox_a, django_assert_max_num_queries):
    now = timezone.now()
    threads = [uuid.uuid4() for _ in range(12)]
    MessageFactory.create_batch(
        480,
        folder=inbox_a,
        thread_id=factory.Iterator([t for t in threads for _ in range(40)]),
        received_at=factory.Iterator([now - datetime.timedelta(minutes=n) for n in range(480)]),
    )
    with django_assert_max_num_queries(
        14
    ):  # 5 of the test's transaction and membership, 4 walk steps at most
        body = client_a.get("/api/threads/", {"account": account_a.id, "page_size": 10}).json()
    assert [t["thread_id"] for t in body["results"]] == [str(t) for t in threads[:10]]
    body = client_a.get(body["next"]).json()
    assert [t["thread_id"] for t in body["results"]] == [str(t) for t in threads[10:]]


def test_a_thread_emptied_between_the_walk_and_its_counts_is_left_out(client_a, account_a, inbox_a):
    now = timezone.now()
    gone, kept = (
        MessageFactory(folder=inbox_a, received_at=now - datetime.timedelta(minutes=n)) for n in range(2)
    )

    def delete_before_counting(execute, sql, params, many, context):
        if "ARRAY_AGG" in sql:
            with connection.cursor() as cursor:  # as another request would, mid-walk
                cursor.execute("UPDATE email_messages SET is_deleted = true WHERE id = %s", [gone.id])
        return execute(sql, params, many, context)

    with connection.execute_wrapper(delete_before_counting):
        response = client_a.get("/api/threads/", {"account": account_a.id})
    assert response.status_code == 200
    assert [t["thread_id"] for t in response.json()["results"]] == [str(kept.thread_id)]


def ids_of_threads(response) -> list[str]:
    assert response.status_code == 200
    return [t["thread_id"] for t in response.json()["results"]]


# --- Changes ---------------------------------------------------------------------------------


def test_patch_marks_read_records_the_change_and_audits(
    client_a, inbox_a, django_capture_on_commit_callbacks
):
    message = MessageFactory(folder=inbox_a, flags=[])

    with django_capture_on_commit_callbacks() as callbacks:
        response = client_a.patch(f"/api/messages/{message.id}/", {"is_read": True}, format="json")

    assert response.status_code == 200 and response.json()["is_read"] is True
    stored = reload(message)
    assert stored.is_read and stored.flags == ["\\Seen"]
    with tenant_scope(inbox_a.tenant_id):
        change = MessageChange.objects.get(message=message)
        assert (change.kind, change.state, change.flags) == ("flags", "pending", {"\\Seen": True})
        assert AuditLog.objects.filter(action="message.update", object_id=message.id).exists()
        assert Folder.objects.get(id=inbox_a.id).unread_count == 0
    assert len(callbacks) == 1  # the write-back task, queued once committed


def test_patch_validates(client_a, inbox_a, message_b):
    message = MessageFactory(folder=inbox_a)
    assert client_a.patch(f"/api/messages/{message.id}/", {}, format="json").status_code == 400
    assert (
        client_a.patch(f"/api/messages/{message.id}/", {"is_read": "perhaps"}, format="json").status_code
        == 400
    )
    assert (
        client_a.patch(f"/api/messages/{message_b.id}/", {"is_read": True}, format="json").status_code == 404
    )


def test_move_to_another_folder_of_the_account(client_a, account_a, inbox_a, inbox_b):
    archive = FolderFactory(account=account_a, name="Archive", type="archive")
    message = MessageFactory(folder=inbox_a, imap_uid=7)

    response = client_a.post(f"/api/messages/{message.id}/move/", {"folder": archive.id}, format="json")

    assert response.status_code == 200
    stored = reload(message)
    assert stored.folder_id == archive.id and stored.imap_uid is None
    with tenant_scope(inbox_a.tenant_id):
        change = MessageChange.objects.get(message=message)
    assert (change.kind, change.folder_name, change.imap_uid, change.target_folder_id) == (
        "move",
        "INBOX",
        7,
        archive.id,
    )
    # Another tenant's folder, or garbage: refused, nothing changed.
    assert (
        client_a.post(f"/api/messages/{message.id}/move/", {"folder": inbox_b.id}, format="json").status_code
        == 404
    )
    assert (
        client_a.post(f"/api/messages/{message.id}/move/", {"folder": "x"}, format="json").status_code == 400
    )
    assert reload(message).folder_id == archive.id


def test_moving_back_before_write_back_cancels_the_move(client_a, account_a, inbox_a):
    archive = FolderFactory(account=account_a, name="Archive", type="archive")
    message = MessageFactory(folder=inbox_a, imap_uid=7)

    client_a.post(f"/api/messages/{message.id}/move/", {"folder": archive.id}, format="json")
    client_a.post(f"/api/messages/{message.id}/move/", {"folder": inbox_a.id}, format="json")

    stored = reload(message)
    assert (stored.folder_id, stored.imap_uid) == (inbox_a.id, 7)
    with tenant_scope(inbox_a.tenant_id):
        assert not MessageChange.objects.filter(state="pending").exists()


def test_delete_moves_to_trash_then_expunges(client_a, inbox_a, trash_a):
    message = MessageFactory(folder=inbox_a, imap_uid=3)

    assert client_a.delete(f"/api/messages/{message.id}/").status_code == 204
    stored = reload(message)
    assert stored.folder_id == trash_a.id and stored.deleted_at is not None and not stored.is_deleted

    assert client_a.delete(f"/api/messages/{message.id}/").status_code == 204
    stored = reload(message)
    assert stored.is_deleted
    assert client_a.get(f"/api/messages/{message.id}/").status_code == 404
    with tenant_scope(inbox_a.tenant_id):
        kinds = list(
            MessageChange.objects.filter(state="pending").values_list("kind", "folder_name", "imap_uid")
        )
    # Trashed then deleted before the move reached the server: one expunge, where the server has it.
    assert kinds == [("expunge", "INBOX", 3)]


def test_delete_without_trash_needs_permanent(client_a, inbox_a):
    message = MessageFactory(folder=inbox_a)
    response = client_a.delete(f"/api/messages/{message.id}/")
    assert response.status_code == 409
    assert "permanent" in response.json()["error"]["fields"]
    assert not reload(message).is_deleted
    assert client_a.delete(f"/api/messages/{message.id}/?permanent=1").status_code == 204
    assert reload(message).is_deleted


def test_bulk_forms(client_a, account_a, inbox_a, trash_a, message_b):
    archive = FolderFactory(account=account_a, name="Archive", type="archive")
    messages = [MessageFactory(folder=inbox_a) for _ in range(3)]
    message_ids = [str(m.id) for m in messages]

    response = client_a.post(
        "/api/messages/bulk/update/", {"ids": message_ids, "is_flagged": True}, format="json"
    )
    assert response.status_code == 200
    assert all(reload(m).is_flagged for m in messages)

    assert (
        client_a.post(
            "/api/messages/bulk/move/", {"ids": message_ids[:2], "folder": archive.id}, format="json"
        ).status_code
        == 200
    )
    assert {reload(m).folder_id for m in messages[:2]} == {archive.id}

    assert client_a.post("/api/messages/bulk/delete/", {"ids": message_ids}, format="json").status_code == 204
    assert {reload(m).folder_id for m in messages} == {trash_a.id}

    # One foreign id spoils the batch: nothing applied.
    response = client_a.post(
        "/api/messages/bulk/update/",
        {"ids": [message_ids[0], str(message_b.id)], "is_read": True},
        format="json",
    )
    assert response.status_code == 404
    assert not reload(messages[0]).is_read
    assert (
        client_a.post("/api/messages/bulk/update/", {"ids": [], "is_read": True}, format="json").status_code
        == 400
    )


# --- Search ------------------------------------------------------------------------------------


def test_search_endpoints_find_own_mail_only(client_a, inbox_a, inbox_b):
    from messages.indexing import search_index_pending

    mine = MessageFactory(folder=inbox_a, subject="Quarterly budget review")
    MessageFactory(folder=inbox_a, subject="Lunch")
    MessageFactory(folder=inbox_b, subject="Quarterly budget review")
    for folder in (inbox_a, inbox_b):
        search_index_pending(tenant_id=folder.tenant_id)

    assert ids(client_a.get("/api/sync/search", {"query": "budget"})) == [str(mine.id)]
    assert ids(client_a.get("/api/messages/", {"q": "budget", "order": "relevance"})) == [str(mine.id)]
    assert ids(client_a.get("/api/sync/search", {"query": "budget", "account": inbox_b.account_id})) == []


@pytest.mark.parametrize("query", ['"unclosed', "frm:bob", "before:2024-13-01", "x" * 501, ""])
def test_malformed_search_is_400_saying_why(client_a, query):
    response = client_a.get("/api/sync/search", {"query": query})
    assert response.status_code == 400
    assert response.json()["error"]["message"]


def test_sql_in_a_query_is_only_text(client_a, inbox_a):
    MessageFactory(folder=inbox_a, subject="DROP TABLE email_messages")

    response = client_a.get("/api/sync/search", {"query": 'subject:"\'; DROP TABLE email_messages; --"'})

    assert response.status_code == 200 and response.json()["results"] == []
    assert ids(client_a.get("/api/messages/")) != []  # the table is still there


def test_relevance_order_needs_a_query(client_a):
    response = client_a.get("/api/messages/", {"order": "relevance"})
    assert response.status_code == 400
    assert "order" in response.json()["error"]["fields"]


def test_relevance_pages_walk_every_match_once(client_a, inbox_a):
    from messages.indexing import search_index_pending

    in_subject = {str(MessageFactory(folder=inbox_a, subject="budget").id) for _ in range(3)}
    in_body = {str(MessageFactory(folder=inbox_a, text_body="the budget").id) for _ in range(4)}
    search_index_pending(tenant_id=inbox_a.tenant_id)

    seen, url = [], "/api/messages/?q=budget&order=relevance&page_size=2"
    while url and len(seen) < 20:
        body = client_a.get(url).json()
        seen += [m["id"] for m in body["results"]]
        url = body["next"]

    assert sorted(seen) == sorted(in_subject | in_body)
    assert set(seen[:3]) == in_subject  # subject hits rank first


def test_folder_counts_follow_every_change(client_a, account_a, inbox_a, trash_a):
    from messages.services import folder_counts_refresh

    archive = FolderFactory(account=account_a, name="Archive", type="archive")
    messages = [MessageFactory(folder=inbox_a, is_read=bool(i % 2)) for i in range(6)]
    folders = [inbox_a.id, archive.id, trash_a.id]

    def counts():
        with tenant_scope(inbox_a.tenant_id):
            return {f.id: (f.total_count, f.unread_count) for f in Folder.objects.filter(id__in=folders)}

    def recounted():
        with tenant_scope(inbox_a.tenant_id):
            folder_counts_refresh(folders)
        return counts()

    recounted()
    client_a.patch(f"/api/messages/{messages[0].id}/", {"is_read": True}, format="json")
    client_a.post(f"/api/messages/{messages[1].id}/move/", {"folder": archive.id}, format="json")
    client_a.post(f"/api/messages/{messages[2].id}/move/", {"folder": archive.id}, format="json")
    client_a.delete(f"/api/messages/{messages[3].id}/")
    client_a.delete(f"/api/messages/{messages[4].id}/?permanent=1")
    after = counts()

    assert after == recounted()
    assert after[inbox_a.id] == (2, 0) and after[archive.id] == (2, 1) and after[trash_a.id] == (1, 0)


def test_a_search_pages_the_same_whichever_plan_serves_it(client_a, inbox_a, monkeypatch):
    """Few candidates are fetched by id, then paged; many are left to the
    newest-first walk; more than expected fall back to it. The pages,
    cursors and all, must not differ, whatever the terms."""
    now = timezone.now()
    for i in range(5):
        MessageFactory(folder=inbox_a, subject=f"budget {i}", received_at=now - datetime.timedelta(hours=i))
    MessageFactory(folder=inbox_a, subject="budget tie a", received_at=now - datetime.timedelta(hours=9))
    MessageFactory(folder=inbox_a, subject="budget tie b", received_at=now - datetime.timedelta(hours=9))
    MessageFactory(
        folder=inbox_a,
        subject="budget other",
        from_address="x@corp.example",
        received_at=now + datetime.timedelta(minutes=1),
    )
    MessageFactory(folder=inbox_a, subject="other", received_at=now)
    search_index_pending(tenant_id=inbox_a.tenant_id)

    def pages(query: str, threshold: int) -> list[str]:
        monkeypatch.setattr(selectors, "SELECTIVE_MATCHES", threshold)
        monkeypatch.setattr(selectors, "SELECTIVE_SHARE", 0)
        seen, url = [], f"/api/sync/search?query={query}&page_size=2"
        while url:
            body = client_a.get(url).json()
            seen += [m["subject"] for m in body["results"]]
            url = body["next"]
        return seen

    queries = [
        "budget",
        "budget from:sender",
        "from:x@corp.example budget",
        "budget -tie",
        "-tie",
        "is:unread",
    ]
    for query in queries:
        walked = pages(query, 0)  # the walk, by the planner's guess
        assert walked, query
        assert pages(query, 2) == walked, query  # more ids than expected: the walk again
        assert pages(query, 10_000) == walked, query  # the candidates' ids
    assert (
        pages("budget", 0)[:5] == [f"budget {i}" for i in range(5)] or pages("budget", 0)[0] == "budget other"
    )


def test_reading_or_changing_a_message_never_fetches_its_search_columns(client_a, inbox_a):
    message = MessageFactory(folder=inbox_a, subject="hello")
    search_index_pending(tenant_id=inbox_a.tenant_id)

    with CaptureQueriesContext(connection) as read:
        assert client_a.get(f"/api/messages/{message.id}/").status_code == 200
    with CaptureQueriesContext(connection) as changed:
        response = client_a.patch(f"/api/messages/{message.id}/", {"is_read": True}, format="json")
        assert response.status_code == 200

    queries = [*read.captured_queries, *changed.captured_queries]
    selects = [q["sql"] for q in queries if "email_messages" in q["sql"]]
    assert any('"email_messages"."text_body"' in sql for sql in selects)
    assert not any("search_vector" in sql or "to_addresses" in sql for sql in selects)


def test_a_long_thread_does_not_hide_the_threads_behind_it(
    client_a, account_a, inbox_a, django_assert_max_num_queries
):
    now = timezone.now()
    long_thread = uuid.uuid4()
    for n in range(40):
        MessageFactory(folder=inbox_a, thread_id=long_thread, received_at=now - datetime.timedelta(minutes=n))
    older = [
        MessageFactory(
            folder=inbox_a, thread_id=uuid.uuid4(), received_at=now - datetime.timedelta(days=n + 1)
        )
        for n in range(3)
    ]
    with django_assert_max_num_queries(12):  # the membership's and the page's, not one walk step per message
        body = client_a.get("/api/threads/", {"account": account_a.id, "page_size": 2}).json()
    assert [t["thread_id"] for t in body["results"]] == [str(long_thread), str(older[0].thread_id)]
    assert body["results"][0]["message_count"] == 40
    body = client_a.get(body["next"]).json()
    assert [t["thread_id"] for t in body["results"]] == [str(m.thread_id) for m in older[1:]]
    assert body["next"] is None


@pytest.mark.parametrize(
    "path",
    [
        "/api/messages/?q=x",
        "/api/messages/?q=subject:invoice",
        "/api/sync/search?query=x",
        "/api/sync/search?query=from:alice",
        "/api/messages/?sender=alice",
    ],
)
def test_a_member_without_accounts_searches_nothing_without_an_error(client_a, inbox_b, path):
    """A member with no account sees no message: the list is an empty
    queryset (no SQL), and the search's EXPLAIN of it had no plan to read
    (a JSONDecodeError, a 500)."""
    MessageFactory(folder=inbox_b, subject="x invoice", from_address="alice@example.com")
    response = client_a.get(path)
    assert response.status_code == 200, response.content
    assert response.json()["results"] == []


def test_a_sender_filter_counts_as_a_search(client_a, account_a, settings):
    """`sender` is a substring match, throttled as searches are."""
    settings.API_RATE_LIMIT_SEARCH = "2/m"
    assert client_a.get("/api/messages/", {"sender": "alice"}).status_code == 200
    assert client_a.get("/api/messages/", {"q": "invoice"}).status_code == 200
    response = client_a.get("/api/messages/", {"sender": "alice"})
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    assert client_a.get("/api/messages/").status_code == 200  # a list without either is not a search
