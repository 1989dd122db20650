from django.db import migrations

from emailclient.core.rls import tenant_rls


class Migration(migrations.Migration):
    dependencies = [
        ("compose", "0001_initial"),
    ]

    operations = [
        tenant_rls("email_drafts"),
        tenant_rls("email_draft_attachments"),
        tenant_rls("email_send_queue"),
        tenant_rls("email_idempotency_keys"),
    ]
