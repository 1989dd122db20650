"""Content-addressed blob storage for raw messages and attachments.

A blob's key is the SHA-256 of its bytes; it is stored once per tenant,
gzip-compressed, at `<root>/<tenant>/<ab>/<sha256>.gz`: one level of 256
directories, created once each (two levels made nearly every blob of a sync
create a directory of its own). Writes go to a temporary file first and are
renamed into place, so a crash never leaves a half-written blob under a valid
key; writing a key that exists is a no-op.

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
import os
import re
import threading
import uuid
import zlib
from pathlib import Path

from django.conf import settings


class BlobNotFound(Exception):
    pass


def blob_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_KEY = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1024 * 1024


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._made: set[str] = set()

    def path(self, tenant_id: uuid.UUID, key: str) -> Path:
        return Path(self._path(tenant_id, key))

    def _path(self, tenant_id: uuid.UUID, key: str) -> str:
        if not _KEY.fullmatch(key):
            raise ValueError("a blob key is a SHA-256 hex digest")
        return f"{self.root}/{tenant_id}/{key[:2]}/{key}.gz"

    def put(self, tenant_id: uuid.UUID, data: bytes, key: str | None = None) -> str:
        key = key or blob_key(data)
        path = self._path(tenant_id, key)
        if os.path.exists(path):
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


def default_store() -> BlobStore:
    return BlobStore(settings.BLOB_STORAGE_DIR)
