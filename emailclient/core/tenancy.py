"""The tenant context of a database transaction.

Row-level-security policies compare each row's `tenant_id` with the
PostgreSQL setting `app.current_tenant_id`. `tenant_scope()` sets it with
`set_config(..., is_local => true)`, so it lives only as long as the enclosing
transaction: it can never leak to the next request on a reused connection. On
a clean exit the previous value is put back (scopes nest); on an exception
the rollback of the atomic block undoes the setting by itself.
"""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections, transaction

SETTING = "app.current_tenant_id"


def _set(cursor, value: str) -> None:
    cursor.execute("SELECT set_config(%s, %s, true)", [SETTING, value])


def current_tenant_id(*, using: str = "default") -> uuid.UUID | None:
    """The tenant id the connection is scoped to, or None outside any scope."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT current_setting(%s, true)", [SETTING])
        (value,) = cursor.fetchone()
    return uuid.UUID(value) if value else None


@contextmanager
def tenant_scope(tenant_id: uuid.UUID, *, using: str = "default") -> Iterator[None]:
    """Run the block in a transaction whose queries see only `tenant_id`'s rows."""
    value = str(uuid.UUID(str(tenant_id)))  # refuses anything but a UUID
    connection = connections[using]
    # Outermost: the commit or rollback ends the setting, one query suffices.
    nested = connection.in_atomic_block
    with transaction.atomic(using=using):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting(%s, true), set_config(%s, %s, true)",
                [SETTING, SETTING, value],
            )
            previous = cursor.fetchone()[0]
        yield
        # A block marked for rollback undoes the setting with everything else.
        if nested and not connection.needs_rollback:
            with connection.cursor() as cursor:
                _set(cursor, previous or "")
