"""Per-account locks shared by the sync, the API's changes and the write-back.

`account_change_lock()` is a transaction-level advisory lock: the API takes it
around a change to a message (its new state plus the pending `MessageChange`),
the sync around applying the server's flags. Whoever comes second waits a few
milliseconds and then sees the other's committed rows, so the sync can never
overwrite a change it did not see as pending.
"""

import uuid

from django.db import connection

# The two-key form of advisory locks: this class id keeps them apart from the
# one-key session lock that `sync.account_sync_lock()` takes.
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
