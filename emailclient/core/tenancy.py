"""The tenant context of a database transaction.

Row-level-security policies compare each row's `tenant_id` with the
PostgreSQL setting `app.current_tenant_id`. `tenant_scope()` sets it with
`set_config(..., is_local => true)`, so it lives only as long as the enclosing
transaction: it can never leak to the next request on a reused connection. On
a clean exit the previous value is put back (scopes nest); on an exception
the rollback of the atomic block undoes the setting by itself.
"""

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from django.db import connections, transaction
from django.db.backends.utils import CursorWrapper

SETTING = "app.current_tenant_id"
# An active tenant's id as text, or '' (no tenant: a scope that sees nothing).
_ACTIVE_TENANT_BY_ID = "COALESCE((SELECT id::text FROM tenants WHERE id = %s::uuid AND is_active), '')"
_ACTIVE_TENANT_BY_SLUG = "COALESCE((SELECT id::text FROM tenants WHERE slug = %s AND is_active), '')"


def _set(cursor: CursorWrapper, value: str) -> None:
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
    with _scope("%s", [value], using=using, known=value):
        yield


@contextmanager
def active_tenant_scope(ref: str, *, using: str = "default") -> Iterator[uuid.UUID | None]:
    """`tenant_scope` for the active tenant named by `ref` (its slug or id),
    found by the same statement that sets the scope: one round trip, where a
    lookup before the transaction took two. Yields the tenant's id, or None
    (and a scope that sees nothing) when no active tenant has that name."""
    try:
        expression, value = _ACTIVE_TENANT_BY_ID, str(uuid.UUID(ref))
    except ValueError:
        expression, value = _ACTIVE_TENANT_BY_SLUG, ref
    with _scope(expression, [value], using=using) as found:
        yield uuid.UUID(found) if found else None


def in_tenant_scope(tenant_id: uuid.UUID, *, using: str = "default") -> bool:
    """Whether the connection runs a transaction in `tenant_id`'s scope now:
    the innermost open `tenant_scope` (or `active_tenant_scope`) block is
    that tenant's. A write that needs no savepoint of its own (an audit
    entry) then goes straight in, without a nested scope's four statements."""
    connection = connections[using]
    scopes: list[str] = getattr(connection, "tenant_scopes", [])
    if not scopes or not connection.in_atomic_block:
        return False
    return scopes[-1] == str(tenant_id)


@contextmanager
def _scope(expression: str, params: Sequence[str], *, using: str, known: str | None = None) -> Iterator[str]:
    """Set the setting to the SQL `expression` for the block; yields its value.

    The scopes open on a connection are kept on it (`tenant_scopes`,
    innermost last): a block nested in a scope of the same tenant (`known`,
    the value the expression gives) keeps its savepoint but sets nothing,
    the setting being that value already."""
    connection = connections[using]
    scopes: list[str] = connection.__dict__.setdefault("tenant_scopes", [])
    # Outermost: the commit or rollback ends the setting, one query suffices.
    nested = connection.in_atomic_block
    with transaction.atomic(using=using):
        if nested and known is not None and scopes and scopes[-1] == known:
            scopes.append(known)
            try:
                yield known
            finally:
                scopes.pop()
            return
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT current_setting(%s, true), set_config(%s, {expression}, true)",
                [SETTING, SETTING, *params],
            )
            previous, value = cursor.fetchone()
        scopes.append(value)
        try:
            yield value
        finally:
            scopes.pop()
        # A block marked for rollback undoes the setting with everything else.
        if nested and not connection.needs_rollback:
            with connection.cursor() as cursor:
                _set(cursor, previous or "")
