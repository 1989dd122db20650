import os
import uuid

import pytest

from messages.blobs import BlobNotFound, BlobStore, blob_key


def test_blobs_are_content_addressed_compressed_and_per_tenant(tmp_path):
    store = BlobStore(tmp_path)
    tenant, other = uuid.uuid4(), uuid.uuid4()
    data = b"Subject: hi\r\n\r\n" + b"hello " * 1000
    key = store.put(tenant, data)
    assert key == blob_key(data)
    assert store.put(tenant, data) == key  # a second write is a no-op
    assert store.get(tenant, key) == data
    assert store.path(tenant, key).stat().st_size < len(data) / 5
    assert not store.exists(other, key)
    with pytest.raises(BlobNotFound):
        store.get(other, key)
    assert not list(tmp_path.rglob("*.tmp")), "no temporary file left behind"


@pytest.mark.parametrize("key", ["../../etc/passwd", "ab", "Z" * 64, ""])
def test_keys_that_are_not_digests_are_refused(tmp_path, key):
    with pytest.raises(ValueError, match="SHA-256"):
        BlobStore(tmp_path).path(uuid.uuid4(), key)


@pytest.mark.parametrize("data", [b"compressible line\r\n" * 300_000, os.urandom(3 * 1024 * 1024 + 7)])
def test_large_blobs_round_trip_compressed_or_stored(tmp_path, data):
    store = BlobStore(tmp_path)
    tenant = uuid.uuid4()
    key = store.put(tenant, data)
    assert store.get(tenant, key) == data
    size = store.path(tenant, key).stat().st_size
    if data.startswith(b"compressible"):
        assert size < len(data) / 5
    else:
        assert size < len(data) * 1.01  # stored, not inflated
