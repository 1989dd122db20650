"""Backups of the whole service, database and blob store, in one archive.

An archive is a tar stream (optionally encrypted, see below) holding, in order:

    database.dump                  pg_dump --format=custom of every tenant
    blobs/<tenant>/<ab>/<key>.gz   every stored blob (raw messages, attachments, uploads)
    manifest.json                  format, time, migrations, per-tenant row counts,
                                   blob count and bytes, SHA-256 of each part

Backup: the dump is taken by the admin role, which has BYPASSRLS and so dumps
every tenant's rows (pg_dump refuses to dump a table whose rows RLS would
filter; no `--enable-row-security`), from a snapshot exported by a
REPEATABLE READ transaction that also counts each tenant's rows, so the
manifest's counts are the dump's. The blob folder is read after the dump: a
blob the dump's rows name was written before its row committed, so it is in
the folder; the blob garbage collection does not run meanwhile: the backup
holds the advisory lock of `blob_lock` from before its snapshot to its last
blob, and a garbage collection that finds it held skips its run. The dump is
written to a private temporary folder (TMPDIR), never beside the archive.
The archive is written to `<name>.partial`, created mode 0600 (never readable
by others, whatever the umask), fsynced, and renamed to its name when whole.

Encryption (a key given by the operator): AES-256-GCM in 1 MiB chunks (the
STREAM construction: a random nonce prefix, the chunk's number and a last-chunk
flag make each nonce, so chunks cannot be dropped, reordered or cut off); the
key is derived with scrypt from the operator's key and a random salt per
archive; the header (magic, version, salt, nonce prefix, chunk size, a key
check) is authenticated with every chunk. Nothing is ever held whole in memory.
CREDENTIAL_ENCRYPTION_KEYS are settings, not data: never in an archive.

Restore, into an empty database made by `setupdb` and an empty blob folder
(refused otherwise, before anything is read): one pass over the archive
writes the dump and the blobs into a staging folder inside the blob folder
(names checked: nothing outside it), hashing as it goes; the manifest's
checksums and counts are compared before the database is touched, so a
tampered, truncated or wrongly-keyed archive is refused with the database and
blob folder left empty; so is one whose manifest lists migrations this code
does not have (a newer version's), unless forced. Then pg_restore in three sections: the schema
(pre-data) as the owner, so the owner owns the tables again; the rows (data)
as the admin role, because FORCE ROW LEVEL SECURITY would filter even the
owner's COPY; indexes, constraints and policies (post-data) as the owner.
Grants come from the owner's default privileges; the append-only tables then
lose UPDATE and DELETE for the runtime role again, and the monitoring views
and function (core.0006) are the admin role's only again. Row-level security and its
policies are in the post-data section: a restore that stopped there would
leave every tenant's rows readable to all, so the restore checks, as the
runtime role, what the service checks at start-up
(`rls.database_security_problems`) and the restored row counts against the
manifest, and only then moves the blobs into place.
"""

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .blob_lock import blob_gc_lock_release, blob_gc_lock_wait
from .dbsetup import append_only_revoke, monitoring_grants
from .rls import database_security_problems

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
ARCHIVE_SUFFIX = ".backup"
_DUMP = "database.dump"
_MANIFEST = "manifest.json"
_BLOB_MEMBER = re.compile(
    r"blobs/(?P<tenant>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"/(?P<shard>[0-9a-f]{2})/(?P<key>[0-9a-f]{64})\.gz"
)
# The blob store's layout (messages.blobs, a higher layer this one may not import).
_KEY_FILE = re.compile(r"(?P<key>[0-9a-f]{64})\.gz")
_SET_ASIDE_FILE = re.compile(r"(?P<key>[0-9a-f]{64})\.gz\.[0-9a-f]{32}\.gc")
_SHARD = re.compile(r"[0-9a-f]{2}")
_COPY_CHUNK = 1024 * 1024


class BackupError(Exception):
    pass


# --- Encryption ----------------------------------------------------------------

_MAGIC = b"EMAILCLIENT-BACKUP\x00"
_CRYPTO_VERSION = 1
_CHUNK = 1024 * 1024
_TAG = 16
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
_HEADER_LEN = len(_MAGIC) + 1 + 16 + 7 + 4 + 32


def archive_encrypted(head: bytes) -> bool:
    """Whether an archive starting with `head` is encrypted."""
    return head.startswith(_MAGIC)


def _derive(key: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """(AES key, key check) from the operator's key and the archive's salt."""
    derived = Scrypt(salt=salt, length=64, **_SCRYPT).derive(key)
    return derived[:32], hashlib.sha256(b"key-check" + derived[32:]).digest()


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    if counter >= 2**32:
        raise BackupError("archive too large for one nonce prefix")
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


class EncryptingWriter:
    """A write-only file object encrypting into `raw` chunk by chunk."""

    def __init__(self, raw: BinaryIO, key: bytes) -> None:
        salt, self._prefix = secrets.token_bytes(16), secrets.token_bytes(7)
        aes_key, check = _derive(key, salt)
        self._header = (
            _MAGIC + bytes([_CRYPTO_VERSION]) + salt + self._prefix + _CHUNK.to_bytes(4, "big") + check
        )
        self._aes = AESGCM(aes_key)
        self._raw = raw
        self._buffer = bytearray()
        self._counter = 0
        raw.write(self._header)

    def write(self, data: bytes) -> int:
        self._buffer += data
        while len(self._buffer) >= _CHUNK:
            self._emit(bytes(self._buffer[:_CHUNK]), last=False)
            del self._buffer[:_CHUNK]
        return len(data)

    def _emit(self, chunk: bytes, *, last: bool) -> None:
        nonce = _nonce(self._prefix, self._counter, last)
        self._raw.write(self._aes.encrypt(nonce, chunk, self._header))
        self._counter += 1

    def close(self) -> None:
        """Write the last chunk (shorter than a whole one, perhaps empty)."""
        self._emit(bytes(self._buffer), last=True)
        self._buffer = bytearray()


class DecryptingReader:
    """A read-only file object over an encrypted archive: every chunk is
    authenticated before a byte of it is returned; a missing last chunk
    (a truncated archive) is an error, not an end."""

    def __init__(self, raw: BinaryIO, key: bytes) -> None:
        header = _read_exactly(raw, _HEADER_LEN)
        if len(header) != _HEADER_LEN or not header.startswith(_MAGIC):
            raise BackupError("not an encrypted backup archive (or its header is cut short)")
        offset = len(_MAGIC)
        if header[offset] != _CRYPTO_VERSION:
            raise BackupError(f"unknown archive encryption version {header[offset]}")
        salt = header[offset + 1 : offset + 17]
        self._prefix = header[offset + 17 : offset + 24]
        chunk = int.from_bytes(header[offset + 24 : offset + 28], "big")
        if chunk != _CHUNK:
            raise BackupError(f"unsupported chunk size {chunk}")
        aes_key, check = _derive(key, salt)
        if not constant_time.bytes_eq(check, header[offset + 28 :]):
            raise BackupError("wrong encryption key for this archive")
        self._aes = AESGCM(aes_key)
        self._header = header
        self._raw = raw
        self._counter = 0
        self._buffer = b""
        self._offset = 0
        self._done = False

    def read(self, size: int = -1) -> bytes:
        # tarfile reads 10 KiB at a time: an offset into the chunk, not a
        # copy of the rest of the chunk per read.
        while not self._done and (size < 0 or len(self._buffer) - self._offset < size):
            self._next_chunk()
        end = len(self._buffer) if size < 0 else self._offset + size
        data = self._buffer[self._offset : end]
        self._offset += len(data)
        return data

    def _next_chunk(self) -> None:
        sealed = _read_exactly(self._raw, _CHUNK + _TAG)
        last = len(sealed) < _CHUNK + _TAG
        if len(sealed) < _TAG:
            raise BackupError("the archive is truncated (its last chunk is missing)")
        try:
            plain = self._aes.decrypt(_nonce(self._prefix, self._counter, last), sealed, self._header)
        except InvalidTag:
            raise BackupError(
                f"the archive is damaged or was tampered with (chunk {self._counter} fails authentication)"
            ) from None
        self._counter += 1
        self._buffer, self._offset = self._buffer[self._offset :] + plain, 0
        if last:
            if self._raw.read(1):
                raise BackupError("the archive has data after its last chunk")
            self._done = True


def _read_exactly(raw: IO[bytes], size: int) -> bytes:
    parts, wanted = [], size
    while wanted:
        part = raw.read(wanted)
        if not part:
            break
        parts.append(part)
        wanted -= len(part)
    return b"".join(parts)


def encryption_key_read(*, key_file: Path | None) -> bytes | None:
    """The operator's key: the file's content (stripped), else the
    BACKUP_ENCRYPTION_KEY variable; None for no encryption."""
    if key_file is not None:
        try:
            key = key_file.read_bytes().strip()
        except OSError as exc:
            raise BackupError(f"cannot read the encryption key file {key_file}: {exc.strerror}") from exc
    else:
        key = os.environ.get("BACKUP_ENCRYPTION_KEY", "").strip().encode()
    if not key:
        if key_file is not None:
            raise BackupError(f"the encryption key file {key_file} is empty")
        return None
    if len(key) < 16:
        raise BackupError(
            "the encryption key is too short (16 characters at least; use `openssl rand -base64 32`)"
        )
    return key


# --- Database --------------------------------------------------------------------


def _libpq_args(db: dict) -> tuple[list[str], dict]:
    args = ["--host", db.get("HOST") or "127.0.0.1", "--port", str(db.get("PORT") or 5432)]
    args += ["--username", db["USER"], "--no-password"]
    env = {**os.environ}
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = db["PASSWORD"]
    return args, env


def _run(command: list[str], env: dict) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise BackupError(f"{command[0]} failed: {result.stderr.strip()}")


def _connect(db: dict, **kwargs: Any) -> psycopg.Connection:
    conninfo = psycopg.conninfo.make_conninfo(
        host=db.get("HOST") or "127.0.0.1",
        port=db.get("PORT") or 5432,
        user=db["USER"],
        password=db.get("PASSWORD") or None,
        dbname=db["NAME"],
    )
    return psycopg.connect(conninfo, **kwargs)


_TENANT_TABLES_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY c.relname
"""


def tenant_row_counts(cursor: Any) -> dict[str, dict[str, int]]:
    """{tenant id: {table: rows}} for every table with a tenant_id column
    (read as a role that bypasses RLS)."""
    cursor.execute(_TENANT_TABLES_SQL)
    tables = [row[0] for row in cursor.fetchall()]
    counts: dict[str, dict[str, int]] = {}
    cursor.execute("SELECT id FROM tenants ORDER BY id")
    for (tenant_id,) in cursor.fetchall():
        counts[str(tenant_id)] = dict.fromkeys(tables, 0)
    for table in tables:
        quoted = '"' + table.replace('"', '""') + '"'
        cursor.execute(f"SELECT tenant_id, count(*) FROM {quoted} GROUP BY tenant_id")  # noqa: S608
        for tenant_id, rows in cursor.fetchall():
            counts.setdefault(str(tenant_id), dict.fromkeys(tables, 0))[table] = rows
    return counts


def _migrations(cursor: Any) -> list[str]:
    cursor.execute("SELECT app || '.' || name FROM django_migrations ORDER BY app, name")
    return [row[0] for row in cursor.fetchall()]


def backup_database(*, output: Path, databases: dict, snapshot: str | None = None) -> None:
    """pg_dump, custom format, as the admin role (BYPASSRLS), into `output`
    (created 0600), from `snapshot` when given."""
    db = databases["admin"]
    args, env = _libpq_args(db)
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    command = ["pg_dump", "--format=custom", "--no-owner", "--no-privileges", "--file", str(output)]
    if snapshot:
        command += ["--snapshot", snapshot]
    _run([*command, *args, "--dbname", db["NAME"]], env)


def _connect_or_fail(db: dict, **kwargs: Any) -> psycopg.Connection:
    try:
        return _connect(db, **kwargs)
    except psycopg.OperationalError as exc:
        raise BackupError(f"cannot connect to database {db['NAME']} as {db['USER']}: {exc}") from exc


def _table_count(db: dict) -> int:
    with _connect_or_fail(db) as conn:
        # count(*) always returns a row.
        return conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]  # type: ignore[index]


def restore_database(*, source: Path, databases: dict) -> None:
    """pg_restore a custom-format dump into the (empty) database, in three
    sections with the right roles, then check tenant isolation."""
    if not source.is_file():
        raise BackupError(f"{source} is not a file.")
    _database_empty_check(databases)
    for section, alias in (("pre-data", "owner"), ("data", "admin"), ("post-data", "owner")):
        db = databases[alias]
        args, env = _libpq_args(db)
        _run(
            [
                "pg_restore",
                "--exit-on-error",
                "--no-owner",
                "--no-privileges",
                f"--section={section}",
                *args,
                "--dbname",
                db["NAME"],
                str(source),
            ],
            env,
        )
    with _connect_or_fail(databases["owner"], autocommit=True) as conn, conn.cursor() as cursor:
        append_only_revoke(cursor, runtime_role=databases["default"]["USER"])
        monitoring_grants(
            cursor, runtime_role=databases["default"]["USER"], admin_role=databases["admin"]["USER"]
        )
    restored_database_check(databases=databases)


def _database_empty_check(databases: dict) -> None:
    if _table_count(databases["owner"]):
        raise BackupError(
            f"database {databases['owner']['NAME']} is not empty: restore only into a new database "
            "(drop it, then `manage.py setupdb`)."
        )


def restored_database_check(*, databases: dict) -> None:
    """BackupError unless the database isolates tenants for the runtime role."""
    with _connect_or_fail(databases["default"]) as conn, conn.cursor() as cursor:
        problems = database_security_problems(cursor)
    if problems:
        raise BackupError(
            f"database {databases['default']['NAME']} was restored but does not isolate tenants; "
            "do not serve it: " + "; ".join(problems)
        )


# --- Archives --------------------------------------------------------------------


class _HashingReader:
    def __init__(self, handle: IO[bytes], digest: Any) -> None:
        self._handle, self._digest, self.size = handle, digest, 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._digest.update(data)
        self.size += len(data)
        return data


def _blob_files(root: Path) -> Iterator[tuple[str, str, str, str]]:
    """(tenant, shard, key, path) of every stored blob, in order; a blob a
    garbage collection has set aside for its last look is included."""
    try:
        tenants = sorted(os.listdir(root))
    except FileNotFoundError:
        return
    for tenant in tenants:
        with contextlib.suppress(ValueError):
            if str(uuid.UUID(tenant)) != tenant:
                continue
            tenant_dir = root / tenant
            if not tenant_dir.is_dir():
                continue
            for shard in sorted(os.listdir(tenant_dir)):
                if not _SHARD.fullmatch(shard) or not (tenant_dir / shard).is_dir():
                    continue
                found: dict[str, str] = {}
                for name in os.listdir(tenant_dir / shard):
                    match = _KEY_FILE.fullmatch(name) or _SET_ASIDE_FILE.fullmatch(name)
                    if match and (name.endswith(".gz") or match["key"] not in found):
                        found[match["key"]] = f"{tenant_dir}/{shard}/{name}"
                for key in sorted(found):
                    yield tenant, shard, key, found[key]


def _blob_record(digest: Any, name: str, size: int) -> None:
    digest.update(f"{name}\0{size}\0".encode())


@dataclass
class BackupResult:
    path: Path
    size: int
    blobs: int
    seconds: float
    manifest: dict = field(repr=False)


def archive_create(
    *, output: Path, databases: dict, blob_root: Path, key: bytes | None = None
) -> BackupResult:
    """Write one archive of the database and the blob store to `output`
    (see the module's docstring). `output` must not exist.

    The database dump is written first to a private (0700) temporary folder
    of its own, in the system's temporary folder (TMPDIR), never beside the
    archive: that folder needs room for the dump (about the database's size,
    compressed). The blob garbage collection waits (skips its run) while a
    backup runs (`blob_lock`)."""
    started = time.monotonic()
    output = Path(output)
    if output.exists():
        raise BackupError(f"{output} exists: a backup never overwrites an archive")
    if not output.parent.is_dir():
        raise BackupError(f"cannot write {output}: the folder {output.parent} does not exist")
    partial = output.with_name(output.name + ".partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupError(f"{partial} exists: another backup is writing it (or died: remove it)") from None
    except OSError as exc:
        raise BackupError(f"cannot write {partial}: {exc.strerror}") from exc
    raw = os.fdopen(fd, "wb")
    dump_dir = Path(tempfile.mkdtemp(prefix="emailclient-backup-"))  # mode 0700
    dump = dump_dir / _DUMP
    try:
        with _connect_or_fail(databases["admin"], autocommit=True) as conn, conn.cursor() as cursor:
            # Held until the last blob is copied (the connection's end frees it).
            blob_gc_lock_wait(cursor)
            conn.autocommit = False
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            cursor.execute("SELECT pg_export_snapshot()")
            snapshot = cursor.fetchone()[0]  # type: ignore[index]
            backup_database(output=dump, databases=databases, snapshot=snapshot)
            counts = tenant_row_counts(cursor)
            migrations = _migrations(cursor)
            cursor.execute("SELECT id::text, slug FROM tenants ORDER BY id")
            slugs: dict[str, str] = dict(cursor.fetchall())
            conn.rollback()
            conn.autocommit = True
            manifest = _archive_write(
                raw=raw,
                dump=dump,
                blob_root=blob_root,
                key=key,
                counts=counts,
                migrations=migrations,
                slugs=slugs,
            )
            blob_gc_lock_release(cursor)
        os.rename(partial, output)
        _fsync_folder(output.parent)
    except BaseException:
        raw.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    finally:
        shutil.rmtree(dump_dir, ignore_errors=True)
    return BackupResult(
        path=output,
        size=output.stat().st_size,
        blobs=manifest["blobs"]["count"],
        seconds=time.monotonic() - started,
        manifest=manifest,
    )


def _archive_write(
    *,
    raw: BinaryIO,
    dump: Path,
    blob_root: Path,
    key: bytes | None,
    counts: dict,
    migrations: list[str],
    slugs: dict[str, str],
) -> dict:
    """The tar stream (encrypted with `key`) into `raw`, fsynced and closed; the manifest."""
    with raw:
        encrypter = EncryptingWriter(raw, key) if key else None
        sink: Any = encrypter or raw
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            dump_digest = hashlib.sha256()
            with open(dump, "rb") as handle:
                info = tar.gettarinfo(fileobj=handle, arcname=_DUMP)
                info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
                tar.addfile(info, _HashingReader(handle, dump_digest))
            dump_size = info.size
            os.unlink(dump)
            blob_digest = hashlib.sha256()
            blob_counts: dict[str, dict[str, int]] = {}
            for tenant, shard, blob_key, path in _blob_files(blob_root):
                try:
                    handle = open(path, "rb")  # noqa: SIM115
                except FileNotFoundError:  # set aside and removed, or put back, meanwhile
                    continue
                with handle:
                    stat = os.fstat(handle.fileno())
                    name = f"blobs/{tenant}/{shard}/{blob_key}.gz"
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o600
                    _blob_record(blob_digest, name, stat.st_size)
                    tar.addfile(info, _HashingReader(handle, blob_digest))
                    # tarfile keeps every member written (~420 bytes each): not needed.
                    tar.members.clear()  # type: ignore[attr-defined]
                tenant_blobs = blob_counts.setdefault(tenant, {"blobs": 0, "bytes": 0})
                tenant_blobs["blobs"] += 1
                tenant_blobs["bytes"] += stat.st_size
            manifest: dict[str, Any] = {
                "format": FORMAT_VERSION,
                "created": datetime.now(UTC).isoformat(),
                "app_version": os.environ.get("APP_VERSION", ""),
                "migrations": migrations,
                "tenants": {
                    tenant: {
                        "slug": slugs.get(tenant),
                        "rows": rows,
                        **blob_counts.get(tenant, {"blobs": 0, "bytes": 0}),
                    }
                    for tenant, rows in counts.items()
                },
                "database": {"member": _DUMP, "bytes": dump_size, "sha256": dump_digest.hexdigest()},
                "blobs": {
                    "count": sum(c["blobs"] for c in blob_counts.values()),
                    "bytes": sum(c["bytes"] for c in blob_counts.values()),
                    "sha256": blob_digest.hexdigest(),
                    "tenants_without_rows": sorted(set(blob_counts) - set(counts)),
                },
                "encrypted": key is not None,
            }
            data = json.dumps(manifest, indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo(_MANIFEST)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, _BytesReader(data))
        if encrypter is not None:
            encrypter.close()
        raw.flush()
        os.fsync(raw.fileno())
    return manifest


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._offset = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._offset + size
        data, self._offset = self._data[self._offset : end], min(end, len(self._data))
        return data


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _blob_root_empty_check(blob_root: Path) -> None:
    if blob_root.exists():
        if not blob_root.is_dir():
            raise BackupError(f"blob folder {blob_root} is not a folder")
        left = [name for name in os.listdir(blob_root) if name != ".clock"]
        if left:
            raise BackupError(
                f"blob folder {blob_root} is not empty ({len(left)} entries, e.g. {sorted(left)[0]}): "
                "restore only into an empty folder"
            )


@dataclass
class RestoreResult:
    blobs: int
    seconds: float
    manifest: dict = field(repr=False)


def archive_restore(
    *,
    source: Path,
    databases: dict,
    blob_root: Path,
    key: bytes | None = None,
    known_migrations: set[str] | None = None,
    force: bool = False,
) -> RestoreResult:
    """Restore an archive into the empty database and blob folder (see the
    module's docstring). A damaged, tampered, truncated or wrongly-keyed
    archive is refused before the database or the blob folder is touched;
    so is one from a newer version (migrations not in `known_migrations`,
    this code's), unless `force`."""
    started = time.monotonic()
    source, blob_root = Path(source), Path(blob_root)
    if not source.is_file():
        raise BackupError(f"{source} is not a file")
    _database_empty_check(databases)
    _blob_root_empty_check(blob_root)
    blob_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = blob_root / f".restore-{secrets.token_hex(8)}"
    staging.mkdir(mode=0o700)
    try:
        manifest = _archive_unpack(source=source, staging=staging, key=key)
        newer = sorted(set(manifest["migrations"]) - known_migrations) if known_migrations is not None else []
        if newer and not force:
            raise BackupError(
                f"the archive comes from a newer version: {len(newer)} migrations unknown to this code "
                f"(e.g. {newer[0]}); restore it with that version or a newer one (or --force); "
                "nothing was restored"
            )
        # The unpacked files on disk, all at once (an fsync per blob took
        # most of a restore's time), before anything names them.
        os.sync()
        restore_database(source=staging / _DUMP, databases=databases)
        with _connect_or_fail(databases["admin"]) as conn, conn.cursor() as cursor:
            counts = tenant_row_counts(cursor)
        expected = {tenant: entry["rows"] for tenant, entry in manifest["tenants"].items()}
        if counts != expected:
            differ = sorted(
                f"{tenant}/{table}"
                for tenant in set(counts) | set(expected)
                for table in set(counts.get(tenant, {})) | set(expected.get(tenant, {}))
                if counts.get(tenant, {}).get(table) != expected.get(tenant, {}).get(table)
            )
            raise BackupError(
                f"database {databases['default']['NAME']} was restored but its row counts differ from the "
                f"manifest's ({', '.join(differ[:10])}); do not serve it"
            )
        (staging / _DUMP).unlink()
        blobs_dir = staging / "blobs"
        if blobs_dir.is_dir():
            for tenant in sorted(os.listdir(blobs_dir)):
                os.rename(blobs_dir / tenant, blob_root / tenant)
        _fsync_folder(blob_root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return RestoreResult(
        blobs=manifest["blobs"]["count"], seconds=time.monotonic() - started, manifest=manifest
    )


def _archive_unpack(*, source: Path, staging: Path, key: bytes | None) -> dict:
    """Read the archive once into `staging` (the dump, then `blobs/...`)
    and check it against its manifest; the manifest."""
    with open(source, "rb") as raw:
        encrypted = raw.read(len(_MAGIC)) == _MAGIC
        raw.seek(0)
        if encrypted and key is None:
            raise BackupError(
                "the archive is encrypted: give its key (--encrypt-key-file or BACKUP_ENCRYPTION_KEY)"
            )
        if not encrypted and key is not None:
            raise BackupError(
                "the archive is not encrypted, but a key was given: refusing (is it the right file?)"
            )
        stream: Any = DecryptingReader(raw, key) if (encrypted and key) else raw
        dump_digest, blob_digest = hashlib.sha256(), hashlib.sha256()
        blob_count = dump_size = 0
        manifest: dict | None = None
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if manifest is not None:
                        raise BackupError(f"the archive has {member.name!r} after its manifest")
                    if not member.isfile():
                        raise BackupError(f"the archive holds an unexpected entry {member.name!r}")
                    match = _BLOB_MEMBER.fullmatch(member.name)
                    if match and match["shard"] != match["key"][:2]:
                        match = None  # not where the blob store keeps that key
                    handle = tar.extractfile(member)
                    if handle is None:
                        raise BackupError(f"the archive's entry {member.name!r} cannot be read")
                    if member.name == _MANIFEST:
                        manifest = json.loads(handle.read(16 * 1024 * 1024))
                    elif member.name == _DUMP:
                        if dump_size or blob_count:
                            raise BackupError("the archive's database dump is not its first entry")
                        dump_size = _write_new(staging / _DUMP, handle, dump_digest, member.mtime)
                    elif match:
                        _blob_record(blob_digest, member.name, member.size)
                        folder = staging / "blobs" / match["tenant"] / match["shard"]
                        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                        _write_new(folder / f"{match['key']}.gz", handle, blob_digest, member.mtime)
                        blob_count += 1
                    else:
                        raise BackupError(f"the archive holds an unexpected entry {member.name!r}")
                    # tarfile keeps every member read (~420 bytes each): not needed.
                    tar.members.clear()  # type: ignore[attr-defined]
        except tarfile.TarError as exc:
            raise BackupError(f"the archive is damaged or truncated ({exc})") from exc
        except (EOFError, json.JSONDecodeError) as exc:
            raise BackupError(f"the archive is damaged or truncated ({exc})") from exc
    if manifest is None:
        raise BackupError("the archive has no manifest: it is truncated or not a backup archive")
    _manifest_shape_check(manifest)
    problems = []
    if (dump_size, dump_digest.hexdigest()) != (
        manifest["database"]["bytes"],
        manifest["database"]["sha256"],
    ):
        problems.append("the database dump's checksum differs from the manifest's")
    if blob_count != manifest["blobs"]["count"] or blob_digest.hexdigest() != manifest["blobs"]["sha256"]:
        problems.append(
            f"the blobs ({blob_count}) differ from the manifest's ({manifest['blobs']['count']}, by checksum)"
        )
    if problems:
        raise BackupError(
            "the archive does not match its manifest: " + "; ".join(problems) + "; nothing was restored"
        )
    return manifest


def _manifest_shape_check(manifest: Any) -> None:
    """BackupError unless the manifest has the keys and types a restore reads."""
    if not isinstance(manifest, dict):
        raise BackupError("the archive's manifest is not a JSON object: not a backup archive")
    if manifest.get("format") != FORMAT_VERSION:
        raise BackupError(
            f"archive format {manifest.get('format')} is not {FORMAT_VERSION}: use a matching version"
        )
    database, blobs, tenants = manifest.get("database"), manifest.get("blobs"), manifest.get("tenants")
    shaped = (
        isinstance(database, dict)
        and isinstance(database.get("bytes"), int)
        and isinstance(database.get("sha256"), str)
        and isinstance(blobs, dict)
        and isinstance(blobs.get("count"), int)
        and isinstance(blobs.get("sha256"), str)
        and isinstance(tenants, dict)
        and all(isinstance(entry, dict) and isinstance(entry.get("rows"), dict) for entry in tenants.values())
        and isinstance(manifest.get("migrations"), list)
        and all(isinstance(name, str) for name in manifest["migrations"])
        and isinstance(manifest.get("created"), str)
    )
    if not shaped:
        raise BackupError("the archive's manifest lacks keys or has the wrong types: not restored")


def _write_new(path: Path, handle: IO[bytes], digest: Any, mtime: float) -> int:
    written = 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupError(f"the archive holds {path.name} twice: refused, nothing was restored") from None
    with os.fdopen(fd, "wb") as out:
        while chunk := handle.read(_COPY_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            written += len(chunk)
    os.utime(path, (mtime, mtime))
    return written


# --- Scheduled backups -------------------------------------------------------------


# The names `scheduled_backup` writes: email-<UTC time, microseconds>Z.backup.
_SCHEDULED_NAME = re.compile(r"email-\d{8}T\d{12}Z" + re.escape(ARCHIVE_SUFFIX))
_SCHEDULED_PARTIAL = re.compile(_SCHEDULED_NAME.pattern + r"\.partial")


def archives_listed(folder: Path) -> list[Path]:
    """The complete archives in `folder` named by `scheduled_backup` (and
    no other file), oldest first (by the UTC time in the name)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(folder / name for name in names if _SCHEDULED_NAME.fullmatch(name))


def archives_prune(*, folder: Path, keep: int, written: Path | None = None) -> list[Path]:
    """Remove all but the newest `keep` complete archives, never `written`
    (the one just made); those removed."""
    if keep < 1:
        raise BackupError("keep at least one archive (BACKUP_KEEP >= 1)")
    archives = [path for path in archives_listed(folder) if path != written]
    kept = keep - 1 if written is not None else keep
    removed = archives[: max(0, len(archives) - kept)]
    for path in removed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return removed


def partials_remove(folder: Path) -> list[Path]:
    """Remove the `.partial` files of scheduled backups that were killed
    (under the scheduled backup's lock: none is being written)."""
    removed = []
    for name in sorted(os.listdir(folder)):
        if _SCHEDULED_PARTIAL.fullmatch(name):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
                removed.append(folder / name)
    return removed


def scheduled_backup(
    *,
    folder: Path,
    keep: int,
    databases: dict,
    blob_root: Path,
    key: bytes | None,
    now: datetime | None = None,
) -> tuple[BackupResult, list[Path]]:
    """A new archive in `folder` named by its UTC time, then the oldest
    pruned to `keep`: only once the new one is complete (an error leaves
    the old ones). Call it holding the folder's lock (core.tasks): the
    partial archives of killed runs are removed first."""
    if keep < 1:
        raise BackupError("keep at least one archive (BACKUP_KEEP >= 1)")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for leftover in partials_remove(folder):
        logger.warning("scheduled backup: removed %s, left by a backup that was stopped", leftover.name)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    result = archive_create(
        output=folder / f"email-{stamp}{ARCHIVE_SUFFIX}", databases=databases, blob_root=blob_root, key=key
    )
    return result, archives_prune(folder=folder, keep=keep, written=result.path)
