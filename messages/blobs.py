"""Content-addressed blob storage for raw messages and attachments.

A blob's key is the SHA-256 of its bytes; it is stored once per tenant,
gzip-compressed, at `<root>/<tenant>/<ab>/<sha256>.gz`: one level of 256
directories, created once each (two levels made nearly every blob of a sync
create a directory of its own). Writes go to a temporary file first and are
renamed into place, so a crash never leaves a half-written blob under a valid
key; writing a key that exists is a no-op.
"""

import gzip
import hashlib
import os
import threading
import uuid
from pathlib import Path

from django.conf import settings


class BlobNotFound(Exception):
    pass


def blob_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._made: set[Path] = set()

    def path(self, tenant_id: uuid.UUID, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError("a blob key is a SHA-256 hex digest")
        return self.root / str(tenant_id) / key[:2] / f"{key}.gz"

    def put(self, tenant_id: uuid.UUID, data: bytes, key: str | None = None) -> str:
        key = key or blob_key(data)
        path = self.path(tenant_id, key)
        if path.exists():
            return key
        if path.parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(path.parent)
        # Unique per process and thread: two writers of one key never share it.
        tmp = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(gzip.compress(data, compresslevel=1, mtime=0))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
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
