"""`backup` and `restore` of whole archives: the database and the blob store,
round-tripped for two tenants with mail synced from a real Dovecot, and the
refusals (a non-empty target, a tampered, truncated or wrongly-keyed archive)."""

import contextlib
import fcntl
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.db import connections

from accounts.tests.factories import EmailAccountFactory
from conftest import bearer_client
from emailclient.core import backup as backup_module
from emailclient.core.backup import (
    _HEADER_LEN,
    BackupError,
    archive_create,
    archive_restore,
    tenant_row_counts,
)
from emailclient.core.blob_lock import blob_gc_lock_release, blob_gc_lock_wait
from emailclient.core.dbsetup import setup_database
from emailclient.core.tasks import backup_scheduled_task
from emailclient.core.tenancy import tenant_scope
from mailboxes.sync import account_sync
from mailboxes.tests.conftest import devmail, imap, mail_settings  # noqa: F401 - fixtures
from messages.blob_gc import blob_garbage_collect
from messages.indexing import search_index_pending
from messages.models import Attachment, Message

RESTORED = f"{settings.DATABASES['default']['NAME']}_restore"
KEY = b"an operator's backup key, 32+ chars long"


def _target() -> dict:
    """settings.DATABASES for a fresh, empty database beside the suite's."""
    target = {alias: {**db, "NAME": RESTORED} for alias, db in settings.DATABASES.items()}
    setup_database(superuser_url=settings.DATABASE_SUPERUSER_URL, databases=target, recreate=True, log=str)
    return target


def _connect(db: dict) -> psycopg.Connection:
    return psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"])


def _table_count(db: dict) -> int:
    with _connect(db) as conn:
        return conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]


def _counts(db: dict) -> dict:
    with _connect(db) as conn, conn.cursor() as cursor:
        return tenant_row_counts(cursor)


def _blob_digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*.gz"))
    }


def _mail(subject: str, body: str, attachment: bytes | None = None) -> bytes:
    mail = EmailMessage()
    mail["From"] = "sender@example.com"
    mail["To"] = "user@example.com"
    mail["Subject"] = subject
    mail["Message-ID"] = f"<{subject.replace(' ', '-')}@example.com>"
    mail.set_content(body)
    if attachment is not None:
        mail.add_attachment(attachment, maintype="application", subtype="pdf", filename=f"{subject}.pdf")
    return mail.as_bytes()


def _download(client, attachment_id) -> bytes:
    response = client.get(f"/api/attachments/{attachment_id}/download")
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content) if response.streaming else response.content


def _search(client, query: str) -> list[str]:
    response = client.get("/api/sync/search", {"query": query})
    assert response.status_code == 200, response.content
    return sorted(item["subject"] for item in response.json()["results"])


@contextlib.contextmanager
def _served_from(target: dict, blob_root: Path):
    """This process's Django pointed at the restored database and blob folder."""
    saved = {alias: connections[alias].settings_dict["NAME"] for alias in ("default", "owner", "admin")}
    saved_root = settings.BLOB_STORAGE_DIR
    for alias in saved:
        connections[alias].close()
        connections[alias].settings_dict["NAME"] = target[alias]["NAME"]
    settings.BLOB_STORAGE_DIR = blob_root
    cache.clear()
    try:
        yield
    finally:
        for alias, name in saved.items():
            connections[alias].close()
            connections[alias].settings_dict["NAME"] = name
        settings.BLOB_STORAGE_DIR = saved_root
        cache.clear()


def test_two_tenants_synced_mail_round_trips_through_an_encrypted_archive(
    committed_db,
    mail_settings,  # noqa: F811 - the fixture
    devmail,  # noqa: F811 - the fixture
    tenant_a,
    tenant_b,
    user_a,
    user_b,
    tmp_path,
):
    pdf_a, pdf_b = b"%PDF-1.4 tenant a\n" * 3000, b"%PDF-1.4 tenant b\n" * 100
    accounts = {}
    for tenant, user, pdf, word in (
        (tenant_a, user_a, pdf_a, "zeppelin"),
        (tenant_b, user_b, pdf_b, "quokka"),
    ):
        name = f"backup{uuid.uuid4().hex[:8]}"
        devmail.add_user(name, "mail-password")
        box = imap(devmail, name)
        box.append("INBOX", _mail(f"{word} report", f"the {word} figures\n" * 30, attachment=pdf))
        box.append("INBOX", _mail(f"{word} notes", f"more about the {word}\n" * 10))
        box.append("INBOX", _mail("shared subject", "nothing in particular\n"))
        box.logout()
        account = EmailAccountFactory(
            tenant=tenant,
            user=user,
            email_address=f"{name}@example.com",
            hostname="127.0.0.1",
            port=devmail.imap_port,
            encryption="starttls",
            username=name,
        )
        account_sync(tenant_id=tenant.id, account_id=account.id)
        with tenant_scope(tenant.id):
            search_index_pending(tenant_id=tenant.id)
        accounts[tenant.slug] = account
    with tenant_scope(tenant_a.id):
        attachment_a = Attachment.objects.get()
        messages_a = Message.objects.count()
    with tenant_scope(tenant_b.id):
        attachment_b = Attachment.objects.get()
    assert messages_a == 3
    clients = {"a": bearer_client(user_a, tenant_a), "b": bearer_client(user_b, tenant_b)}
    before = {
        "counts": _counts(settings.DATABASES["admin"]),
        "blobs": _blob_digests(settings.BLOB_STORAGE_DIR),
        "download_a": _download(clients["a"], attachment_a.id),
        "download_b": _download(clients["b"], attachment_b.id),
        "search_a": _search(clients["a"], "zeppelin"),
        "search_b": _search(clients["b"], "quokka"),
        "search_shared_a": _search(clients["a"], "shared"),
    }
    assert before["download_a"] == pdf_a
    assert before["search_a"] == ["zeppelin notes", "zeppelin report"]
    assert before["counts"][str(tenant_a.id)]["email_messages"] == 3
    assert before["counts"][str(tenant_b.id)]["email_attachments"] == 1
    key_file = tmp_path / "backup.key"
    key_file.write_bytes(KEY + b"\n")
    archive = tmp_path / "archives" / "email.backup"
    archive.parent.mkdir()
    out = io.StringIO()

    call_command("backup", str(archive), "--encrypt-key-file", str(key_file), stdout=out)

    assert "encrypted): 2 tenants" in out.getvalue()
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert archive.read_bytes().startswith(b"EMAILCLIENT-BACKUP\x00")
    # pg_dump compresses, so a plaintext word proves nothing: the archive is
    # no tar stream without the key, and no stored blob's bytes are in it.
    assert not tarfile.is_tarfile(archive)
    sealed = archive.read_bytes()
    stored = [path.read_bytes() for path in Path(settings.BLOB_STORAGE_DIR).rglob("*.gz")]
    assert len(stored) >= 4
    assert not [blob for blob in stored if blob[10:42] in sealed]
    plain = tmp_path / "plain.backup"
    call_command("backup", str(plain), "--no-encrypt", stdout=io.StringIO())
    assert all(blob[10:42] in plain.read_bytes() for blob in stored)  # the check can fail
    target = _target()
    restored_root = tmp_path / "restored-blobs"

    result = archive_restore(source=archive, databases=target, blob_root=restored_root, key=KEY)

    manifest = result.manifest
    assert manifest["tenants"][str(tenant_a.id)]["slug"] == "tenant-a"
    assert manifest["blobs"]["count"] == len(before["blobs"]) == result.blobs
    assert _counts(target["admin"]) == before["counts"]
    assert _blob_digests(restored_root) == before["blobs"]
    assert set(os.listdir(restored_root)) == {str(tenant_a.id), str(tenant_b.id)}  # no staging left
    with _served_from(target, restored_root):
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT current_database()")
            assert cursor.fetchone() == (RESTORED,)
        assert _download(clients["a"], attachment_a.id) == before["download_a"]
        assert _download(clients["b"], attachment_b.id) == before["download_b"]
        assert _search(clients["a"], "zeppelin") == before["search_a"]
        assert _search(clients["b"], "quokka") == before["search_b"]
        assert _search(clients["a"], "shared") == before["search_shared_a"] == ["shared subject"]
        # Another tenant's attachment is a 404 in the restored service too.
        assert clients["a"].get(f"/api/attachments/{attachment_b.id}/download").status_code == 404
    # Row-level security holds for the runtime role in the restored database.
    with _connect(target["default"]) as conn:
        assert conn.execute("SELECT count(*) FROM email_messages").fetchone() == (0,)
        conn.execute("SELECT set_config('app.current_tenant_id', %s, false)", [str(tenant_a.id)])
        assert conn.execute("SELECT count(*) FROM email_messages").fetchone() == (3,)
        assert conn.execute(
            "SELECT count(*) FROM email_messages WHERE tenant_id = %s", [tenant_b.id]
        ).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM email_attachments").fetchone() == (1,)


@pytest.fixture
def small_archive(committed_db, blobs, tenant_a, tenant_b, tmp_path):
    """An unencrypted archive of two tenants with an account and a blob each."""
    EmailAccountFactory(tenant=tenant_a, email_address="a@a.example")
    EmailAccountFactory(tenant=tenant_b, email_address="b@b.example")
    blobs.put(tenant_a.id, b"raw message of tenant a\n" * 100)
    blobs.put(tenant_b.id, b"attachment of tenant b\n" * 100)
    archive = tmp_path / "small.backup"
    archive_create(output=archive, databases=settings.DATABASES, blob_root=blobs.root)
    return archive


def test_restore_refuses_a_database_or_blob_folder_that_is_not_empty(small_archive, blobs, tmp_path):
    # The suite's own database has tables: refused before anything is read.
    with pytest.raises(CommandError, match=r"database .* is not empty: restore only into a new database"):
        call_command("restore", str(small_archive))
    target = _target()
    full = tmp_path / "full"
    (full / "something").mkdir(parents=True)
    with pytest.raises(BackupError, match=r"blob folder .*full is not empty \(1 entries, e.g. something\)"):
        archive_restore(source=small_archive, databases=target, blob_root=full)
    assert _table_count(target["owner"]) == 0
    assert os.listdir(full) == ["something"]
    # Empty both: it goes through, and the database then counts as not empty.
    empty = tmp_path / "empty"
    archive_restore(source=small_archive, databases=target, blob_root=empty)
    assert _table_count(target["owner"]) > 0
    with pytest.raises(BackupError, match="is not empty"):
        archive_restore(source=small_archive, databases=target, blob_root=tmp_path / "other")


def _flipped(archive: Path, offset: int, out: Path) -> Path:
    data = bytearray(archive.read_bytes())
    data[offset] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def test_a_tampered_or_truncated_archive_is_refused_before_anything_is_restored(small_archive, tmp_path):
    target = _target()
    data = small_archive.read_bytes()
    blob_offset = data.index(b"\x1f\x8b", data.index(b"blobs/")) + 12  # inside the first blob's gzip data
    tampered = _flipped(small_archive, blob_offset, tmp_path / "tampered.backup")
    truncated = tmp_path / "truncated.backup"
    truncated.write_bytes(data[: len(data) // 2])
    root = tmp_path / "blobs-restored"

    with pytest.raises(BackupError, match=r"blobs .* differ from the manifest's .*nothing was restored"):
        archive_restore(source=tampered, databases=target, blob_root=root)
    with pytest.raises(BackupError, match="truncated"):
        archive_restore(source=truncated, databases=target, blob_root=root)

    assert _table_count(target["owner"]) == 0
    assert os.listdir(root) == []
    archive_restore(source=small_archive, databases=target, blob_root=root)  # the original restores


def test_an_encrypted_archive_needs_its_key_and_refuses_tampering(committed_db, blobs, tenant_a, tmp_path):
    EmailAccountFactory(tenant=tenant_a, email_address="a@a.example")
    blobs.put(tenant_a.id, os.urandom(3 * 1024 * 1024))  # several chunks
    archive = tmp_path / "enc.backup"
    archive_create(output=archive, databases=settings.DATABASES, blob_root=blobs.root, key=KEY)
    data = archive.read_bytes()
    target = _target()
    root = tmp_path / "restored"
    tampered = _flipped(archive, len(data) // 2, tmp_path / "tampered.backup")
    cut = tmp_path / "cut.backup"
    cut.write_bytes(data[: _HEADER_LEN + 2 * (1024 * 1024 + 16)])  # two whole chunks, no last

    with pytest.raises(BackupError, match="wrong encryption key for this archive"):
        archive_restore(source=archive, databases=target, blob_root=root, key=b"not the key, though long")
    with pytest.raises(BackupError, match="the archive is encrypted: give its key"):
        archive_restore(source=archive, databases=target, blob_root=root)
    with pytest.raises(BackupError, match=r"damaged or was tampered with \(chunk 1 fails authentication\)"):
        archive_restore(source=tampered, databases=target, blob_root=root, key=KEY)
    with pytest.raises(BackupError, match="truncated"):
        archive_restore(source=cut, databases=target, blob_root=root, key=KEY)
    assert _table_count(target["owner"]) == 0
    assert os.listdir(root) == []

    os.environ["BACKUP_ENCRYPTION_KEY"] = KEY.decode()
    try:
        with _target_settings(target, root):
            out, err = io.StringIO(), io.StringIO()
            call_command("restore", str(archive), stdout=out, stderr=err)
    finally:
        del os.environ["BACKUP_ENCRYPTION_KEY"]
    assert _counts(target["admin"])[str(tenant_a.id)]["email_accounts"] == 1
    assert "Restored" in out.getvalue()
    assert "1 tenants, 1 blobs" in out.getvalue()
    assert "migrations" not in out.getvalue() + err.getvalue()  # the same code made it


@contextlib.contextmanager
def _target_settings(target: dict, root: Path):
    saved, saved_root = settings.DATABASES, settings.BLOB_STORAGE_DIR
    settings.DATABASES, settings.BLOB_STORAGE_DIR = target, root
    try:
        yield
    finally:
        settings.DATABASES, settings.BLOB_STORAGE_DIR = saved, saved_root


def test_the_archive_is_mode_0600_whatever_the_umask(committed_db, blobs, tenant_a, tmp_path):
    blobs.put(tenant_a.id, b"x" * 1000)
    previous = os.umask(0)
    try:
        archive = tmp_path / "open.backup"
        archive_create(output=archive, databases=settings.DATABASES, blob_root=blobs.root)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["blobs", "open.backup"]  # no dump or partial left
    with pytest.raises(BackupError, match="exists: a backup never overwrites an archive"):
        archive_create(output=archive, databases=settings.DATABASES, blob_root=blobs.root)


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_scheduled_backups_keep_the_newest_and_prune_only_after_a_complete_one(
    committed_db, blobs, tenant_a, settings, tmp_path
):
    blobs.put(tenant_a.id, b"y" * 1000)
    settings.BACKUP_DIR = tmp_path / "backups"
    settings.BACKUP_KEEP = 2
    settings.BACKUP_ENCRYPTION_KEY_FILE = None
    made = []
    for _run in range(3):
        report = backup_scheduled_task()
        assert report["result"] == "done"
        made.append(report["archive"])
    assert report["pruned"] == [made[0]]
    assert sorted(os.listdir(settings.BACKUP_DIR)) == [".lock", made[1], made[2]]

    # A backup that fails (the admin role cannot reach its database) removes nothing.
    settings.DATABASES = {
        **settings.DATABASES,
        "admin": {**settings.DATABASES["admin"], "NAME": "no_such_db"},
    }
    with pytest.raises(BackupError, match="cannot connect to database no_such_db"):
        backup_scheduled_task()
    assert sorted(os.listdir(settings.BACKUP_DIR)) == [".lock", made[1], made[2]]


def test_the_beat_entry_exists_only_with_a_backup_folder():
    script = (
        "import django; django.setup(); from django.conf import settings; "
        "e = settings.CELERY_BEAT_SCHEDULE.get('core-backup'); "
        "print(e and (e['task'], str(e['schedule'])))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "emailclient.settings.test"}
    env.pop("BACKUP_DIR", None)
    off = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert off.stdout.strip() == "None"
    on = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "BACKUP_DIR": "/srv/backups", "BACKUP_SCHEDULE": "15 4 * * 0"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        on.stdout.strip()
        == "('emailclient.core.tasks.backup_scheduled', '<crontab: 15 4 * * 0 (m/h/dM/MY/d)>')"
    )


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_a_scheduled_backup_into_a_folder_it_cannot_write_fails_with_a_clear_error(
    committed_db, blobs, settings, tmp_path, caplog
):
    """E.g. a volume Docker made root's: an OSError, said as a BackupError and logged."""
    (tmp_path / "not-a-folder").write_bytes(b"")
    settings.BACKUP_DIR = tmp_path / "not-a-folder" / "backups"
    settings.BACKUP_ENCRYPTION_KEY_FILE = None
    with (
        caplog.at_level("ERROR", logger="emailclient.core.tasks"),
        pytest.raises(BackupError, match=r"cannot write in .*not-a-folder/backups: Not a directory"),
    ):
        backup_scheduled_task()
    assert "scheduled backup failed: cannot write in" in caplog.text


def test_tarfile_keeps_no_list_of_every_blob_written_or_read(
    committed_db, blobs, tenant_a, tmp_path, monkeypatch
):
    """tarfile appends each member to `members` (~420 bytes a blob): 500,000
    blobs held 222 MB. Both ways, the list stays at one or two entries."""
    for number in range(300):
        blobs.put(tenant_a.id, f"blob {number}".encode())
    lengths: list[int] = []
    addfile, next_member = tarfile.TarFile.addfile, tarfile.TarFile.next

    def addfile_spy(self, *args, **kwargs):
        lengths.append(len(self.members))
        return addfile(self, *args, **kwargs)

    def next_spy(self):
        lengths.append(len(self.members))
        return next_member(self)

    monkeypatch.setattr(tarfile.TarFile, "addfile", addfile_spy)
    monkeypatch.setattr(tarfile.TarFile, "next", next_spy)
    archive = tmp_path / "many.backup"
    result = archive_create(output=archive, databases=settings.DATABASES, blob_root=blobs.root)
    assert result.blobs == 300
    assert len(lengths) == 302 and max(lengths) <= 2
    lengths.clear()
    restored = archive_restore(source=archive, databases=_target(), blob_root=tmp_path / "restored")
    assert restored.blobs == 300
    assert len(lengths) >= 302 and max(lengths) <= 2


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_the_plain_dump_is_never_in_the_backup_folder_and_killed_runs_partials_go(
    committed_db, blobs, tenant_a, settings, tmp_path, monkeypatch
):
    blobs.put(tenant_a.id, b"z" * 100)
    settings.BACKUP_DIR = folder = tmp_path / "backups"
    settings.BACKUP_KEEP = 3
    settings.BACKUP_ENCRYPTION_KEY_FILE = None
    folder.mkdir()
    # A run killed (SIGKILL: no clean-up) left its partial archive; another file is not ours.
    killed = folder / "email-20260101T023000123456Z.backup.partial"
    killed.write_bytes(b"half an archive")
    (folder / "notes.partial").write_bytes(b"the operator's")
    seen = {}
    dump_to = backup_module.backup_database

    def dump_spy(*, output, **kwargs):
        seen["folder"], seen["mode"] = output.parent, stat.S_IMODE(output.parent.stat().st_mode)
        seen["backup folder"] = sorted(os.listdir(folder))
        return dump_to(output=output, **kwargs)

    monkeypatch.setattr(backup_module, "backup_database", dump_spy)
    report = backup_scheduled_task()
    assert report["result"] == "done"
    assert seen["folder"].parent == Path(tempfile.gettempdir())
    assert seen["mode"] == 0o700
    assert seen["backup folder"] == [".lock", f"{report['archive']}.partial", "notes.partial"]
    assert not seen["folder"].exists()  # removed with the dump
    assert sorted(os.listdir(folder)) == [".lock", report["archive"], "notes.partial"]


def _privileges(db: dict) -> dict:
    roles = [settings.DATABASES[alias]["USER"] for alias in ("default", "admin", "owner")]
    with _connect(db) as conn:
        got = {}
        for role in roles:
            for view in ("pg_connection_stats", "pg_long_queries"):
                got[role, view] = conn.execute(
                    "SELECT has_table_privilege(%s, %s, 'SELECT'), has_table_privilege(%s, %s, 'INSERT'), "
                    "has_table_privilege(%s, %s, 'DELETE')",
                    [role, view] * 3,
                ).fetchone()
            got[role, "pg_table_bloat_status()"] = conn.execute(
                "SELECT has_function_privilege(%s, 'pg_table_bloat_status()', 'EXECUTE')", [role]
            ).fetchone()
        got["acl"] = conn.execute(
            "SELECT proacl IS NOT NULL FROM pg_proc WHERE proname = 'pg_table_bloat_status'"
        ).fetchone()
    return got


def test_the_monitoring_views_grants_survive_a_round_trip(small_archive, tmp_path):
    """core.0006: the monitoring views and function are the admin role's
    only; the dump has no privileges, so the restore applies them again."""
    before = _privileges(settings.DATABASES["admin"])
    runtime = settings.DATABASES["default"]["USER"]
    assert before[runtime, "pg_connection_stats"] == (False, False, False)
    assert before[runtime, "pg_table_bloat_status()"] == (False,)
    target = _target()
    archive_restore(source=small_archive, databases=target, blob_root=tmp_path / "restored")
    assert _privileges(target["admin"]) == before


def test_blob_gc_deletes_nothing_while_a_backup_holds_the_lock(committed_db, blobs, tenant_a, caplog):
    key = blobs.put(tenant_a.id, b"named by the backup's snapshot, deleted since")
    then = time.time() - 2 * 24 * 3600
    os.utime(blobs.path(tenant_a.id, key), (then, then))
    with _connect(settings.DATABASES["admin"]) as backup_conn:
        backup_conn.autocommit = True
        blob_gc_lock_wait(backup_conn.cursor())  # what archive_create holds for its run
        with caplog.at_level("WARNING", logger="messages.blob_gc"):
            report = blob_garbage_collect(store=blobs, min_age=24 * 3600)
        assert (report.removed, report.blobs) == (0, 0)
        assert "blob garbage collection skipped: a backup is running" in caplog.text
        assert blobs.path(tenant_a.id, key).exists()
        blob_gc_lock_release(backup_conn.cursor())  # the backup is done
    assert blob_garbage_collect(store=blobs, min_age=24 * 3600).removed == 1
    assert not blobs.path(tenant_a.id, key).exists()


def _rewritten(archive: Path, out: Path, *, manifest_edit=None, entries=()) -> Path:
    """A copy of an unencrypted archive with its manifest edited and `entries`
    (TarInfo, bytes) added before it."""
    with tarfile.open(archive, mode="r|") as source, tarfile.open(out, mode="w|") as tar:
        for member in source:
            data = source.extractfile(member).read()
            if member.name == "manifest.json":
                for info, content in entries:
                    tar.addfile(info, io.BytesIO(content))
                if manifest_edit is not None:
                    manifest = json.loads(data)
                    manifest_edit(manifest)
                    data = json.dumps(manifest).encode()
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return out


def _entry(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE) -> tuple:
    info = tarfile.TarInfo(name)
    info.size, info.type = (len(data) if kind == tarfile.REGTYPE else 0), kind
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info, data


def test_crafted_entries_and_bad_manifests_are_refused_before_the_database(small_archive, tmp_path):
    target = _target()
    root = tmp_path / "restored"
    with tarfile.open(small_archive, mode="r|") as tar:
        blob_name = next(member.name for member in tar if member.name.startswith("blobs/"))
    tenant, shard, file = blob_name.split("/")[1:]
    other_shard = "00" if shard != "00" else "01"
    crafted = {
        "blobs/../../escape.gz": _entry("blobs/../../escape.gz"),
        "/etc/cron.d/x": _entry("/etc/cron.d/x"),
        "a symlink": _entry(f"blobs/{tenant}/{shard}/{'e' * 64}.gz", kind=tarfile.SYMTYPE),
        "another shard": _entry(f"blobs/{tenant}/{other_shard}/{file}"),
    }
    for label, entry in crafted.items():
        bad = _rewritten(small_archive, tmp_path / "crafted.backup", entries=[entry])
        with pytest.raises(BackupError, match="the archive holds an unexpected entry"):
            archive_restore(source=bad, databases=target, blob_root=root)
        assert not (tmp_path / "escape.gz").exists(), label
    duplicate = _rewritten(
        small_archive, tmp_path / "duplicate.backup", entries=[_entry(blob_name, b"again")]
    )
    with pytest.raises(BackupError, match=f"the archive holds {file} twice: refused, nothing was restored"):
        archive_restore(source=duplicate, databases=target, blob_root=root)
    as_list = tmp_path / "list.backup"
    with tarfile.open(as_list, mode="w|") as tar:
        info, data = _entry("manifest.json", b"[1, 2]")
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(BackupError, match="manifest is not a JSON object"):
        archive_restore(source=as_list, databases=target, blob_root=root)
    no_blobs = _rewritten(small_archive, tmp_path / "keys.backup", manifest_edit=lambda m: m.pop("blobs"))
    with pytest.raises(BackupError, match="manifest lacks keys or has the wrong types"):
        archive_restore(source=no_blobs, databases=target, blob_root=root)
    assert _table_count(target["owner"]) == 0
    assert os.listdir(root) == []


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_an_archive_from_a_newer_version_is_refused_unless_forced(small_archive, tenant_a, tmp_path):
    newer = _rewritten(
        small_archive,
        tmp_path / "newer.backup",
        manifest_edit=lambda m: m["migrations"].append("core.9999_from_the_future"),
    )
    target = _target()
    root = tmp_path / "restored"
    with _target_settings(target, root):
        with pytest.raises(
            CommandError, match=r"newer version: 1 migrations unknown .*core.9999_from_the_future"
        ):
            call_command("restore", str(newer))
        assert _table_count(target["owner"]) == 0
        out, err = io.StringIO(), io.StringIO()
        call_command("restore", str(newer), "--force", stdout=out, stderr=err)
    assert "Restored" in out.getvalue()
    assert "The archive comes from a newer version: 1 migrations" in err.getvalue()
    assert _counts(target["admin"])[str(tenant_a.id)]["email_accounts"] == 1


def test_restored_row_counts_that_differ_from_the_manifest_are_refused(small_archive, tenant_a, tmp_path):
    def more_accounts(manifest):
        manifest["tenants"][str(tenant_a.id)]["rows"]["email_accounts"] = 2

    lying = _rewritten(small_archive, tmp_path / "lying.backup", manifest_edit=more_accounts)
    root = tmp_path / "restored"
    with pytest.raises(BackupError, match=r"row counts differ from the manifest's \(.*/email_accounts\)"):
        archive_restore(source=lying, databases=_target(), blob_root=root)
    assert os.listdir(root) == []  # the blobs not moved into place


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_retention_prunes_only_our_archives_never_the_new_one_and_a_busy_run_waits(
    committed_db, blobs, tenant_a, settings, tmp_path
):
    blobs.put(tenant_a.id, b"r" * 100)
    settings.BACKUP_DIR = folder = tmp_path / "backups"
    settings.BACKUP_ENCRYPTION_KEY_FILE = None
    folder.mkdir()
    ours = "email-20200101T000000000000Z.backup"
    theirs = ["email-old.backup", "email-20200101T000000000000Z.backup.bak", "email-manual.backup"]
    for name in [ours, *theirs]:
        (folder / name).write_bytes(b"an archive")
    settings.BACKUP_KEEP = 1
    report = backup_scheduled_task()
    assert report["pruned"] == [ours]
    assert sorted(os.listdir(folder)) == sorted([".lock", report["archive"], *theirs])

    settings.BACKUP_KEEP = 0
    with pytest.raises(BackupError, match="keep at least one archive"):
        backup_scheduled_task()
    assert sorted(os.listdir(folder)) == sorted([".lock", report["archive"], *theirs])

    settings.BACKUP_KEEP = 1
    with open(folder / ".lock", "rb") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run's
        assert backup_scheduled_task() == {"result": "busy"}
    assert sorted(os.listdir(folder)) == sorted([".lock", report["archive"], *theirs])


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_the_backup_command_encrypts_with_the_settings_key_file_unless_told_not(
    committed_db, blobs, tenant_a, settings, tmp_path
):
    blobs.put(tenant_a.id, b"k" * 100)
    key_file = tmp_path / "backup.key"
    key_file.write_bytes(KEY)
    settings.BACKUP_ENCRYPTION_KEY_FILE = key_file
    call_command("backup", str(tmp_path / "default.backup"), stdout=io.StringIO())
    call_command("backup", str(tmp_path / "plain.backup"), "--no-encrypt", stdout=io.StringIO())
    assert (tmp_path / "default.backup").read_bytes().startswith(b"EMAILCLIENT-BACKUP\x00")
    assert tarfile.is_tarfile(tmp_path / "plain.backup")
    with pytest.raises(CommandError, match="does not exist"):
        call_command("backup", str(tmp_path / "nowhere" / "x.backup"), stdout=io.StringIO())


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BACKUP_SCHEDULE", "30 2 * *", "BACKUP_SCHEDULE='30 2 * *': five crontab fields"),
        ("BACKUP_TASK_TIME_LIMIT", "300", "BACKUP_TASK_TIME_LIMIT=300: more than 300 seconds"),
        ("BACKUP_KEEP", "0", "BACKUP_KEEP=0: keep at least one archive"),
    ],
)
def test_bad_backup_settings_are_refused_clearly_at_start(variable, value, message):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "emailclient.settings.test", variable: value}
    env["BACKUP_DIR"] = "/srv/backups"
    run = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode != 0
    assert f"django.core.exceptions.ImproperlyConfigured: {message}" in run.stderr


def test_the_snapshot_transaction_draws_no_server_warning(
    committed_db, blobs, tenant_a, tmp_path, monkeypatch
):
    """A BEGIN inside psycopg's implicit transaction drew "there is already a
    transaction in progress"; the isolation level is set on the connection."""
    notices: list[str] = []
    connect = backup_module._connect

    def connect_spy(db, **kwargs):
        conn = connect(db, **kwargs)
        conn.add_notice_handler(lambda diag: notices.append(f"{diag.severity}: {diag.message_primary}"))
        return conn

    monkeypatch.setattr(backup_module, "_connect", connect_spy)
    blobs.put(tenant_a.id, b"n" * 100)
    result = archive_create(
        output=tmp_path / "quiet.backup", databases=settings.DATABASES, blob_root=blobs.root
    )
    assert result.blobs == 1
    assert notices == []
