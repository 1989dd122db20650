"""Downloads: streamed from the blob store, a damaged blob a clear 500 in
the API's error shape, and signed attachment URLs bound to their user."""

import hashlib
import logging
import os
import runpy
import time
import tracemalloc
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.core import signing

from conftest import bearer_client
from emailclient.core.models import TenantMembership
from emailclient.core.tenancy import tenant_scope
from emailclient.core.tests.factories import MembershipFactory, UserFactory
from messages.downloads import TOKEN_SALT, attachment_token
from messages.tests.factories import AttachmentFactory, FolderFactory, MessageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def inbox_b(tenant_b, user_b):
    from accounts.tests.factories import EmailAccountFactory

    return FolderFactory(
        account=EmailAccountFactory(tenant=tenant_b, user=user_b), name="INBOX", type="inbox"
    )


def _attachment(folder, blobs, data: bytes, **kw):
    message = MessageFactory(folder=folder)
    return AttachmentFactory(message=message, content_hash=blobs.put(folder.tenant_id, data), **kw)


def _truncate(blobs, tenant_id, key):
    path = blobs.path(tenant_id, key)
    path.write_bytes(path.read_bytes()[:-9])


# --- A damaged blob ----------------------------------------------------------------------


def test_a_truncated_attachment_is_a_clear_500_with_its_key_logged(
    client_a, client_b, inbox_a, inbox_b, blobs, caplog
):
    attachment = _attachment(inbox_a, blobs, b"attachment bytes " * 100)
    sound = _attachment(inbox_b, blobs, b"attachment bytes " * 100)  # tenant B's copy of the same bytes
    _truncate(blobs, attachment.tenant_id, attachment.content_hash)
    caplog.set_level(logging.ERROR, logger="messages.blobs")

    response = client_a.get(f"/api/attachments/{attachment.id}/download")

    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "blob_damaged",
            "message": "The stored content is damaged; the operator has been told and can repair it.",
        }
    }
    assert any(attachment.content_hash in r.getMessage() for r in caplog.records)
    # The other tenant's blob of the same bytes is its own file, untouched.
    other = client_b.get(f"/api/attachments/{sound.id}/download")
    assert other.status_code == 200
    assert b"".join(other.streaming_content) == b"attachment bytes " * 100


def test_a_garbled_raw_message_is_a_clear_500(client_a, inbox_a, blobs):
    raw = b"From: a@example.com\r\nSubject: hi\r\n\r\n" + b"body line\r\n" * 500
    message = MessageFactory(folder=inbox_a, raw_blob_key=blobs.put(inbox_a.tenant_id, raw))
    path = blobs.path(inbox_a.tenant_id, message.raw_blob_key)
    stored = bytearray(path.read_bytes())
    stored[len(stored) // 2] ^= 0xFF
    path.write_bytes(bytes(stored))

    response = client_a.get(f"/api/messages/{message.id}/raw")

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "blob_damaged"


def test_a_damaged_blob_by_its_signed_url_is_a_clear_500(client_a, inbox_a, blobs, api_client):
    message = MessageFactory(folder=inbox_a)
    attachment = AttachmentFactory(
        message=message, content_hash=blobs.put(inbox_a.tenant_id, b"\x89PNG" * 50)
    )
    url = client_a.get(f"/api/messages/{message.id}/").json()["attachments"][0]["download_url"]
    _truncate(blobs, attachment.tenant_id, attachment.content_hash)

    response = api_client.get(url)

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "blob_damaged"


# --- Streaming -----------------------------------------------------------------------------


def test_a_50_mb_attachment_streams_without_being_read_whole(client_a, inbox_a, blobs):
    """The one slow test here (about 2 s): it proves the memory bound."""
    size = 50 * 1024 * 1024
    data = os.urandom(size)
    expected = hashlib.sha256(data).hexdigest()
    attachment = _attachment(inbox_a, blobs, data, size_bytes=size, mime_type="application/zip")
    del data

    tracemalloc.start()
    try:
        response = client_a.get(f"/api/attachments/{attachment.id}/download")
        assert response.status_code == 200
        assert int(response["Content-Length"]) == size
        digest, received = hashlib.sha256(), 0
        for chunk in response.streaming_content:
            digest.update(chunk)
            received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert received == size
    assert digest.hexdigest() == expected
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB while streaming 50 MB"


def test_an_attachment_that_compresses_a_thousandfold_streams_too(client_a, inbox_a, blobs):
    """20 MB of zeros is 20 KB on disk: it must not be inflated whole either."""
    size = 20 * 1024 * 1024
    attachment = _attachment(inbox_a, blobs, bytes(size), size_bytes=size)
    assert blobs.path(inbox_a.tenant_id, attachment.content_hash).stat().st_size < 1024 * 1024

    tracemalloc.start()
    try:
        response = client_a.get(f"/api/attachments/{attachment.id}/download")
        received = sum(len(chunk) for chunk in response.streaming_content)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert received == size
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB while streaming 20 MB of zeros"


# --- Signed URLs: bound to the user, minutes, re-checked ------------------------------------


@pytest.fixture
def signed(client_a, inbox_a, blobs):
    message = MessageFactory(folder=inbox_a)
    attachment = AttachmentFactory(message=message, content_hash=blobs.put(inbox_a.tenant_id, b"image"))
    url = client_a.get(f"/api/messages/{message.id}/").json()["attachments"][0]["download_url"]
    return SimpleNamespace(attachment=attachment, message=message, url=url)


def test_a_signed_url_opens_its_attachment_without_a_bearer_token(signed, api_client):
    response = api_client.get(signed.url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"image"


def test_a_signed_url_stops_working_when_its_user_leaves_the_tenant(signed, api_client, user_a, tenant_a):
    with tenant_scope(tenant_a.id):
        TenantMembership.objects.filter(tenant=tenant_a, user=user_a).delete()
    assert api_client.get(signed.url).status_code == 404


def test_a_signed_url_stops_working_when_its_user_is_deactivated(signed, api_client, user_a):
    user_a.is_active = False
    user_a.save(update_fields=["is_active"])
    assert api_client.get(signed.url).status_code == 404


def test_a_signed_url_stops_working_when_its_tenant_is_deactivated(signed, api_client, tenant_a):
    tenant_a.is_active = False
    tenant_a.save(update_fields=["is_active"])
    assert api_client.get(signed.url).status_code == 404


def test_a_signed_url_follows_what_its_user_may_see(api_client, tenant_a, user_a, inbox_a, blobs):
    # An admin's URL for a member's attachment stops working once the admin is a member.
    admin = UserFactory(username="ada")
    membership = MembershipFactory(tenant=tenant_a, user=admin, role="admin")
    message = MessageFactory(folder=inbox_a)
    AttachmentFactory(message=message, content_hash=blobs.put(inbox_a.tenant_id, b"x"))
    url = (
        bearer_client(admin, tenant_a)
        .get(f"/api/messages/{message.id}/")
        .json()["attachments"][0]["download_url"]
    )
    assert api_client.get(url).status_code == 200
    membership.role = "member"
    with tenant_scope(tenant_a.id):
        membership.save(update_fields=["role"])
    assert api_client.get(url).status_code == 404


def test_a_signed_url_is_the_users_not_a_colleagues(signed, api_client, tenant_a, user_a):
    # The same attachment id with a token of another user of the tenant, who may not see it.
    colleague = UserFactory(username="carl")
    MembershipFactory(tenant=tenant_a, user=colleague, role="member")
    url = f"/api/attachments/{signed.attachment.id}/download"

    def token(user):
        return attachment_token(tenant_id=tenant_a.id, user=user, attachment_id=signed.attachment.id)

    assert api_client.get(url, {"token": token(user_a)}).status_code == 200  # a well-made token
    assert api_client.get(url, {"token": token(colleague)}).status_code == 404


def test_a_signed_url_stops_working_when_its_user_changes_password(signed, api_client, user_a):
    """The token named the user but not their password: a URL taken by
    someone else kept working after the user changed it."""
    assert api_client.get(signed.url).status_code == 200
    user_a.set_password("a-new-password-0123")
    user_a.save(update_fields=["password"])
    assert api_client.get(signed.url).status_code == 404


def test_a_signed_url_without_the_password_fingerprint_is_refused(signed, api_client, tenant_a, user_a):
    # A token of the same salt as it was signed before this check: tenant, user, attachment only.
    token = signing.dumps(
        {"t": str(tenant_a.id), "u": str(user_a.pk), "a": str(signed.attachment.id)}, salt=TOKEN_SALT
    )
    response = api_client.get(f"/api/attachments/{signed.attachment.id}/download", {"token": token})
    assert response.status_code == 404


def test_a_signed_url_lives_minutes(signed, api_client, settings, monkeypatch):
    assert settings.ATTACHMENT_URL_MAX_AGE_SECONDS == 300
    assert api_client.get(signed.url).status_code == 200
    later = time.time() + settings.ATTACHMENT_URL_MAX_AGE_SECONDS + 1
    monkeypatch.setattr(signing.time, "time", lambda: later)  # the clock, not the code under test
    assert api_client.get(signed.url).status_code == 404


def test_an_hour_long_token_of_before_is_refused(signed, api_client, tenant_a):
    old = signing.dumps(
        {"t": str(tenant_a.id), "a": str(signed.attachment.id)}, salt="messages.attachment-download"
    )
    response = api_client.get(f"/api/attachments/{signed.attachment.id}/download", {"token": old})
    assert response.status_code == 404


def test_the_access_log_leaves_query_strings_out(tmp_path):
    """The gunicorn access line of a signed URL's request, made by gunicorn's
    own logger from deploy/gunicorn.conf.py: no token in it."""
    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    conf = runpy.run_path(str(settings.BASE_DIR / "deploy" / "gunicorn.conf.py"))
    config = Config()
    config.set("access_log_format", conf["access_log_format"])
    config.set("accesslog", str(tmp_path / "access.log"))
    logger = Logger(config)
    token = "eyJ0IjoiMSJ9:1vQx:SECRET-SIGNATURE"
    path = f"/api/attachments/{uuid.uuid4()}/download"
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": f"{path}?token={token}",
        "PATH_INFO": path,
        "QUERY_STRING": f"token={token}",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "192.0.2.1",
    }
    response = SimpleNamespace(status="200 OK", status_code=200, sent=5, response_length=5, headers=[])
    request = SimpleNamespace(headers=[])
    logger.access(response, request, environ, timedelta(milliseconds=3))
    for handler in logger.access_log.handlers:
        handler.flush()

    line = (tmp_path / "access.log").read_text()
    assert path in line
    assert "SECRET" not in line and "token" not in line
