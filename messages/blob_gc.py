"""Garbage collection of blob storage.

Blobs are shared (content-addressed per tenant) and written before the rows
that refer to them commit, so nothing removes them when a message goes: a
message expunged on the server, deleted for good through the API, a
re-parsed quarantine entry or a deleted tenant leaves its raw source and
attachments on disk. `blob_garbage_collect()` removes, tenant by tenant, each
blob that no message, attachment or quarantine entry (nor a row of a table
an app above registered, e.g. drafts' uploads) refers to and that was
neither written nor put again for `min_age` (see `messages.blobs`): the age
keeps it off the blobs of a sync still writing its rows.

The references are read as one sorted stream per tenant (a server-side
cursor) and merged with the store's blobs in key order, so memory stays
flat however large the tenant; the cost is one read of the tenant's
message rows and a sort of their keys (27 s for a tenant of 1,000,000
messages on the read benchmark's database).
"""

import contextlib
import logging
import re
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field

from django.db import connection

from emailclient.core.blob_lock import blob_gc_lock_try
from emailclient.core.tenancy import tenant_scope

from .blobs import BlobStore

logger = logging.getLogger(__name__)

# Every blob key a tenant's rows refer to, in byte order (the store's order:
# keys are lowercase hex), duplicates included: the merge below skips them.
# UNION ALL and one sort in the C collation: UNION's own de-duplicating sort
# in the database's collation took 200 s for 1,187,516 keys of a
# 1,000,000-message tenant (bench database), this 27 s.
# The mail store's own references; apps above it add theirs with
# `blob_references_register()` (this layer may not import them).
_REFERENCES: list[tuple[str, str]] = [
    ("email_messages", "raw_blob_key"),
    ("email_attachments", "content_hash"),
    ("email_quarantine", "raw_blob_key"),
]
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def blob_references_register(table: str, column: str) -> None:
    """Count `table.column` (a tenant-scoped table, a blob key or '' per row)
    among the references that keep a blob: for apps above the mail store,
    from their `AppConfig.ready()`. Registering a pair twice is a no-op."""
    if not (_IDENTIFIER.fullmatch(table) and _IDENTIFIER.fullmatch(column)):
        raise ValueError(f"not a plain SQL identifier: {table}.{column}")
    if (table, column) not in _REFERENCES:
        _REFERENCES.append((table, column))


def _referenced_keys_sql() -> str:
    # The names are checked identifiers (above), never input.
    selects = "\n        UNION ALL\n".join(
        f"        SELECT {column} FROM {table} WHERE tenant_id = %(tenant)s AND {column} <> ''"  # noqa: S608
        for table, column in _REFERENCES
    )
    return f'SELECT key FROM (\n{selects}\n) AS referenced (key) ORDER BY key COLLATE "C"'  # noqa: S608


# Below an hour, a sync still writing the rows of its blobs could lose them.
MIN_AGE_HOURS = 1


@dataclass
class BlobGcReport:
    blobs: int = 0
    kept_referenced: int = 0
    kept_recent: int = 0
    removed: int = 0
    removed_bytes: int = 0
    restored: int = 0  # set aside by a collection that was killed, put back
    temporaries_removed: int = 0  # of writes a killed sync never finished
    tenants: list[uuid.UUID] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict:
        return {
            "blobs": self.blobs,
            "kept_referenced": self.kept_referenced,
            "kept_recent": self.kept_recent,
            "removed": self.removed,
            "removed_bytes": self.removed_bytes,
            "restored": self.restored,
            "temporaries_removed": self.temporaries_removed,
            "tenants": len(self.tenants),
            "dry_run": self.dry_run,
        }

    def __str__(self) -> str:
        removed = "to remove" if self.dry_run else "removed"
        return (
            f"{self.blobs} blobs in {len(self.tenants)} tenant folders: {self.kept_referenced} in use, "
            f"{self.kept_recent} unused but recent, {self.removed} {removed} ({self.removed_bytes} bytes)"
            + (f"; {self.restored} put back from a killed collection" if self.restored else "")
            + (
                f"; {self.temporaries_removed} unfinished writes' temporary files removed"
                if self.temporaries_removed
                else ""
            )
        )


def blob_garbage_collect(
    *, store: BlobStore, min_age: float, dry_run: bool = False, tenant_ids: list[uuid.UUID] | None = None
) -> BlobGcReport:
    """Remove unreferenced blobs older than `min_age` seconds (every tenant
    folder in the store, or `tenant_ids`). With `dry_run`, count them only."""
    if not min_age >= MIN_AGE_HOURS * 3600:
        raise ValueError(f"the minimum age is at least {MIN_AGE_HOURS} hour(s)")
    if dry_run:
        return _blob_garbage_collect(store=store, min_age=min_age, dry_run=True, tenant_ids=tenant_ids)
    # Not while a backup copies the blobs its snapshot names (core.blob_lock).
    with connection.cursor() as cursor, blob_gc_lock_try(cursor) as taken:
        if not taken:
            logger.warning("blob garbage collection skipped: a backup is running")
            return BlobGcReport(dry_run=False)
        return _blob_garbage_collect(store=store, min_age=min_age, dry_run=False, tenant_ids=tenant_ids)


def _blob_garbage_collect(
    *, store: BlobStore, min_age: float, dry_run: bool, tenant_ids: list[uuid.UUID] | None
) -> BlobGcReport:
    report = BlobGcReport(dry_run=dry_run)
    unused_since = store.now() - min_age
    for tenant_id in store.tenant_ids() if tenant_ids is None else tenant_ids:
        report.tenants.append(tenant_id)
        report.restored += store.restore_set_aside(tenant_id)
        if not dry_run:
            report.temporaries_removed += store.remove_temporaries(tenant_id, older_than=unused_since)
        # One transaction per tenant, open while its folder is walked (the
        # references' cursor lives in it); closed with it, the cursor too.
        with tenant_scope(tenant_id), contextlib.closing(_referenced_keys(tenant_id)) as referenced:
            next_referenced = next(referenced, None)
            for blob in store.blobs(tenant_id):
                report.blobs += 1
                while next_referenced is not None and next_referenced < blob.key:
                    next_referenced = next(referenced, None)
                if next_referenced == blob.key:
                    report.kept_referenced += 1
                elif blob.mtime >= unused_since:
                    report.kept_recent += 1
                elif dry_run or store.discard(blob, unused_since=unused_since):
                    report.removed += 1
                    report.removed_bytes += blob.size
                else:
                    report.kept_recent += 1  # put again while we looked
    return report


def blob_references(tenant_id: uuid.UUID) -> Generator[str, None, None]:
    """Every blob key the tenant's rows refer to, once each, in key order;
    inside the caller's `tenant_scope` (a server-side cursor lives in its
    transaction). For `manage.py repairblobs`."""
    last = None
    for key in _referenced_keys(tenant_id):
        if key != last:
            yield key
            last = key


def _referenced_keys(tenant_id: uuid.UUID) -> Generator[str, None, None]:
    with connection.chunked_cursor() as cursor:
        cursor.execute(_referenced_keys_sql(), {"tenant": tenant_id})
        while rows := cursor.fetchmany(10_000):
            for (key,) in rows:
                yield key
