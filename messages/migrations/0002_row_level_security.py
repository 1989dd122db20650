from django.db import migrations

from emailclient.core.rls import tenant_rls


class Migration(migrations.Migration):
    dependencies = [
        ("mail", "0001_initial"),
    ]

    operations = [
        tenant_rls("email_messages"),
        tenant_rls("email_attachments"),
    ]
