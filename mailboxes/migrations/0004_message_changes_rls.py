from django.db import migrations

from emailclient.core.rls import tenant_rls


class Migration(migrations.Migration):
    dependencies = [
        ("mailboxes", "0003_message_changes"),
    ]

    operations = [
        tenant_rls("email_message_changes"),
    ]
