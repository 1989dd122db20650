from django.db import migrations

from emailclient.core.rls import tenant_rls


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0001_initial"),
    ]

    operations = [
        tenant_rls("tenant_memberships"),
        tenant_rls("email_audit_log"),
    ]
