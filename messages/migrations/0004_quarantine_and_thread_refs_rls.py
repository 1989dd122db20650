from django.db import migrations

from emailclient.core.rls import tenant_rls


class Migration(migrations.Migration):
    dependencies = [
        ("mail", "0003_quarantine_and_thread_refs"),
    ]

    operations = [
        tenant_rls("email_quarantine"),
        tenant_rls("email_thread_refs"),
    ]
