"""Content-addressed blob storage for raw messages and attachments.

A blob's key is the SHA-256 of its bytes; it is stored once per tenant,
gzip-compressed, at `<root>/<tenant>/<ab>/<sha256>.gz`: one level of 256
directories, created once each (two levels made nearly every blob of a sync
create a directory of its own). Writes go to a temporary file first and are
renamed into place, so a crash never leaves a half-written blob under a valid
key; writing a key that exists only sets its modification time to now.

That time is what garbage collection (`messages.blob_gc`) goes by: a blob
is removed only when no row refers to it and it was neither written nor put
again for a while. `discard()` renames it aside before its last look at that
time, so a `put` racing with it either finds no file (and writes one) or
refreshes the time first (and the blob is put back).

The sync writes one or more blobs per message, so `put` is lean: string
paths, gzip level 1 (mail text compresses about 3x at a fraction of level
6's CPU), and large blobs compressed and written a megabyte at a time, so a
20 MB attachment never has a whole compressed copy in memory; a large blob
that does not compress (judged on its first megabyte) is stored in gzip's
uncompressed blocks, a copy instead of deflate's CPU.
"""

import contextlib
import gzip
import hashlib
import logging
import os
import re
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings


class BlobNotFound(Exception):
    pass


def blob_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_KEY = re.compile(r"[0-9a-f]{64}")
_SHARD = re.compile(r"[0-9a-f]{2}")
_SET_ASIDE = re.compile(r"(?P<key>[0-9a-f]{64})\.gz\.[0-9a-f]{32}\.gc")
logger = logging.getLogger(__name__)
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredBlob:
    tenant_id: uuid.UUID
    key: str
    path: str
    size: int  # on disk (compressed)
    mtime: float


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._made: set[str] = set()
        self._warned = False

    def path(self, tenant_id: uuid.UUID, key: str) -> Path:
        return Path(self._path(tenant_id, key))

    def _path(self, tenant_id: uuid.UUID, key: str) -> str:
        if not _KEY.fullmatch(key):
            raise ValueError("a blob key is a SHA-256 hex digest")
        return f"{self.root}/{tenant_id}/{key[:2]}/{key}.gz"

    def put(self, tenant_id: uuid.UUID, data: bytes, key: str | None = None) -> str:
        key = key or blob_key(data)
        path = self._path(tenant_id, key)
        try:
            os.utime(path)  # stored already: now in use again (see the module's docstring)
            return key
        except FileNotFoundError:
            pass
        except PermissionError:
            # Stored, but not this user's file (restored by another user?):
            # garbage collection cannot see that it is in use again.
            if not self._warned:
                logger.warning(
                    "blob files not writable by this user, e.g. %s: fix the store's ownership", path
                )
                self._warned = True
            return key
        folder = os.path.dirname(path)
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        # Unique per process and thread: two writers of one key never share it.
        tmp = f"{folder}/.{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as handle:
                if len(data) <= _CHUNK:
                    handle.write(zlib.compress(data, 1, wbits=31))  # gzip, mtime 0
                else:
                    # Already compressed data (images, archives, PDFs) gains
                    # nothing from deflate but costs its full CPU: judged on
                    # a sample, it is stored in gzip's uncompressed blocks.
                    sample = data[:_CHUNK]
                    level = 1 if len(zlib.compress(sample, 1)) < 0.9 * len(sample) else 0
                    compressor = zlib.compressobj(level, wbits=31)
                    view = memoryview(data)
                    for start in range(0, len(data), _CHUNK):
                        handle.write(compressor.compress(view[start : start + _CHUNK]))
                    handle.write(compressor.flush())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return key

    def get(self, tenant_id: uuid.UUID, key: str) -> bytes:
        try:
            return gzip.decompress(self.path(tenant_id, key).read_bytes())
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc

    def exists(self, tenant_id: uuid.UUID, key: str) -> bool:
        return self.path(tenant_id, key).exists()

    def tenant_ids(self) -> list[uuid.UUID]:
        """The tenants with a folder in the store, deleted tenants included."""
        found = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root) as entries:
            for entry in entries:
                with contextlib.suppress(ValueError):
                    if entry.is_dir(follow_symlinks=False):
                        found.append(uuid.UUID(entry.name))
        return sorted(found)

    def blobs(self, tenant_id: uuid.UUID) -> Iterator[StoredBlob]:
        """The tenant's stored blobs in key order; temporary files of writes
        in progress (or of a crash) and anything else are skipped."""
        for shard in self._shards(tenant_id):
            with os.scandir(shard) as entries:
                found = [
                    (entry.name[:-3], entry)
                    for entry in entries
                    if entry.name.endswith(".gz") and _KEY.fullmatch(entry.name[:-3]) and entry.is_file()
                ]
            for key, entry in sorted(found, key=lambda item: item[0]):
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat()
                    yield StoredBlob(tenant_id, key, entry.path, stat.st_size, stat.st_mtime)

    def discard(self, blob: StoredBlob, *, unused_since: float) -> bool:
        """Remove `blob` unless it was written or put again at or after
        `unused_since` (a time on the store's clock); whether it was removed.
        However this ends (an error, ^C), a blob it does not remove is put
        back; one set aside when the process was killed is put back by
        `restore_set_aside()`."""
        aside = f"{blob.path}.{uuid.uuid4().hex}.gc"
        try:
            os.rename(blob.path, aside)
        except FileNotFoundError:
            return False
        removed = False
        try:
            # The file's own time, read after no `put` can find it any more.
            if os.stat(aside).st_mtime < unused_since:
                os.unlink(aside)
                removed = True
        except FileNotFoundError:
            pass  # another collector put it back meanwhile
        finally:
            if not removed:
                with contextlib.suppress(FileNotFoundError):
                    os.replace(aside, blob.path)
        return removed

    def restore_set_aside(self, tenant_id: uuid.UUID) -> int:
        """Put back the blobs a killed `discard()` left aside; how many."""
        restored = 0
        for shard in self._shards(tenant_id):
            for name in os.listdir(shard):
                match = _SET_ASIDE.fullmatch(name)
                if match is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(f"{shard}/{name}", f"{shard}/{match['key']}.gz")
                        restored += 1
        return restored

    def _shards(self, tenant_id: uuid.UUID) -> list[str]:
        """The tenant's shard folders (`<ab>`), in order; none if it has no folder."""
        tenant_dir = f"{self.root}/{uuid.UUID(str(tenant_id))}"
        try:
            names = os.listdir(tenant_dir)
        except FileNotFoundError:
            return []
        return [f"{tenant_dir}/{name}" for name in sorted(names) if _SHARD.fullmatch(name)]

    def now(self) -> float:
        """The time on the store's own clock (a network file system's may
        not be ours): a file's modification time, set now."""
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / ".clock"
        probe.touch()
        os.utime(probe)
        return probe.stat().st_mtime


def default_store() -> BlobStore:
    return BlobStore(settings.BLOB_STORAGE_DIR)
