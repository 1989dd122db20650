from django.db import migrations

from emailclient.core.rls import tenant_rls


class Migration(migrations.Migration):
    dependencies = [
        ("mail", "0020_pop3_uidls"),
    ]

    operations = [
        tenant_rls("pop3_uidls"),
    ]
