"""Two indexes no query reads go: `brin_messages_created` (nothing filters
or sorts messages by `created_at`) and `idx_messages_drafts` (nothing
filters on `is_draft`: no list or search operator asks for drafts). The read
benchmark's `pg_stat_user_indexes` showed 0 scans of both after twelve runs
(bench/README.md, History, 2026-12-03), and neither the sync nor the
write-back queries those columns. Dropped concurrently; the reverse builds
them again."""

from django.contrib.postgres.operations import RemoveIndexConcurrently
from django.db import migrations


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("mail", "0017_attachment_storage_columns_dropped"),
    ]

    operations = [
        RemoveIndexConcurrently(model_name="message", name="brin_messages_created"),
        RemoveIndexConcurrently(model_name="message", name="idx_messages_drafts"),
    ]
