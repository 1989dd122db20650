"""The audit log outlives what it records: the runtime role may only append
to it, and deleting a user keeps the entries that name them."""

import pytest
from django.db import connection, transaction
from django.db.utils import ProgrammingError

from emailclient.core.models import AuditLog
from emailclient.core.services import audit_log_record
from emailclient.core.tenancy import tenant_scope
from emailclient.core.tests.factories import UserFactory


def _entry(tenant, actor) -> AuditLog:
    with tenant_scope(tenant.id):
        return audit_log_record(
            tenant=tenant, actor=actor, action="account.create", object_type="email_account", object_id=None
        )


def test_deleting_a_user_keeps_their_audit_entries_and_who_it_was(committed_db, tenant_a):
    former = UserFactory(username="former")
    entry = _entry(tenant_a, former)
    user_id = former.id

    former.delete()  # through the runtime role, as the admin does

    with tenant_scope(tenant_a.id):
        kept = AuditLog.objects.get(id=entry.id)
    assert kept.actor_id == user_id


@pytest.mark.parametrize(
    "statement",
    ["UPDATE email_audit_log SET action = 'x' WHERE id = %s", "DELETE FROM email_audit_log WHERE id = %s"],
)
def test_the_runtime_role_cannot_change_or_delete_an_entry(committed_db, tenant_a, user_a, statement):
    entry = _entry(tenant_a, user_a)

    with (
        pytest.raises(ProgrammingError, match="permission denied"),
        tenant_scope(tenant_a.id),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement, [entry.id])
