"""The compose API: drafts, uploads, replies and forwards, sending, the
outbox's view of it, idempotency and rate limits; tenant B in every test.

No worker runs here: what is queued is read from a recorder in place of
`send_task` (the tasks themselves are compose/tests/test_outbox.py's), and
the frozen message from the blob store, parsed as the sync parses mail.
"""

import datetime
import json
import uuid

import pytest
from celery import current_app
from django.utils import timezone

from accounts.tests.factories import EmailAccountFactory
from compose.models import Draft, DraftAttachment, IdempotencyKey, SendQueueItem
from compose.outbox import outbox_dispatch_due
from compose.tests.factories import DraftAttachmentFactory, DraftFactory
from conftest import bearer_client
from emailclient.core.models import AuditLog
from emailclient.core.tenancy import tenant_scope
from emailclient.core.tests.factories import MembershipFactory, UserFactory
from messages.parsing import parse_message
from messages.tests.factories import AttachmentFactory, FolderFactory, MessageFactory

pytestmark = pytest.mark.django_db

SAME_SECOND = timezone.now().replace(microsecond=0) - datetime.timedelta(days=1)


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture
def account_a(tenant_a, user_a):
    """Alice's account, with an SMTP server to send through."""
    return EmailAccountFactory(
        tenant=tenant_a,
        user=user_a,
        account_name="Alice Example",
        email_address="alice@example.com",
        smtp_hostname="smtp.example.com",
        smtp_port=587,
        smtp_encryption="starttls",
    )


@pytest.fixture
def account_b(tenant_b, user_b):
    return EmailAccountFactory(
        tenant=tenant_b, user=user_b, email_address="bob@b.example", smtp_hostname="smtp.b.example"
    )


@pytest.fixture
def draft_b(account_b):
    return DraftFactory(account=account_b)


@pytest.fixture
def tasks(monkeypatch):
    """What was queued: (name, args or kwargs, options), in order."""
    queued = []

    def record(name, args=None, kwargs=None, **options):
        queued.append((name, args if args is not None else kwargs, options))

    monkeypatch.setattr(current_app, "send_task", record)
    return queued


@pytest.fixture
def blob_store(blobs):
    return blobs


def reload(draft) -> Draft:
    with tenant_scope(draft.tenant_id):
        return Draft.objects.get(id=draft.id)


def outbox_of(draft_id, tenant) -> SendQueueItem:
    with tenant_scope(tenant.id):
        return SendQueueItem.objects.get(draft_id=draft_id)


def body(account, /, **fields) -> dict:
    return {"account": str(account.id), "to": ["Rita Reader <rita@example.com>"], "subject": "Hi", **fields}


def field_errors(response) -> dict:
    assert response.status_code == 400, response.content
    return response.json()["error"]["fields"]


def frozen(item: SendQueueItem, tenant, store):
    return parse_message(store.get(tenant.id, item.raw_blob_key))


# --- drafts --------------------------------------------------------------------------------


def test_create_a_draft_and_read_it(client_a, client_b, account_a, tasks, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.post(
            "/api/compose",
            body(
                account_a,
                to=['"Doe, Jane" <jane@example.com>', {"name": "Kai", "address": "kai@bücher.example"}],
                cc=["carl@example.com"],
                text_body="Hello",
            ),
            format="json",
        )

    assert response.status_code == 201, response.content
    item = response.json()
    assert item["status"] == "draft"
    assert item["account"] == str(account_a.id)
    assert item["to"] == [
        {"name": "Doe, Jane", "address": "jane@example.com"},
        {"name": "Kai", "address": "kai@xn--bcher-kva.example"},
    ]
    assert item["cc"] == [{"name": "", "address": "carl@example.com"}]
    assert item["outbox"] is None and item["message_id"] == "" and item["version"] == 1
    assert item["server_copy"] == {"saved": False, "version": 1, "server_version": 0, "error": ""}
    assert tasks == [("compose.tasks.save_draft_copy", [str(account_a.tenant_id), item["id"]], {})]
    assert client_a.get(f"/api/compose/{item['id']}").json() == item
    # Tenant B sees nothing of it.
    assert client_b.get(f"/api/compose/{item['id']}").status_code == 404
    assert client_b.get("/api/compose/").json()["results"] == []


def test_the_html_body_is_sanitised_on_the_way_in_keeping_remote_images(client_a, account_a):
    html = '<p onclick="x()">Hi<script>alert(1)</script><img src="https://img.example/a.png"></p>'
    response = client_a.post("/api/compose", body(account_a, html_body=html), format="json")

    stored = response.json()["html_body"]
    assert "script" not in stored and "onclick" not in stored and "alert" not in stored
    assert "https://img.example/a.png" in stored
    assert reload(Draft(id=response.json()["id"], tenant_id=account_a.tenant_id)).html_body == stored


def test_a_sanitiser_failure_is_a_400_not_an_empty_body(client_a, account_a, monkeypatch):
    import messages.sanitize as sanitize_module

    draft = DraftFactory(account=account_a, html_body="<p>before</p>")

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(sanitize_module.nh3, "clean", broken)
    response = client_a.patch(f"/api/compose/{draft.id}", {"html_body": "<p>My words</p>"}, format="json")

    assert "html_body" in field_errors(response)
    assert reload(draft).html_body == "<p>before</p>"
    response = client_a.post("/api/compose", body(account_a, html_body="<p>My words</p>"), format="json")
    assert "html_body" in field_errors(response)


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"subject": "Hi\r\nBcc: victim@example.com"}, ("subject",)),
        ({"subject": "Hi\nX-Evil: 1"}, ("subject",)),
        ({"to": ["Eve\r\nBcc: v@example.com <eve@example.com>"]}, ("to", "0")),
        ({"to": [{"name": "Eve\nBcc: v@example.com", "address": "eve@example.com"}]}, ("to", "0")),
        ({"cc": ["ok@example.com", "eve@example.com\r\nBcc: v@example.com"]}, ("cc", "1")),
        ({"bcc": [{"address": "eve@example.com\rX: y"}]}, ("bcc", "0")),
        ({"reply_to": ["a@example.com, b@example.com"]}, ("reply_to", "0")),
        ({"to": ["Doe, John <j@example.com>"]}, ("to", "0")),
        ({"to": ["no-at-sign"]}, ("to", "0")),
        ({"to": "jane@example.com"}, ("to",)),
        ({"to": [{"address": "a@example.com", "evil": "x"}]}, ("to", "0")),
        ({"to": [{"name": "\ud800", "address": "a@example.com"}]}, ("to", "0")),
        ({"subject": "a\x00b"}, ("subject",)),
        ({"send_at": "2001-01-01T00:00:00Z"}, ("send_at",)),
        ({"reply_all": "perhaps"}, ("reply_all",)),
        ({"account": "not-a-uuid"}, ("account",)),
    ],
)
def test_hostile_fields_are_field_errors(client_a, client_b, account_a, fields, where):
    payload = json.dumps(body(account_a, **fields))  # ASCII, escapes kept (a lone surrogate)
    response = client_a.post("/api/compose", payload, content_type="application/json")

    errors = field_errors(response)
    for key in where:
        errors = errors[key]
    assert errors
    with tenant_scope(account_a.tenant_id):
        assert not Draft.objects.exists()


HOSTILE_VALUES = [None, True, 1, -1, 1e308, "x" * 5000, "\x00", [], {}, [None], ["\x00"], {"$gt": 1}, "🙂"]


@pytest.mark.parametrize(
    "field",
    [
        "account",
        "to",
        "cc",
        "bcc",
        "reply_to",
        "subject",
        "text_body",
        "html_body",
        "in_reply_to",
        "reply_all",
        "forward_of",
        "send_at",
        "attachments",
        "id",
    ],
)
@pytest.mark.parametrize("path", ["/api/compose", "/api/compose/draft", "/api/compose/send"])
def test_no_value_makes_a_write_fail(client_a, account_a, tasks, field, path):
    client_a.raise_request_exception = False
    failed = []
    for value in HOSTILE_VALUES:
        response = client_a.post(
            path, json.dumps(body(account_a, **{field: value})), content_type="application/json"
        )
        if response.status_code >= 500:
            failed.append((repr(value)[:20], response.status_code))
    for raw in [b"\xff\xfe", b"{", b"[]", b'"x"', b"null", b'{"a":' * 1000]:
        if client_a.post(path, raw, content_type="application/json").status_code >= 500:
            failed.append((raw[:10], 500))
    assert failed == []


def test_the_account_must_be_the_users_own(client_a, tenant_a, admin_a, account_b):
    other_users = EmailAccountFactory(tenant=tenant_a, user=admin_a, smtp_hostname="smtp.example.com")
    for account_id in (other_users.id, account_b.id, uuid.uuid4()):
        response = client_a.post("/api/compose", {"account": str(account_id), "to": []}, format="json")
        assert response.status_code == 404, response.content
        assert response.json()["error"]["fields"] == {"account": ["Unknown account."]}
    # Not even a tenant admin composes from a member's account.
    admin = bearer_client(admin_a, tenant_a)
    other = EmailAccountFactory(tenant=tenant_a, user=UserFactory(username="carol"))
    assert admin.post("/api/compose", {"account": str(other.id)}, format="json").status_code == 404


def test_patch_changes_what_it_gives_and_bumps_the_version(
    client_a, client_b, account_a, tasks, django_capture_on_commit_callbacks
):
    draft = DraftFactory(account=account_a, subject="Old", text_body="old body")

    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.patch(
            f"/api/compose/{draft.id}", {"subject": "New", "bcc": ["b@example.com"]}, format="json"
        )

    assert response.status_code == 200, response.content
    item = response.json()
    assert (item["subject"], item["text_body"], item["version"]) == ("New", "old body", 2)
    assert item["bcc"] == [{"name": "", "address": "b@example.com"}]
    assert tasks == [("compose.tasks.save_draft_copy", [str(draft.tenant_id), str(draft.id)], {})]
    # The same values again: no new version.
    assert (
        client_a.patch(f"/api/compose/{draft.id}/", {"subject": "New"}, format="json").json()["version"] == 2
    )
    assert field_errors(client_a.patch(f"/api/compose/{draft.id}", {"subject": "a\r\nb"}, format="json"))
    # Another tenant: nothing to find, nothing changed.
    assert client_b.patch(f"/api/compose/{draft.id}", {"subject": "B"}, format="json").status_code == 404
    assert reload(draft).subject == "New"


def test_post_draft_creates_or_updates_by_id(client_a, account_a, draft_b):
    created = client_a.post("/api/compose/draft", body(account_a, subject="First"), format="json")
    assert created.status_code == 201, created.content
    draft_id = created.json()["id"]

    updated = client_a.post("/api/compose/draft/", {"id": draft_id, "subject": "Second"}, format="json")

    assert updated.status_code == 200, updated.content
    assert updated.json()["id"] == draft_id
    assert (updated.json()["subject"], updated.json()["version"]) == ("Second", 2)
    assert updated.json()["to"] == created.json()["to"]
    # Tenant B's draft by id, from tenant A: not found, not created.
    response = client_a.post("/api/compose/draft", {"id": str(draft_b.id), "subject": "x"}, format="json")
    assert response.status_code == 404
    assert reload(draft_b).subject != "x"


def test_delete_hides_the_draft_and_queues_its_removal(
    client_a, client_b, account_a, tasks, django_capture_on_commit_callbacks
):
    draft = DraftFactory(account=account_a)
    assert client_b.delete(f"/api/compose/{draft.id}").status_code == 404

    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.delete(f"/api/compose/{draft.id}")

    assert response.status_code == 204
    assert reload(draft).is_deleted
    assert tasks == [("compose.tasks.save_draft_copy", [str(draft.tenant_id), str(draft.id)], {})]
    assert client_a.get(f"/api/compose/{draft.id}").status_code == 404
    assert client_a.get("/api/compose").json()["results"] == []
    with tenant_scope(draft.tenant_id):
        assert AuditLog.objects.filter(action="compose.draft.delete", object_id=draft.id).exists()


@pytest.mark.parametrize("status", ["queued", "scheduled", "sending", "sent"])
def test_an_item_on_its_way_cannot_be_edited_or_deleted(client_a, account_a, status):
    draft = DraftFactory(account=account_a, status=status)

    assert client_a.patch(f"/api/compose/{draft.id}", {"subject": "x"}, format="json").status_code == 409
    assert client_a.delete(f"/api/compose/{draft.id}").status_code == 409
    assert client_a.post(f"/api/compose/{draft.id}/send").status_code == 409
    assert reload(draft).status == status and not reload(draft).is_deleted


# --- the list ------------------------------------------------------------------------------


def walk(client, url: str, link: str = "next") -> list[dict]:
    bodies = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content[:300]
        bodies.append(response.json())
        url = bodies[-1][link]
        assert len(bodies) < 200, "the list does not end"
    return bodies


def tied_drafts(account, count: int, **fields) -> list[Draft]:
    drafts = DraftFactory.build_batch(count, account=account, **fields)
    with tenant_scope(account.tenant_id):
        Draft.objects.bulk_create(drafts)
        Draft.objects.filter(id__in=[d.id for d in drafts]).update(created_at=SAME_SECOND)
    return drafts


def test_the_list_walks_ties_to_its_end_both_ways(client_a, account_a, account_b):
    mine = tied_drafts(account_a, 45)
    tied_drafts(account_b, 10)  # tenant B's, the very same second
    with tenant_scope(account_a.tenant_id):
        Draft.objects.filter(id=mine[0].id).update(is_deleted=True)

    pages = walk(client_a, "/api/compose/?page_size=7")

    ids = [item["id"] for page in pages for item in page["results"]]
    expected = sorted((str(d.id) for d in mine[1:]), reverse=True)  # newest first, ties by id
    assert ids == expected
    back = [pages[-1], *walk(client_a, pages[-1]["previous"], link="previous")]
    assert [item["id"] for page in reversed(back) for item in page["results"]] == ids


def test_the_list_filters_by_status_and_account(client_a, user_a, account_a, tenant_a):
    second = EmailAccountFactory(tenant=tenant_a, user=user_a, smtp_hostname="smtp.example.com")
    draft = DraftFactory(account=account_a)
    queued = DraftFactory(account=account_a, status="queued")
    other = DraftFactory(account=second)

    def ids(query: str) -> set[str]:
        response = client_a.get(f"/api/compose/?{query}")
        assert response.status_code == 200, response.content
        return {item["id"] for item in response.json()["results"]}

    assert ids("") == {str(draft.id), str(queued.id), str(other.id)}
    assert ids("status=queued") == {str(queued.id)}
    assert ids(f"account={second.id}") == {str(other.id)}
    assert ids(f"status=draft&account={account_a.id}") == {str(draft.id)}
    assert client_a.get("/api/compose/?status=nope").status_code == 400
    assert client_a.get("/api/compose/?account=nope").status_code == 400


def test_the_list_reads_a_page_in_a_fixed_number_of_queries(client_a, account_a, django_assert_num_queries):
    sent = FolderFactory(account=account_a, name="Sent", type="sent")

    def add(n: int) -> None:
        for _ in range(n):
            draft = DraftFactory(
                account=account_a, status="sent", message_id=f"<{uuid.uuid4().hex}@example.com>"
            )
            DraftAttachmentFactory(draft=draft)
            with tenant_scope(account_a.tenant_id):
                SendQueueItem.objects.create(
                    tenant_id=draft.tenant_id,
                    draft=draft,
                    account=account_a,
                    message_id=draft.message_id,
                    raw_blob_key="0" * 64,
                    size_bytes=1,
                    envelope_from=account_a.email_address,
                    recipients=["reader@example.com"],
                )
            MessageFactory(folder=sent, message_id=draft.message_id.strip("<>"))

    for n in (2, 8):
        add(n)
        # 5 of the test's savepoint, the tenant scope and the membership; the
        # page with its outbox rows, the attachments, the Sent copies.
        with django_assert_num_queries(8):
            response = client_a.get("/api/compose/")
        results = response.json()["results"]
        assert all(item["sent_message"] and item["outbox"] and item["attachments"] for item in results)


# --- attachments ---------------------------------------------------------------------------


def upload(client, draft_id, data: bytes, name: str = "notes.txt", **extra):
    from django.core.files.uploadedfile import SimpleUploadedFile

    payload = {"file": SimpleUploadedFile(name, data, content_type="text/plain"), **extra}
    return client.post(f"/api/compose/{draft_id}/attachments", payload, format="multipart")


def test_upload_and_remove_an_attachment(client_a, client_b, account_a, blob_store):
    draft = DraftFactory(account=account_a)

    response = upload(client_a, draft.id, b"some notes")

    assert response.status_code == 201, response.content
    attachment = response.json()
    assert (attachment["filename"], attachment["content_type"], attachment["size"]) == (
        "notes.txt",
        "text/plain",
        10,
    )
    with tenant_scope(account_a.tenant_id):
        stored = DraftAttachment.objects.get(id=attachment["id"])
    assert blob_store.get(account_a.tenant_id, stored.blob_key) == b"some notes"
    item = client_a.get(f"/api/compose/{draft.id}").json()
    assert item["attachments"] == [attachment] and item["version"] == 2
    # Tenant B: neither the draft nor the attachment.
    assert upload(client_b, draft.id, b"x").status_code == 404
    assert client_b.delete(f"/api/compose/{draft.id}/attachments/{attachment['id']}").status_code == 404

    assert client_a.delete(f"/api/compose/{draft.id}/attachments/{attachment['id']}/").status_code == 204
    assert client_a.get(f"/api/compose/{draft.id}").json()["attachments"] == []
    assert client_a.delete(f"/api/compose/{draft.id}/attachments/{attachment['id']}").status_code == 404


def test_an_upload_over_the_message_limit_is_413(client_a, account_a, blob_store, settings):
    settings.COMPOSE_MAX_MESSAGE_BYTES = 100
    draft = DraftFactory(account=account_a, text_body="x" * 40, html_body="")

    assert upload(client_a, draft.id, b"y" * 60).status_code == 201
    response = upload(client_a, draft.id, b"z")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert "file" in response.json()["error"]["fields"]
    # The bodies count too: a patch over the limit is a 400.
    assert "attachments" in field_errors(
        client_a.patch(f"/api/compose/{draft.id}", {"text_body": "x" * 41}, format="json")
    )


class CountingInput:
    """A request body that counts what the server reads of it."""

    def __init__(self, data: bytes):
        self.data, self.position = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size is None or size < 0 else self.position + size
        chunk = self.data[self.position : end]
        self.position += len(chunk)
        return chunk

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


def multipart(parts: list[tuple[dict[str, str], bytes]]) -> tuple[bytes, str]:
    boundary = "BoUnDaRy"
    chunks = []
    for headers, data in parts:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        chunks.append(f"--{boundary}\r\n{lines}\r\n".encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def stored_nothing(draft, blob_store) -> bool:
    with tenant_scope(draft.tenant_id):
        attachments = DraftAttachment.objects.filter(draft_id=draft.id).exists()
    return not attachments and not list(blob_store.blobs(draft.tenant_id)) and reload(draft).version == 1


def test_an_upload_over_the_limit_is_refused_before_its_body_is_read(
    client_a, account_a, blob_store, settings
):
    settings.COMPOSE_MAX_MESSAGE_BYTES = 100_000
    draft = DraftFactory(account=account_a, text_body="", html_body="")
    data, content_type = multipart(
        [({"Content-Disposition": 'form-data; name="file"; filename="big.bin"'}, b"x" * 5_000_000)]
    )
    body_input = CountingInput(data)

    response = client_a.generic(
        "POST",
        f"/api/compose/{draft.id}/attachments",
        data,
        content_type=content_type,
        **{"wsgi.input": body_input},
    )

    assert response.status_code == 413, response.content
    assert "file" in response.json()["error"]["fields"]
    assert body_input.position < 100_000  # the 5 MB were neither read nor spooled
    assert stored_nothing(draft, blob_store)


def test_an_upload_is_counted_as_it_arrives_whatever_it_declares(client_a, account_a, blob_store, settings):
    settings.COMPOSE_MAX_MESSAGE_BYTES = 1000
    draft = DraftFactory(account=account_a, text_body="", html_body="")
    # The part says it is one byte long; the request's length is within the
    # limit and the multipart overhead allowed for.
    data, content_type = multipart(
        [
            (
                {
                    "Content-Disposition": 'form-data; name="file"; filename="liar.bin"',
                    "Content-Length": "1",
                },
                b"y" * 5000,
            )
        ]
    )
    body_input = CountingInput(data)

    response = client_a.generic(
        "POST",
        f"/api/compose/{draft.id}/attachments",
        data,
        content_type=content_type,
        **{"wsgi.input": body_input},
    )

    assert response.status_code == 413, response.content
    assert stored_nothing(draft, blob_store)
    # Within the limit it is stored, at its real size.
    response = upload(client_a, draft.id, b"z" * 1000)
    assert response.status_code == 201 and response.json()["size"] == 1000


def test_a_draft_has_at_most_max_attachments(client_a, account_a, blob_store, settings, original):
    settings.COMPOSE_MAX_ATTACHMENTS = 2
    draft = DraftFactory(account=account_a)
    assert [upload(client_a, draft.id, b"%d" % n).status_code for n in range(2)] == [201, 201]

    assert "file" in field_errors(upload(client_a, draft.id, b"3"))
    with tenant_scope(account_a.tenant_id):
        assert DraftAttachment.objects.filter(draft_id=draft.id).count() == 2
    # A forward copies at most as many (empty files are files too).
    settings.COMPOSE_MAX_ATTACHMENTS = 1
    AttachmentFactory(
        message=original,
        filename="b.txt",
        size_bytes=0,
        content_hash=blob_store.put(account_a.tenant_id, b""),
    )
    response = client_a.post(
        "/api/compose", {"account": str(account_a.id), "forward_of": str(original.id)}, format="json"
    )
    assert response.status_code == 201 and len(response.json()["attachments"]) == 1


def test_a_file_name_cannot_inject_a_header(client_a, account_a, blob_store):
    draft = DraftFactory(account=account_a)

    response = upload(client_a, draft.id, b"x", filename="a.txt\r\nBcc: v@example.com")
    assert "filename" in field_errors(response)
    # Multipart's own file name: Django drops control characters from it.
    response = upload(client_a, draft.id, b"x", name="b\r\n.txt")
    assert response.status_code == 201 and "\r" not in response.json()["filename"]


def test_an_upload_needs_a_file_and_multipart(client_a, account_a):
    draft = DraftFactory(account=account_a)
    assert "file" in field_errors(
        client_a.post(f"/api/compose/{draft.id}/attachments", {}, format="multipart")
    )
    assert client_a.post(f"/api/compose/{draft.id}/attachments", {}, format="json").status_code == 415


def test_attachments_in_a_body_are_the_uploads_to_keep(client_a, account_a, draft_b):
    draft = DraftFactory(account=account_a)
    keep, drop = DraftAttachmentFactory(draft=draft), DraftAttachmentFactory(draft=draft)
    other = DraftAttachmentFactory(draft=draft_b)

    response = client_a.patch(f"/api/compose/{draft.id}", {"attachments": [str(keep.id)]}, format="json")

    assert response.status_code == 200
    assert [a["id"] for a in response.json()["attachments"]] == [str(keep.id)]
    with tenant_scope(account_a.tenant_id):
        assert not DraftAttachment.objects.filter(id=drop.id).exists()
    # Another draft's (another tenant's) upload is unknown here.
    response = client_a.patch(f"/api/compose/{draft.id}", {"attachments": [str(other.id)]}, format="json")
    assert response.status_code == 404 and "attachments" in response.json()["error"]["fields"]
    # A new draft has no uploads yet.
    response = client_a.post("/api/compose", body(account_a, attachments=[str(keep.id)]), format="json")
    assert response.status_code == 404


# --- replies and forwards ------------------------------------------------------------------


@pytest.fixture
def original(account_a, blob_store):
    inbox = FolderFactory(account=account_a, name="INBOX", type="inbox")
    message = MessageFactory(
        folder=inbox,
        message_id="orig-1@example.org",
        references=["root@example.org"],
        from_address="sam@example.org",
        from_name="Sam Sender",
        to=[
            {"name": "Alice", "address": "ALICE@example.com"},
            {"name": "Carol", "address": "carol@example.org"},
        ],
        cc=[{"name": "Dave", "address": "dave@example.org"}],
        subject="Re: Plans",
        text_body="Shall we meet?\n",
        html_body="<p>Shall we meet?</p>",
    )
    data = b"%PDF-1.4 plans"
    AttachmentFactory(
        message=message,
        filename="plans.pdf",
        mime_type="application/pdf",
        size_bytes=len(data),
        content_hash=blob_store.put(account_a.tenant_id, data),
    )
    AttachmentFactory(message=message, filename="logo.png", is_inline=True, content_id="<logo>")
    return message


def test_reply_builds_recipients_subject_headers_and_quote(client_a, account_a, original):
    response = client_a.post(
        "/api/compose", {"account": str(account_a.id), "in_reply_to": str(original.id)}, format="json"
    )

    assert response.status_code == 201, response.content
    item = response.json()
    assert [m["address"] for m in item["to"]] == ["sam@example.org"]
    assert item["cc"] == []
    assert item["subject"] == "Re: Plans"  # not "Re: Re: Plans"
    assert item["in_reply_to"] == str(original.id)
    assert item["in_reply_to_header"] == "<orig-1@example.org>"
    assert item["references_header"] == "<root@example.org> <orig-1@example.org>"
    assert "Shall we meet?" in item["text_body"]
    assert "Shall we meet?" in item["html_body"]
    assert item["attachments"] == []


def test_reply_all_leaves_out_the_users_own_addresses_and_the_body_wins(client_a, account_a, original):
    response = client_a.post(
        "/api/compose",
        {
            "account": str(account_a.id),
            "in_reply_to": str(original.id),
            "reply_all": True,
            "text_body": "Yes.",
        },
        format="json",
    )

    item = response.json()
    addresses = {m["address"] for m in item["to"] + item["cc"]}
    assert addresses == {"sam@example.org", "carol@example.org", "dave@example.org"}
    assert item["text_body"] == "Yes."
    assert item["reply_all"] is True


def test_forward_copies_the_attachments_and_says_fwd(client_a, account_a, original, blob_store):
    response = client_a.post(
        "/api/compose",
        {"account": str(account_a.id), "forward_of": str(original.id), "to": ["x@example.net"]},
        format="json",
    )

    assert response.status_code == 201, response.content
    item = response.json()
    assert item["subject"] == "Fwd: Re: Plans"
    assert [m["address"] for m in item["to"]] == ["x@example.net"]
    assert item["forward_of"] == str(original.id)
    assert [(a["filename"], a["content_type"]) for a in item["attachments"]] == [
        ("plans.pdf", "application/pdf")
    ]
    with tenant_scope(account_a.tenant_id):
        copied = DraftAttachment.objects.get(draft_id=item["id"])
    assert blob_store.get(account_a.tenant_id, copied.blob_key) == b"%PDF-1.4 plans"


def test_no_reply_or_forward_of_another_tenants_or_members_message(
    client_a, tenant_a, admin_a, account_a, account_b
):
    theirs = MessageFactory(folder=FolderFactory(account=account_b))
    colleagues = MessageFactory(
        folder=FolderFactory(account=EmailAccountFactory(tenant=tenant_a, user=admin_a))
    )
    gone = MessageFactory(folder=FolderFactory(account=account_a), is_deleted=True)
    for message in (theirs, colleagues, gone):
        for field in ("in_reply_to", "forward_of"):
            response = client_a.post(
                "/api/compose", {"account": str(account_a.id), field: str(message.id)}, format="json"
            )
            assert response.status_code == 404, response.content
            assert response.json()["error"]["fields"] == {field: ["Unknown message."]}
            assert message.subject not in response.content.decode()
    both = {"account": str(account_a.id), "in_reply_to": str(gone.id), "forward_of": str(gone.id)}
    assert "forward_of" in field_errors(client_a.post("/api/compose", both, format="json"))


def sent_parts(item: SendQueueItem, tenant, store) -> list[str]:
    """The text of every body part of the frozen message (the text part,
    and the HTML part when there is one)."""
    parsed = frozen(item, tenant, store)
    return [part for part in (parsed.text_body, parsed.html_body) if part]


@pytest.mark.parametrize("field", ["in_reply_to", "forward_of"])
@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"text_body": "Typed as text."}, "Typed as text."),
        ({"html_body": "<p>Typed as <b>HTML</b>.</p>"}, "Typed as"),
    ],
)
def test_a_reply_or_forward_sends_the_users_words_in_every_part(
    client_a, account_a, original, blob_store, field, given, words
):
    payload = {"account": str(account_a.id), field: str(original.id), "to": ["x@example.net"], **given}

    response = client_a.post("/api/compose/send", payload, format="json")

    assert response.status_code == 202, response.content
    parts = sent_parts(outbox_of(response.json()["id"], account_a.tenant), account_a.tenant, blob_store)
    assert parts and all(words in part for part in parts), parts


def test_patching_one_body_of_a_reply_drops_the_quote_in_the_other(client_a, account_a, original, blob_store):
    draft = client_a.post(
        "/api/compose", {"account": str(account_a.id), "in_reply_to": str(original.id)}, format="json"
    ).json()
    assert "Shall we meet?" in draft["text_body"] and "Shall we meet?" in draft["html_body"]

    patched = client_a.patch(f"/api/compose/{draft['id']}", {"text_body": "Yes, Tuesday."}, format="json")

    assert patched.status_code == 200 and patched.json()["html_body"] == ""
    assert client_a.post(f"/api/compose/{draft['id']}/send").status_code == 202
    parts = sent_parts(outbox_of(draft["id"], account_a.tenant), account_a.tenant, blob_store)
    assert parts and all("Yes, Tuesday." in part for part in parts), parts
    # Both bodies given: both kept as given.
    both = client_a.post(
        "/api/compose",
        {
            "account": str(account_a.id),
            "in_reply_to": str(original.id),
            "text_body": "T",
            "html_body": "<p>H</p>",
        },
        format="json",
    ).json()
    assert (both["text_body"], both["html_body"]) == ("T", "<p>H</p>")


def test_the_reply_cannot_change_later(client_a, account_a, original):
    draft = client_a.post(
        "/api/compose", {"account": str(account_a.id), "in_reply_to": str(original.id)}, format="json"
    ).json()
    response = client_a.patch(f"/api/compose/{draft['id']}", {"in_reply_to": None}, format="json")
    assert "in_reply_to" in field_errors(response)
    same = client_a.patch(
        f"/api/compose/{draft['id']}", {"in_reply_to": str(original.id), "subject": "Re: x"}, format="json"
    )
    assert same.status_code == 200


# --- sending -------------------------------------------------------------------------------


def test_send_freezes_the_message_and_queues_it(
    client_a, client_b, account_a, blob_store, tasks, django_capture_on_commit_callbacks
):
    draft = DraftFactory(
        account=account_a,
        to=[{"name": "Rita Reader", "address": "rita@example.com"}],
        bcc=[{"name": "", "address": "hidden@example.com"}],
        subject="Grüße",
        text_body="Hello Rita\n",
    )
    DraftAttachmentFactory(
        draft=draft, filename="n.txt", size_bytes=5, blob_key=blob_store.put(draft.tenant_id, b"notes")
    )
    assert client_b.post(f"/api/compose/{draft.id}/send").status_code == 404

    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.post(f"/api/compose/{draft.id}/send")

    assert response.status_code == 202, response.content
    item = response.json()
    assert item["status"] == "queued"
    assert item["message_id"].startswith("<") and item["message_id"].endswith("@example.com>")
    assert item["outbox"]["attempts"] == 0 and item["outbox"]["recipients"] == []
    assert item["sent_message"] is None
    [(name, kwargs, options)] = tasks
    token = kwargs.pop("drain")  # the account's drain mark: this task hands it over
    assert (name, kwargs, options) == (
        "compose.tasks.send",
        {"tenant_id": str(draft.tenant_id), "draft_id": str(draft.id), "account_id": str(account_a.id)},
        {"countdown": None},
    )
    assert len(token) == 32
    queued = outbox_of(draft.id, account_a.tenant)
    assert queued.recipients == ["rita@example.com", "hidden@example.com"]
    assert queued.envelope_from == "alice@example.com"
    assert queued.message_id == item["message_id"]
    parsed = frozen(queued, account_a.tenant, blob_store)
    assert parsed.subject == "Grüße"
    assert parsed.message_id == item["message_id"].strip("<>")
    assert parsed.from_address == "alice@example.com" and parsed.from_name == "Alice Example"
    assert [a["address"] for a in parsed.to] == ["rita@example.com"]
    assert parsed.bcc == []  # never in the headers
    assert [a.filename for a in parsed.attachments] == ["n.txt"]
    with tenant_scope(account_a.tenant_id):
        audit = AuditLog.objects.get(action="compose.send.queued", object_id=draft.id)
    assert audit.changes["recipients"] == 2 and "Hello" not in json.dumps(audit.changes)


def test_html_only_gets_a_text_alternative(client_a, account_a, blob_store):
    draft = DraftFactory(account=account_a, text_body="", html_body="<p>Only <b>HTML</b></p>")
    assert client_a.post(f"/api/compose/{draft.id}/send").status_code == 202
    parsed = frozen(outbox_of(draft.id, account_a.tenant), account_a.tenant, blob_store)
    assert "Only HTML" in parsed.text_body


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"to": [], "cc": [], "bcc": []}, "to"),
        ({"to": [{"name": "", "address": f"r{i}@example.com"} for i in range(101)]}, "to"),
    ],
)
def test_send_refuses_no_recipient_or_too_many(client_a, account_a, fields, field):
    draft = DraftFactory(account=account_a, **fields)
    assert field in field_errors(client_a.post(f"/api/compose/{draft.id}/send"))
    assert reload(draft).status == "draft"


def test_a_disabled_account_cannot_send(client_a, tenant_a, user_a, tasks):
    account = EmailAccountFactory(tenant=tenant_a, user=user_a, smtp_hostname="s", is_enabled=False)
    draft = DraftFactory(account=account)

    errors = field_errors(client_a.post(f"/api/compose/{draft.id}/send"))

    assert "disabled" in errors["account"][0]
    assert reload(draft).status == "draft" and tasks == []
    with tenant_scope(tenant_a.id):
        assert not SendQueueItem.objects.exists()


def test_send_needs_an_smtp_server(client_a, tenant_a, user_a):
    account = EmailAccountFactory(tenant=tenant_a, user=user_a, smtp_hostname="")
    draft = DraftFactory(account=account)
    errors = field_errors(client_a.post(f"/api/compose/{draft.id}/send"))
    assert "SMTP" in errors["account"][0]


def test_a_sender_with_an_internationalised_domain_goes_as_idna(client_a, tenant_a, user_a, blob_store):
    account = EmailAccountFactory(
        tenant=tenant_a,
        user=user_a,
        account_name="Kai",
        email_address="kai@Bücher.example",
        smtp_hostname="s",
    )
    draft = DraftFactory(account=account)

    assert client_a.post(f"/api/compose/{draft.id}/send").status_code == 202

    item = outbox_of(draft.id, tenant_a)
    assert item.envelope_from == "kai@xn--bcher-kva.example"
    raw = blob_store.get(tenant_a.id, item.raw_blob_key)
    assert raw.split(b"\r\n\r\n", 1)[0].isascii()  # no SMTPUTF8 needed for a domain
    assert parse_message(raw).from_address == "kai@xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("name", "shown"),
    [("Alice\tExample", "Alice Example"), ("Alice\r\n Example ", "Alice Example"), ("Al\x07ice", "")],
)
def test_an_account_name_with_control_characters_does_not_block_sending(
    client_a, tenant_a, user_a, blob_store, name, shown
):
    account = EmailAccountFactory(
        tenant=tenant_a, user=user_a, account_name=name, email_address="al@example.com", smtp_hostname="s"
    )
    draft = DraftFactory(account=account)

    response = client_a.post(f"/api/compose/{draft.id}/send")

    assert response.status_code == 202, response.content
    parsed = frozen(outbox_of(draft.id, tenant_a), tenant_a, blob_store)
    assert (parsed.from_name, parsed.from_address) == (shown, "al@example.com")


def test_send_at_schedules_with_an_eta(client_a, account_a, tasks, django_capture_on_commit_callbacks):
    when = timezone.now() + datetime.timedelta(minutes=30)
    draft = client_a.post("/api/compose", body(account_a, send_at=when.isoformat()), format="json").json()

    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.post(f"/api/compose/{draft['id']}/send")

    assert response.json()["status"] == "scheduled"
    assert tasks[-1][0] == "compose.tasks.send" and tasks[-1][2]["eta"] == when
    assert outbox_of(draft["id"], account_a.tenant).next_attempt_at == when


def test_a_send_at_past_the_eta_horizon_is_left_to_the_dispatcher(
    client_a, account_a, tasks, django_capture_on_commit_callbacks
):
    """An ETA task waits in Redis unacknowledged; past its visibility timeout
    (an hour by default) Redis hands it to another worker, and again. A send
    later than 50 minutes away queues no task: the dispatcher queues it."""
    when = timezone.now() + datetime.timedelta(hours=2)
    draft = client_a.post("/api/compose", body(account_a, send_at=when.isoformat()), format="json").json()
    tasks.clear()

    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.post(f"/api/compose/{draft['id']}/send")

    assert response.json()["status"] == "scheduled" and tasks == []
    assert outbox_dispatch_due(now=when - datetime.timedelta(seconds=30)) == 0
    assert outbox_dispatch_due(now=when + datetime.timedelta(seconds=1)) == 1
    assert [(name, kwargs) for name, _, kwargs in tasks] == [("compose.tasks.send", {"countdown": None})]
    assert outbox_dispatch_due(now=when + datetime.timedelta(seconds=61)) == 0  # once


def test_a_sends_answer_is_the_item_as_stored_without_reading_it_back(
    client_a, account_a, tasks, django_assert_max_num_queries
):
    """The 202 is built from what the send wrote (no re-read of the draft,
    its outbox and attachments, no look for a Sent copy a new Message-ID
    cannot have): 20 statements where it took 27, and the same item as GET."""
    with django_assert_max_num_queries(20):
        response = client_a.post(
            "/api/compose/send", body(account_a, cc=["Carl <carl@example.com>"]), format="json"
        )
    assert response.status_code == 202, response.content

    item = response.json()
    assert item == client_a.get(f"/api/compose/{item['id']}").json()
    assert item["status"] == "queued" and item["attachments"] == [] and item["outbox"]["attempts"] == 0


def test_sends_of_one_account_queue_one_task_while_it_is_queued_or_running(
    client_a, account_a, tenant_a, user_a, tasks, django_capture_on_commit_callbacks
):
    """The first send of an account queues a task that drains the account;
    the sends after it, while that task is queued or running, queue none
    (`compose.outbox.send_request`). Another account has a task of its own."""
    other = EmailAccountFactory(tenant=tenant_a, user=user_a, smtp_hostname="smtp.example.com")
    for account in (account_a, account_a, account_a, other):
        with django_capture_on_commit_callbacks(execute=True):
            response = client_a.post("/api/compose/send", body(account), format="json")
        assert response.status_code == 202 and response.json()["status"] == "queued"

    assert [(kwargs["account_id"], options) for _, kwargs, options in tasks] == [
        (str(account_a.id), {"countdown": None}),
        (str(other.id), {"countdown": None}),
    ]


def test_a_task_that_cannot_be_queued_leaves_the_item_to_the_dispatcher(
    client_a, account_a, monkeypatch, caplog, django_capture_on_commit_callbacks
):
    def broker_down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(current_app, "send_task", broker_down)
    draft = DraftFactory(account=account_a)

    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.post(f"/api/compose/{draft.id}/send")

    assert response.status_code == 202 and reload(draft).status == "queued"
    assert any("compose.tasks.send" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def test_the_one_shot_send_and_the_alias(
    client_a, client_b, account_a, draft_b, tasks, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.post("/api/compose/send", body(account_a, text_body="One shot"), format="json")

    assert response.status_code == 202, response.content
    assert response.json()["status"] == "queued"
    assert [name for name, _, _ in tasks] == ["compose.tasks.send"]  # no Drafts copy of it
    # Nothing queued without a recipient: no draft left behind either.
    assert "to" in field_errors(client_a.post("/api/compose/send/", body(account_a, to=[]), format="json"))
    with tenant_scope(account_a.tenant_id):
        assert Draft.objects.count() == 1

    draft = DraftFactory(account=account_a)
    assert client_a.post(f"/api/compose/send/{draft.id}").status_code == 202
    assert reload(draft).status == "queued"
    assert client_a.post(f"/api/compose/send/{draft_b.id}/").status_code == 404
    assert reload(draft_b).status == "draft"


def test_cancel_a_queued_send_then_send_again_with_the_same_message_id(client_a, client_b, account_a):
    draft = DraftFactory(account=account_a)
    first = client_a.post(f"/api/compose/{draft.id}/send").json()
    assert client_b.post(f"/api/compose/{draft.id}/cancel").status_code == 404

    response = client_a.post(f"/api/compose/{draft.id}/cancel")

    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert client_a.post(f"/api/compose/{draft.id}/cancel").status_code == 409
    again = client_a.post(f"/api/compose/{draft.id}/send").json()
    assert again["status"] == "queued" and again["message_id"] == first["message_id"]
    with tenant_scope(account_a.tenant_id):
        assert AuditLog.objects.filter(action="compose.send.cancelled", object_id=draft.id).count() == 1


@pytest.mark.parametrize("status", ["draft", "sending", "sent", "failed", "uncertain"])
def test_only_a_scheduled_or_queued_send_can_be_cancelled(client_a, account_a, status):
    draft = DraftFactory(account=account_a, status=status)
    assert client_a.post(f"/api/compose/{draft.id}/cancel").status_code == 409
    assert reload(draft).status == status


@pytest.mark.parametrize("status", ["failed", "uncertain"])
def test_an_explicit_resend_keeps_the_message_id_and_starts_the_attempts_afresh(
    client_a, account_a, status, blob_store
):
    draft = DraftFactory(account=account_a)
    first = client_a.post(f"/api/compose/{draft.id}/send").json()
    with tenant_scope(account_a.tenant_id):
        Draft.objects.filter(id=draft.id).update(status=status)
        SendQueueItem.objects.filter(draft_id=draft.id).update(
            attempts=3, phase="data", error="lost", recipient_results={"r@example.com": {"status": "refused"}}
        )

    again = client_a.post(f"/api/compose/{draft.id}/send").json()

    assert again["status"] == "queued" and again["message_id"] == first["message_id"]
    # A full retry budget (and backoff from its start); the history is in the audit log.
    assert again["outbox"]["attempts"] == 0 and again["outbox"]["error"] == ""
    item = outbox_of(draft.id, account_a.tenant)
    assert (item.phase, item.recipient_results) == ("", {})
    with tenant_scope(account_a.tenant_id):
        audit = AuditLog.objects.filter(action="compose.send.queued", object_id=draft.id).latest("created_at")
    assert audit.changes["resend"] is True and audit.changes["previous_attempts"] == 3
    assert frozen(item, account_a.tenant, blob_store).message_id == first["message_id"].strip("<>")


def test_the_outbox_block_and_the_sent_copy(client_a, account_a):
    draft = DraftFactory(account=account_a)
    client_a.post(f"/api/compose/{draft.id}/send")
    with tenant_scope(account_a.tenant_id):
        Draft.objects.filter(id=draft.id).update(status="sent")
        item = SendQueueItem.objects.get(draft_id=draft.id)
        SendQueueItem.objects.filter(id=item.id).update(
            attempts=2,
            last_reply_code=250,
            last_reply="2.0.0 Ok: queued",
            recipient_results={
                "reader@example.com": {"status": "accepted", "code": 250, "reply": "2.1.5 Ok"}
            },
            sent_at=timezone.now(),
            sent_copy="appended",
        )
    stored = MessageFactory(
        folder=FolderFactory(account=account_a, name="Sent", type="sent"),
        message_id=item.message_id.strip("<>"),
    )
    MessageFactory(
        folder=FolderFactory(account=account_a, name="INBOX", type="inbox"),
        message_id=item.message_id.strip("<>"),
    )

    result = client_a.get(f"/api/compose/{draft.id}").json()

    assert result["status"] == "sent"
    assert result["outbox"]["last_reply"] == {"code": 250, "text": "2.0.0 Ok: queued"}
    assert result["outbox"]["recipients"] == [
        {"address": "reader@example.com", "status": "accepted", "code": 250, "text": "2.1.5 Ok"}
    ]
    assert result["outbox"]["sent_copy"] == "appended"
    assert result["sent_message"] == str(stored.id)


# --- idempotency ---------------------------------------------------------------------------


def test_the_same_key_and_body_answer_the_first_result(
    client_a, client_b, account_a, account_b, tasks, django_capture_on_commit_callbacks
):
    payload = body(account_a, text_body="Once")
    with django_capture_on_commit_callbacks(execute=True):
        first = client_a.post("/api/compose/send", payload, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
        second = client_a.post("/api/compose/send/", payload, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert len(tasks) == 1
    with tenant_scope(account_a.tenant_id):
        assert SendQueueItem.objects.count() == Draft.objects.count() == 1

    other = client_a.post(
        "/api/compose/send", body(account_a, text_body="Twice"), format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    # Keys are per user and tenant: tenant B's user may use the same one.
    theirs = client_b.post("/api/compose/send", body(account_b), format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]


def test_a_key_on_the_item_send_sends_once(client_a, account_a, tasks, django_capture_on_commit_callbacks):
    draft = DraftFactory(account=account_a)
    with django_capture_on_commit_callbacks(execute=True):
        first = client_a.post(f"/api/compose/{draft.id}/send", HTTP_IDEMPOTENCY_KEY="send-1")
        second = client_a.post(f"/api/compose/send/{draft.id}", HTTP_IDEMPOTENCY_KEY="send-1")

    assert first.status_code == second.status_code == 202  # not the 409 of sending a queued item
    assert first.json() == second.json()
    assert len(tasks) == 1
    other = DraftFactory(account=account_a)
    assert client_a.post(f"/api/compose/{other.id}/send", HTTP_IDEMPOTENCY_KEY="send-1").status_code == 422


def test_a_failed_request_does_not_keep_its_key(client_a, account_a):
    payload = body(account_a, to=[])
    assert (
        client_a.post("/api/compose/send", payload, format="json", HTTP_IDEMPOTENCY_KEY="k").status_code
        == 400
    )
    with tenant_scope(account_a.tenant_id):
        assert not IdempotencyKey.objects.exists()
    fixed = body(account_a)
    assert (
        client_a.post("/api/compose/send", fixed, format="json", HTTP_IDEMPOTENCY_KEY="k").status_code == 202
    )


def test_a_key_expires_after_a_day(client_a, account_a):
    payload = body(account_a)
    first = client_a.post("/api/compose/send", payload, format="json", HTTP_IDEMPOTENCY_KEY="old")
    with tenant_scope(account_a.tenant_id):
        IdempotencyKey.objects.update(created_at=timezone.now() - datetime.timedelta(hours=25))

    second = client_a.post("/api/compose/send", payload, format="json", HTTP_IDEMPOTENCY_KEY="old")

    assert second.status_code == 202 and second.json()["id"] != first.json()["id"]


def test_the_dispatcher_purges_expired_keys_of_every_tenant(client_a, client_b, account_a, account_b):
    from compose.tasks import dispatch_due_task

    for client, account in ((client_a, account_a), (client_b, account_b)):
        for key in ("old", "new"):
            response = client.post(
                "/api/compose/send", body(account), format="json", HTTP_IDEMPOTENCY_KEY=key
            )
            assert response.status_code == 202
        with tenant_scope(account.tenant_id):
            IdempotencyKey.objects.filter(key="old").update(
                created_at=timezone.now() - datetime.timedelta(hours=25)
            )

    assert dispatch_due_task() == {"queued": 0, "idempotency_keys_purged": 2}

    for account in (account_a, account_b):
        with tenant_scope(account.tenant_id):
            assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["new"]


@pytest.mark.parametrize("key", ["", "x" * 256, "bad\tkey", "ключ"])
def test_an_invalid_key_is_a_400(client_a, account_a, key):
    response = client_a.post("/api/compose/send", body(account_a), format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]["fields"]


# --- rate limits ---------------------------------------------------------------------------


def test_sends_over_the_user_limit_are_429_with_retry_after(
    client_a, client_b, account_a, account_b, settings
):
    settings.COMPOSE_RATE_LIMIT_USER = "2/m"
    for _ in range(2):
        assert client_a.post("/api/compose/send", body(account_a), format="json").status_code == 202

    response = client_a.post("/api/compose/send", body(account_a), format="json")

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 60
    draft = DraftFactory(account=account_a)
    assert client_a.post(f"/api/compose/{draft.id}/send").status_code == 429
    assert reload(draft).status == "draft"
    # Tenant B's user has a limit of their own.
    assert client_b.post("/api/compose/send", body(account_b), format="json").status_code == 202


def test_sends_over_the_tenant_limit_are_429(client_a, tenant_a, account_a, client_b, account_b, settings):
    settings.COMPOSE_RATE_LIMIT_TENANT = "3/m"
    colleague = UserFactory(username="carol")
    MembershipFactory(tenant=tenant_a, user=colleague)
    account_c = EmailAccountFactory(tenant=tenant_a, user=colleague, smtp_hostname="smtp.example.com")
    client_c = bearer_client(colleague, tenant_a)
    for client, account in ((client_a, account_a), (client_c, account_c), (client_a, account_a)):
        assert client.post("/api/compose/send", body(account), format="json").status_code == 202

    response = client_c.post("/api/compose/send", body(account_c), format="json")

    assert response.status_code == 429 and int(response["Retry-After"]) >= 1
    assert client_b.post("/api/compose/send", body(account_b), format="json").status_code == 202


def test_one_members_refused_sends_leave_the_tenant_quota_to_the_others(
    client_a, tenant_a, account_a, settings
):
    settings.COMPOSE_RATE_LIMIT_USER = "2/m"
    settings.COMPOSE_RATE_LIMIT_TENANT = "5/m"
    colleague = UserFactory(username="carol")
    MembershipFactory(tenant=tenant_a, user=colleague)
    account_c = EmailAccountFactory(tenant=tenant_a, user=colleague, smtp_hostname="smtp.example.com")
    client_c = bearer_client(colleague, tenant_a)

    codes = [client_a.post("/api/compose/send", body(account_a), format="json").status_code for _ in range(8)]

    assert codes == [202, 202] + [429] * 6
    # Alice's six refusals counted against nobody: Carol has her two, and
    # the tenant's fifth send is still free after them.
    assert [
        client_c.post("/api/compose/send", body(account_c), format="json").status_code for _ in range(3)
    ] == [
        202,
        202,
        429,
    ]


def test_a_tenants_own_send_limits_apply_over_the_settings(
    client_a, tenant_a, account_a, client_b, account_b, settings
):
    settings.COMPOSE_RATE_LIMIT_USER = "100/m"
    settings.COMPOSE_RATE_LIMIT_TENANT = "100/m"
    tenant_a.compose_rate_limit_user = "2/m"
    tenant_a.save(update_fields=["compose_rate_limit_user"])

    codes = [client_a.post("/api/compose/send", body(account_a), format="json").status_code for _ in range(3)]

    assert codes == [202, 202, 429]
    # Tenant B has no override: the setting's limit.
    assert [
        client_b.post("/api/compose/send", body(account_b), format="json").status_code for _ in range(3)
    ] == [202] * 3
    # The tenant's own tenant-wide limit too (a counter of its own: the
    # rate is part of django-ratelimit's key).
    tenant_a.compose_rate_limit_user = ""
    tenant_a.compose_rate_limit_tenant = "3/m"
    tenant_a.save(update_fields=["compose_rate_limit_user", "compose_rate_limit_tenant"])
    codes = [client_a.post("/api/compose/send", body(account_a), format="json").status_code for _ in range(4)]
    assert codes == [202, 202, 202, 429]


def test_invalid_sends_do_not_use_the_quota(client_a, account_a, draft_b, settings):
    settings.COMPOSE_RATE_LIMIT_USER = "2/m"
    sent = DraftFactory(account=account_a, status="sent")
    refused = [
        client_a.post("/api/compose/send", body(account_a, to=[]), format="json"),  # 400
        client_a.post("/api/compose/send", body(account_a, account=str(uuid.uuid4())), format="json"),  # 404
        client_a.post(f"/api/compose/{draft_b.id}/send"),  # 404: another tenant's
        client_a.post(f"/api/compose/{sent.id}/send"),  # 409
    ]
    assert [r.status_code for r in refused] == [400, 404, 404, 409]

    for _ in range(2):
        assert client_a.post("/api/compose/send", body(account_a), format="json").status_code == 202
    assert client_a.post("/api/compose/send", body(account_a), format="json").status_code == 429


# --- another tenant, everywhere ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/compose/{draft}"),
        ("patch", "/api/compose/{draft}"),
        ("delete", "/api/compose/{draft}"),
        ("post", "/api/compose/{draft}/send"),
        ("post", "/api/compose/send/{draft}"),
        ("post", "/api/compose/{draft}/cancel"),
        ("post", "/api/compose/{draft}/attachments"),
        ("delete", "/api/compose/{draft}/attachments/{attachment}"),
        ("post", "/api/v1/tenant-b/email_client/compose/{draft}/send"),
    ],
)
def test_another_tenants_items_are_404_everywhere(client_a, draft_b, method, path):
    attachment = DraftAttachmentFactory(draft=draft_b)
    url = path.format(draft=draft_b.id, attachment=attachment.id)
    for each in (url, url + "/"):
        response = getattr(client_a, method)(each, {"subject": "x"}, format="json")
        assert response.status_code == 404, (each, response.content)
    stored = reload(draft_b)
    assert (stored.status, stored.is_deleted, stored.version) == ("draft", False, 1)
    with tenant_scope(draft_b.tenant_id):
        assert DraftAttachment.objects.filter(id=attachment.id).exists()


def test_a_body_over_the_request_limit_is_a_4xx(client_a, account_a):
    client_a.raise_request_exception = False
    big = body(account_a, text_body="x" * (3 * 1024 * 1024))
    response = client_a.post("/api/compose", json.dumps(big), content_type="application/json")
    assert 400 <= response.status_code < 500
