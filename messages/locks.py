"""Per-account locks shared by the sync, the API's changes, the write-back
and `reparse`. They live with the mail store, whose rows they guard, so that
the sync side above it and the store's own services take the same ones.

`account_sync_lock()` is a session-level advisory lock: one sync (or
write-back, or re-threading) of an account at a time.

`account_change_lock()` is a transaction-level advisory lock: the API takes it
around a change to a message (its new state plus the pending `MessageChange`),
the sync around applying the server's flags. Whoever comes second waits a few
milliseconds and then sees the other's committed rows, so the sync can never
overwrite a change it did not see as pending.
"""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

# The two-key form of advisory locks: this class id keeps them apart from the
# one-key session lock that `account_sync_lock()` takes.
_CHANGE_LOCK_CLASS = 0x6D61696C  # "mail"


def _key(account_id: uuid.UUID) -> int:
    return int.from_bytes(account_id.bytes[:4], "big", signed=True)


def account_change_lock(*account_ids: uuid.UUID) -> None:
    """Take the change lock of each account until the transaction ends (call
    inside one). Sorted, so that two callers never deadlock."""
    if not connection.in_atomic_block:
        raise RuntimeError("account_change_lock() needs a transaction")
    with connection.cursor() as cursor:
        for account_id in sorted(set(account_ids)):
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_CHANGE_LOCK_CLASS, _key(account_id)])


class SyncAlreadyRunning(Exception):
    """The account's sync lock is held by another worker."""


@contextmanager
def account_sync_lock(account_id: uuid.UUID) -> Iterator[None]:
    """A session-level advisory lock: released when we finish or when the
    worker's connection dies, never held by a crashed sync."""
    key = int.from_bytes(account_id.bytes[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        if not cursor.fetchone()[0]:
            raise SyncAlreadyRunning(str(account_id))
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
