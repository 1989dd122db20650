"""Attachments lose `storage_type` and `storage_path`, and the index on
`storage_path`: no code reads them, and every row holds "local" and "" (the
bytes are in blob storage under `content_hash`). The index goes
concurrently (the table may be large), so the migration is not atomic;
dropping a column only changes the catalogue. Reversed, the columns come
back filled with those values."""

from django.contrib.postgres.operations import RemoveIndexConcurrently
from django.db import migrations


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("mail", "0016_subject_keys_with_a_space"),
    ]

    operations = [
        RemoveIndexConcurrently(model_name="attachment", name="idx_attachments_storage_path"),
        migrations.RemoveField(model_name="attachment", name="storage_path"),
        migrations.RemoveField(model_name="attachment", name="storage_type"),
    ]
