import os
import threading
import uuid
import zlib

import pytest

from messages.blobs import BlobDamaged, BlobNotFound, BlobStore, blob_key


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


# --- Durability: fsync the file, rename, fsync the folder ------------------------------


class FsyncTrace:
    """Records, in order, every fsync (by the path of its descriptor) and
    every rename, then calls the real function: a spy, not a stub."""

    def __init__(self, monkeypatch):
        self.events: list[tuple[str, ...]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            path = os.readlink(f"/proc/self/fd/{fd}")
            real_fsync(fd)
            self.events.append(("fsync", path))

        def replace(src, dst, **kwargs):
            real_replace(src, dst, **kwargs)
            self.events.append(("rename", os.fspath(src), os.fspath(dst)))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def index(self, *event) -> int:
        return self.events.index(event)


def test_put_fsyncs_the_file_then_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    store = BlobStore(tmp_path)
    tenant = uuid.uuid4()
    data = b"Subject: durable\r\n\r\nbody\r\n"
    # Another blob of the same shard first: the folders exist.
    other = next(d for n in range(10_000) if blob_key(d := b"%d" % n)[:2] == blob_key(data)[:2])
    store.put(tenant, other)
    trace = FsyncTrace(monkeypatch)
    key = store.put(tenant, data)

    final = str(store.path(tenant, key))
    [rename] = [e for e in trace.events if e[0] == "rename"]
    tmp = rename[1]
    assert rename == ("rename", tmp, final)
    assert os.path.dirname(tmp) == os.path.dirname(final)
    assert trace.events == [
        ("fsync", tmp),
        ("rename", tmp, final),
        ("fsync", os.path.dirname(final)),
    ]


def test_a_new_tenant_folder_is_fsynced_in_its_parent(tmp_path, monkeypatch):
    store = BlobStore(tmp_path)
    tenant = uuid.uuid4()
    trace = FsyncTrace(monkeypatch)
    key = store.put(tenant, b"the first blob of a tenant")
    shard = os.path.dirname(str(store.path(tenant, key)))
    synced = [e[1] for e in trace.events if e[0] == "fsync"][1:]
    # The shard's entry for the file, the tenant folder's for the shard, the root's for the tenant.
    assert sorted(synced) == sorted([shard, os.path.dirname(shard), str(tmp_path)])


def test_deferred_blobs_are_fsynced_renamed_and_their_folders_fsynced_in_flush(tmp_path, monkeypatch):
    store = BlobStore(tmp_path)
    tenant = uuid.uuid4()
    store.put(tenant, b"make the tenant folder")
    blobs = [f"message {n}".encode() for n in range(40)]
    trace = FsyncTrace(monkeypatch)
    keys = [store.put(tenant, data, deferred=True) for data in blobs]
    assert trace.events == []  # written, not yet durable nor named
    assert not any(store.exists(tenant, key) for key in keys)

    assert store.flush() == len(blobs)

    finals = [str(store.path(tenant, key)) for key in keys]
    renames = [e for e in trace.events if e[0] == "rename"]
    assert sorted(e[2] for e in renames) == sorted(finals)
    first_rename = trace.events.index(renames[0])
    last_rename = trace.events.index(renames[-1])
    # Every file fsynced before any rename; the folders after the last one:
    # each blob's shard, and the tenant folder, which got new shards.
    assert sorted(trace.events[:first_rename]) == sorted(("fsync", e[1]) for e in renames)
    folders = {os.path.dirname(final) for final in finals} | {str(tmp_path / str(tenant))}
    assert sorted(e[1] for e in trace.events[last_rename + 1 :]) == sorted(folders)
    assert all(store.get(tenant, key) == data for key, data in zip(keys, blobs, strict=True))
    assert store.flush() == 0
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_same_blob_put_twice_before_a_flush_is_stored_once(tmp_path):
    store = BlobStore(tmp_path)
    tenant = uuid.uuid4()
    key = store.put(tenant, b"twice", deferred=True)
    assert store.put(tenant, b"twice", deferred=True) == key
    assert store.flush() == 2
    assert store.get(tenant, key) == b"twice"
    assert not list(tmp_path.rglob("*.tmp"))


# --- Damage ------------------------------------------------------------------------------


def _damage_cases(store, tenant, key, data):
    path = store.path(tenant, key)
    stored = path.read_bytes()
    return {
        "truncated": stored[: len(stored) // 2],
        "empty": b"",
        "garbled": stored[:20] + bytes(b ^ 0x55 for b in stored[20:40]) + stored[40:],
        "other bytes": zlib.compress(data[:-1] + b"!", 1, wbits=31),  # a valid gzip of the wrong content
        "trailing data": stored + b"junk",
    }


@pytest.mark.parametrize("case", ["truncated", "empty", "garbled", "other bytes", "trailing data"])
def test_a_damaged_blob_is_refused_with_its_key_logged(tmp_path, case, caplog):
    store = BlobStore(tmp_path)
    tenant = uuid.uuid4()
    data = b"Subject: hi\r\n\r\n" + os.urandom(3000).hex().encode()
    key = store.put(tenant, data)
    store.path(tenant, key).write_bytes(_damage_cases(store, tenant, key, data)[case])

    with pytest.raises(BlobDamaged) as raised:
        store.get(tenant, key)
    assert raised.value.key == key
    assert any(key in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    with pytest.raises(BlobDamaged):
        store.open(tenant, key)
    assert store.check(tenant, key) is not None


def test_a_blob_of_the_wrong_size_is_refused(tmp_path):
    store = BlobStore(tmp_path)
    tenant = uuid.uuid4()
    key = store.put(tenant, b"twelve bytes")
    assert store.get(tenant, key, size=12) == b"twelve bytes"
    with pytest.raises(BlobDamaged, match="not 13"):
        store.get(tenant, key, size=13)
    with pytest.raises(BlobDamaged, match="longer"):
        store.get(tenant, key, size=5)


@pytest.mark.parametrize("case", ["truncated", "empty", "garbled", "other bytes", "trailing data"])
def test_put_of_a_damaged_key_writes_it_again(tmp_path, case):
    store = BlobStore(tmp_path)
    tenant = uuid.uuid4()
    data = b"Subject: hi\r\n\r\n" + os.urandom(3000).hex().encode()
    key = store.put(tenant, data)
    store.path(tenant, key).write_bytes(_damage_cases(store, tenant, key, data)[case])

    assert store.put(tenant, data) == key
    assert store.get(tenant, key) == data
    assert store.check(tenant, key) is None


def test_put_of_a_sound_key_does_not_write_it_again(tmp_path, monkeypatch):
    store = BlobStore(tmp_path)
    tenant = uuid.uuid4()
    key = store.put(tenant, b"stored once")
    inode = store.path(tenant, key).stat().st_ino
    trace = FsyncTrace(monkeypatch)
    store.put(tenant, b"stored once")
    assert trace.events == []
    assert store.path(tenant, key).stat().st_ino == inode


def test_open_streams_a_large_blob_checked_a_megabyte_at_a_time(tmp_path):
    store = BlobStore(tmp_path)
    tenant = uuid.uuid4()
    data = os.urandom(3 * 1024 * 1024 + 5)
    key = store.put(tenant, data)
    blob = store.open(tenant, key)
    assert blob.size == len(data)
    chunks = list(blob)
    assert max(len(c) for c in chunks) <= 1024 * 1024
    assert b"".join(chunks) == data


def test_a_blob_damaged_after_open_is_cut_short_not_served_whole(tmp_path):
    store = BlobStore(tmp_path)
    tenant = uuid.uuid4()
    data = os.urandom(3 * 1024 * 1024)
    key = store.put(tenant, data)
    path = store.path(tenant, key)
    blob = store.open(tenant, key)
    # Damaged in place between the check and the read (the reader holds the file open).
    with open(path, "r+b") as handle:
        handle.seek(2 * 1024 * 1024)
        handle.write(b"\0" * 4096)
    with pytest.raises(BlobDamaged):
        list(blob)


def test_a_flush_returns_only_once_a_flush_running_beside_it_is_done(tmp_path, monkeypatch):
    """The sync flushes a batch's blobs on a blob thread and again before the
    commit: the second must not return while the first still holds blobs."""
    store = BlobStore(tmp_path)
    tenant = uuid.uuid4()
    key = store.put(tenant, b"taken by the first flush", deferred=True)
    started, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd):
        started.set()
        release.wait(5)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    first = threading.Thread(target=store.flush)
    first.start()
    assert started.wait(5)
    second = threading.Thread(target=store.flush)
    second.start()
    second.join(0.3)
    assert second.is_alive(), "returned while the first flush still held a blob"
    release.set()
    first.join(5)
    second.join(5)
    assert store.get(tenant, key) == b"taken by the first flush"


def test_after_a_failed_flush_every_flush_fails(tmp_path, monkeypatch):
    store = BlobStore(tmp_path)
    tenant = uuid.uuid4()
    lost = store.put(tenant, b"its fsync fails", deferred=True)

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(OSError, match="Input/output"):
            store.flush()
    assert not store.exists(tenant, lost)
    store.put(tenant, b"later", deferred=True)
    with pytest.raises(OSError, match="earlier flush"):
        store.flush()
