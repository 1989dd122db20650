from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False  # built concurrently: every change the service makes writes to the log

    dependencies = [
        ("core", "0006_monitoring_views"),
    ]

    operations = [
        # The admin's unfiltered audit page (newest first, then the primary
        # key) without sorting the whole log.
        AddIndexConcurrently(
            model_name="auditlog",
            index=models.Index(fields=["-created_at", "-id"], name="idx_audit_created_id"),
        ),
    ]
