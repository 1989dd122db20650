"""Planner settings for a block of queries, in the current transaction."""

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections

# The settings a block may change: planner switches, never anything else.
_ALLOWED = frozenset({"enable_bitmapscan", "enable_indexscan", "enable_seqscan", "enable_sort"})


@contextmanager
def planner_settings(*, using: str = "default", **switches: bool) -> Iterator[None]:
    """Run the block's queries with these planner switches, e.g.
    `planner_settings(enable_bitmapscan=False)`. Like SET LOCAL, they belong
    to the enclosing transaction (required), so an error cannot leave them
    set on a pooled connection; the previous values come back after."""
    unknown = set(switches) - _ALLOWED
    if unknown:
        raise ValueError(f"not a planner switch this allows: {sorted(unknown)}")
    connection = connections[using]
    if not connection.in_atomic_block:
        raise RuntimeError("planner_settings() needs a transaction: its settings are transaction-local")
    names = sorted(switches)
    with connection.cursor() as cursor:
        previous = _set(cursor, {name: "on" if switches[name] else "off" for name in names})
    try:
        yield
    finally:
        if not connection.needs_rollback:
            with connection.cursor() as cursor:
                _set(cursor, previous)


def _set(cursor, values: dict[str, str]) -> dict[str, str]:
    """Set the values (transaction-local); returns the ones they replace."""
    names = list(values)
    selects = ", ".join("current_setting(%s), set_config(%s, %s, true)" for _ in names)
    params = [p for name in names for p in (name, name, values[name])]
    cursor.execute(f"SELECT {selects}", params)
    row = cursor.fetchone()
    return {name: row[2 * i] for i, name in enumerate(names)}
