from django.db import migrations

BODIES = ("text_body", "html_body")


class Migration(migrations.Migration):
    """lz4 instead of pglz for the TOASTed bodies: several times cheaper to
    compress, and the sync's inserts are bound by PostgreSQL's CPU."""

    dependencies = [
        ("mail", "0004_quarantine_and_thread_refs_rls"),
    ]

    operations = [
        migrations.RunSQL(
            sql=[f"ALTER TABLE email_messages ALTER COLUMN {c} SET COMPRESSION lz4" for c in BODIES],
            reverse_sql=[f"ALTER TABLE email_messages ALTER COLUMN {c} SET COMPRESSION pglz" for c in BODIES],
        ),
    ]
