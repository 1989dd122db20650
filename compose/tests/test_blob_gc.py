"""Blob garbage collection keeps what compose's rows refer to: a draft's
uploads and the frozen message of an outbox item (registered by
`ComposeConfig.ready()`, since the mail store may not import compose)."""

import os
import time

import pytest

from compose.models import Draft, DraftAttachment, SendQueueItem
from emailclient.core.tenancy import tenant_scope
from messages.blob_gc import blob_garbage_collect, blob_references_register
from messages.blobs import default_store

DAY = 86_400


def put_old(store, tenant_id, data: bytes) -> str:
    key = store.put(tenant_id, data)
    then = time.time() - 2 * DAY
    os.utime(store.path(tenant_id, key), (then, then))
    return key


@pytest.mark.django_db
def test_a_drafts_upload_and_a_queued_message_survive_collection(blobs, account_a, tenant_a, user_a):
    store = default_store()
    upload = put_old(store, tenant_a.id, b"an uploaded file")
    frozen = put_old(store, tenant_a.id, b"Subject: frozen\r\n\r\nbody\r\n")
    orphan = put_old(store, tenant_a.id, b"an upload of a draft deleted long ago")
    with tenant_scope(tenant_a.id):
        draft = Draft.objects.create(tenant=tenant_a, user=user_a, account=account_a, status="queued")
        DraftAttachment.objects.create(
            tenant=tenant_a,
            draft=draft,
            filename="a.txt",
            content_type="text/plain",
            size_bytes=16,
            blob_key=upload,
        )
        SendQueueItem.objects.create(
            tenant=tenant_a,
            draft=draft,
            account=account_a,
            message_id="<x@example.com>",
            raw_blob_key=frozen,
            size_bytes=10,
            envelope_from=account_a.email_address,
            recipients=["b@example.com"],
        )

    report = blob_garbage_collect(store=store, min_age=DAY)

    assert {blob.key for blob in store.blobs(tenant_a.id)} == {upload, frozen}
    assert (report.kept_referenced, report.removed) == (2, 1)
    assert not store.exists(tenant_a.id, orphan)


def test_registering_refuses_what_is_not_an_identifier():
    with pytest.raises(ValueError, match="identifier"):
        blob_references_register("email_drafts; DROP TABLE x", "blob_key")
