"""Subject keys in the thread index become `subject: <sha1>` (a space after
the colon). Message-IDs are now kept without an `@`, and a sender could write
`References: <subject:...>` to join the recipient's thread of that subject;
a normalised Message-ID never holds white space, so the new form is out of
its reach. Each tenant's rows are rewritten in its own scope: RLS is forced
on the owner too."""

from django.db import migrations

# Old keys are "subject:" and 40 hex digits; the new ones have a space.
FORWARDS = (
    "UPDATE email_thread_refs SET message_id = 'subject: ' || substr(message_id, 9)"
    " WHERE tenant_id = %s AND message_id ~ '^subject:[0-9a-f]{40}$'"
)
BACKWARDS = (
    "UPDATE email_thread_refs SET message_id = 'subject:' || substr(message_id, 10)"
    " WHERE tenant_id = %s AND message_id ~ '^subject: [0-9a-f]{40}$'"
)


def _rewrite(apps, schema_editor, statement: str) -> None:
    connection = schema_editor.connection
    tenants = apps.get_model("core", "Tenant").objects.using(connection.alias).values_list("id", flat=True)
    with connection.cursor() as cursor:
        for tenant_id in tenants:
            cursor.execute("SELECT set_config('app.current_tenant_id', %s, true)", [str(tenant_id)])
            cursor.execute(statement, [tenant_id])
        cursor.execute("SELECT set_config('app.current_tenant_id', '', true)")


def forwards(apps, schema_editor):
    _rewrite(apps, schema_editor, FORWARDS)


def backwards(apps, schema_editor):
    _rewrite(apps, schema_editor, BACKWARDS)


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0002_row_level_security"),
        ("mail", "0015_folders_and_changes_move_here"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
