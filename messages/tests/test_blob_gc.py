"""Blob garbage collection: what no row refers to and nothing wrote lately goes;
everything else stays, whichever tenant, whatever races with it."""

import os
import time
import uuid

import pytest
from django.core.management import CommandError, call_command

from emailclient.core.tenancy import tenant_scope
from messages.blob_gc import blob_garbage_collect
from messages.blobs import BlobStore
from messages.models import QuarantinedMessage
from messages.tasks import blob_gc_task
from messages.tests.factories import AttachmentFactory, FolderFactory, MessageFactory

DAY = 86_400


@pytest.fixture
def store(settings, tmp_path):
    settings.BLOB_STORAGE_DIR = tmp_path / "blobs"
    return BlobStore(settings.BLOB_STORAGE_DIR)


def put(store: BlobStore, tenant_id, text: str, *, age: float = 2 * DAY) -> str:
    key = store.put(tenant_id, text.encode())
    then = time.time() - age
    os.utime(store.path(tenant_id, key), (then, then))
    return key


def stored(store: BlobStore, tenant_id) -> set[str]:
    return {blob.key for blob in store.blobs(tenant_id)}


@pytest.mark.django_db
def test_unreferenced_old_blobs_go_and_everything_else_stays(store, tenant_a, tenant_b):
    folder = FolderFactory(tenant=tenant_a)
    raw = put(store, tenant_a.id, "raw source")
    attached = put(store, tenant_a.id, "attachment")
    quarantined = put(store, tenant_a.id, "not mail")
    put(store, tenant_a.id, "source of an expunged message")
    fresh_orphan = put(store, tenant_a.id, "written a minute ago", age=60)
    message = MessageFactory(folder=folder, raw_blob_key=raw, content_hash=raw)
    MessageFactory(folder=folder, raw_blob_key=raw, content_hash=raw)  # the same mail twice
    AttachmentFactory(message=message, content_hash=attached)
    AttachmentFactory(message=message, content_hash=raw)  # a forwarded copy of it, attached
    with tenant_scope(tenant_a.id):
        QuarantinedMessage.objects.create(
            tenant=tenant_a,
            account=folder.account,
            folder=folder,
            imap_uid=9,
            uidvalidity=1,
            reason="not mail",
            raw_blob_key=quarantined,
        )
    # Tenant B holds the same bytes as tenant A's message, and no row of its
    # own refers to them: A's reference does not keep B's copy.
    assert put(store, tenant_b.id, "raw source") == raw

    report = blob_garbage_collect(store=store, min_age=DAY)

    assert stored(store, tenant_a.id) == {raw, attached, quarantined, fresh_orphan}
    assert stored(store, tenant_b.id) == set()
    assert (report.blobs, report.kept_referenced, report.kept_recent, report.removed) == (6, 3, 1, 2)
    assert report.removed_bytes > 0
    assert sorted(report.tenants) == sorted([tenant_a.id, tenant_b.id])
    with tenant_scope(tenant_a.id):
        assert store.get(tenant_a.id, raw) == b"raw source"


@pytest.mark.django_db
def test_a_dry_run_counts_and_removes_nothing(store, tenant_a):
    put(store, tenant_a.id, "orphan one")
    put(store, tenant_a.id, "orphan two")
    report = blob_garbage_collect(store=store, min_age=DAY, dry_run=True)
    assert report.removed == 2
    assert len(stored(store, tenant_a.id)) == 2
    assert "2 to remove" in str(report)


@pytest.mark.django_db
def test_a_deleted_tenants_blobs_go(store):
    gone = uuid.uuid4()  # a folder whose tenant row no longer exists
    put(store, gone, "left behind")
    (store.root / "not-a-tenant").mkdir()
    report = blob_garbage_collect(store=store, min_age=DAY)
    assert report.tenants == [gone]
    assert report.removed == 1
    assert stored(store, gone) == set()
    assert (store.root / "not-a-tenant").is_dir()


@pytest.mark.django_db
def test_putting_a_blob_again_makes_it_recent(store, tenant_a):
    """The sync reuses a stored blob for a new row (the same attachment
    again): its put refreshes the time, so a collection running before that
    row commits spares it."""
    key = put(store, tenant_a.id, "the same attachment")
    store.put(tenant_a.id, b"the same attachment")
    report = blob_garbage_collect(store=store, min_age=DAY)
    assert (report.removed, report.kept_recent) == (0, 1)
    assert stored(store, tenant_a.id) == {key}


@pytest.mark.django_db
def test_a_blob_put_again_while_the_collection_looks_at_it_stays(store, tenant_a, monkeypatch):
    """The race: listed as old and unreferenced, then put again by a sync
    before the collection removes it."""
    key = put(store, tenant_a.id, "reused mid-collection")
    discard = store.discard

    def put_first(blob, *, unused_since):
        store.put(tenant_a.id, b"reused mid-collection")
        return discard(blob, unused_since=unused_since)

    monkeypatch.setattr(store, "discard", put_first)
    report = blob_garbage_collect(store=store, min_age=DAY)
    assert (report.removed, report.kept_recent) == (0, 1)
    assert store.get(tenant_a.id, key) == b"reused mid-collection"
    assert not list(store.root.rglob("*.gc")), "nothing left aside"


@pytest.mark.django_db
def test_the_store_lists_blobs_in_key_order_and_skips_what_is_not_a_blob(store, tenant_a):
    keys = [put(store, tenant_a.id, f"blob {n}") for n in range(40)]
    shard = store.path(tenant_a.id, keys[0]).parent
    (shard / f".{keys[0]}.123.456.tmp").write_bytes(b"a write in progress")
    (shard / "README").write_text("not a blob")
    assert [blob.key for blob in store.blobs(tenant_a.id)] == sorted(keys)


@pytest.mark.django_db
def test_the_command(store, tenant_a, capsys):
    put(store, tenant_a.id, "orphan")
    call_command("gcblobs", "--dry-run", "--tenant", "tenant-a")
    assert "Dry run, nothing removed: 1 blobs in 1 tenant folders" in capsys.readouterr().out
    call_command("gcblobs")
    assert "1 removed" in capsys.readouterr().out
    assert stored(store, tenant_a.id) == set()
    with pytest.raises(CommandError, match="at least 1"):
        call_command("gcblobs", "--min-age-hours", "0.5")
    with pytest.raises(CommandError, match="No tenant"):
        call_command("gcblobs", "--tenant", "nobody")


@pytest.mark.django_db
def test_a_blob_put_while_it_is_set_aside_is_written_again(store, tenant_a, monkeypatch):
    """The other interleaving: the sync's put comes after the collection
    renamed the blob aside, finds no file and writes it again."""
    key = put(store, tenant_a.id, "reused while aside")
    rename = os.rename

    def rename_then_put(source, target):
        rename(source, target)
        if str(target).endswith(".gc"):
            store.put(tenant_a.id, b"reused while aside")

    monkeypatch.setattr(os, "rename", rename_then_put)
    blob_garbage_collect(store=store, min_age=DAY)
    monkeypatch.undo()
    assert store.get(tenant_a.id, key) == b"reused while aside"
    assert not list(store.root.rglob("*.gc"))


@pytest.mark.django_db
def test_a_blob_set_aside_is_put_back_whatever_interrupts_the_collection(store, tenant_a, monkeypatch):
    key = put(store, tenant_a.id, "interrupted")
    stat = os.stat

    def interrupted(path, *args, **kwargs):
        if str(path).endswith(".gc"):
            raise KeyboardInterrupt
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", interrupted)
    with pytest.raises(KeyboardInterrupt):
        blob_garbage_collect(store=store, min_age=DAY)
    monkeypatch.undo()
    assert store.get(tenant_a.id, key) == b"interrupted"
    assert not list(store.root.rglob("*.gc"))


@pytest.mark.django_db
def test_blobs_a_killed_collection_left_aside_are_put_back(store, tenant_a):
    folder = FolderFactory(tenant=tenant_a)
    kept = put(store, tenant_a.id, "in use, left aside by a killed collection")
    MessageFactory(folder=folder, raw_blob_key=kept, content_hash=kept)
    path = store.path(tenant_a.id, kept)
    os.rename(path, f"{path}.{uuid.uuid4().hex}.gc")
    report = blob_garbage_collect(store=store, min_age=DAY)
    assert report.restored == 1
    assert "1 put back" in str(report)
    assert store.get(tenant_a.id, kept) == b"in use, left aside by a killed collection"
    assert not list(store.root.rglob("*.gc"))


def test_every_tenant_is_collected_in_its_own_committed_transaction(committed_db, store, tenant_a, tenant_b):
    """As in production, each tenant's scope commits: the references' cursor
    of one tenant must be closed before the next tenant's transaction."""
    for tenant in (tenant_a, tenant_b):
        folder = FolderFactory(tenant=tenant)
        for n in range(3):
            key = put(store, tenant.id, f"{tenant.slug} message {n}")
            MessageFactory(folder=folder, raw_blob_key=key, content_hash=key)
        put(store, tenant.id, f"{tenant.slug} orphan")
    report = blob_garbage_collect(store=store, min_age=DAY)
    assert (report.blobs, report.kept_referenced, report.removed) == (8, 6, 2)


@pytest.mark.django_db
def test_the_task_for_a_schedule(store, tenant_a):
    put(store, tenant_a.id, "orphan")
    put(store, tenant_a.id, "orphan, but recent", age=60)
    result = blob_gc_task(min_age_hours="12")  # as a worker runs it, with kwargs typed in the admin
    assert (result["blobs"], result["removed"], result["kept_recent"]) == (2, 1, 1)
    with pytest.raises(ValueError, match="at least 1"):
        blob_gc_task(min_age_hours=0.1)


@pytest.mark.django_db
def test_temporary_files_of_unfinished_writes_go_once_old(store, tenant_a):
    # A sync killed between its deferred writes and their flush leaves them.
    old_key = BlobStore(store.root).put(tenant_a.id, b"killed before its flush", deferred=True)
    new_key = store.put(tenant_a.id, b"still to be flushed", deferred=True)
    [old_tmp] = [p for p in store.root.rglob("*.tmp") if old_key in p.name]
    then = time.time() - 2 * DAY
    os.utime(old_tmp, (then, then))

    report = blob_garbage_collect(store=store, min_age=DAY)

    assert report.temporaries_removed == 1
    assert "1 unfinished writes' temporary files removed" in str(report)
    assert not old_tmp.exists()
    store.flush()  # the recent one was left alone
    assert store.get(tenant_a.id, new_key) == b"still to be flushed"
