"""The one lock that keeps a backup and a blob garbage collection apart.

A backup's database snapshot names blobs that a garbage collection, running
meanwhile, may find unreferenced (a message deleted after the snapshot) and
remove before the backup copies them: the archive would lack a blob its dump
refers to. So the backup holds this PostgreSQL advisory lock (session-level,
on its admin connection) from before its snapshot until the last blob is
copied, and every garbage collection (`gcblobs`, messages.blob_gc's task, the
accounts purge) takes it before it deletes anything, or skips its run.
A session-level lock ends with its session: a killed backup frees it.
"""

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

# pg_advisory_lock's bigint key, used nowhere else ("BLOBGC" in ASCII).
BLOB_GC_LOCK_KEY = 0x424C4F424743


def blob_gc_lock_wait(cursor: Any) -> None:
    """Take the lock, waiting for a running garbage collection (the backup's side)."""
    cursor.execute("SELECT pg_try_advisory_lock(%s)", [BLOB_GC_LOCK_KEY])
    if not cursor.fetchone()[0]:
        logger.info("backup: waiting for a blob garbage collection to finish")
        cursor.execute("SELECT pg_advisory_lock(%s)", [BLOB_GC_LOCK_KEY])


def blob_gc_lock_release(cursor: Any) -> None:
    cursor.execute("SELECT pg_advisory_unlock(%s)", [BLOB_GC_LOCK_KEY])


@contextlib.contextmanager
def blob_gc_lock_try(cursor: Any) -> Iterator[bool]:
    """Yield True holding the lock, or False (not taken) while a backup holds
    it (the garbage collection's side: it then deletes nothing)."""
    cursor.execute("SELECT pg_try_advisory_lock(%s)", [BLOB_GC_LOCK_KEY])
    taken = bool(cursor.fetchone()[0])
    try:
        yield taken
    finally:
        if taken:
            blob_gc_lock_release(cursor)
