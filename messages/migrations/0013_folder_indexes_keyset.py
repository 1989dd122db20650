"""A folder's indexes end in the primary key, as its pages' order does: a
page is `(received_at, id) < (%s, %s)`, which these indexes serve as one
range however many messages share a date. Built concurrently (the table may
be large), before the old ones go."""

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("mail", "0012_placement_statistics"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="message",
            index=models.Index(fields=["folder", "-received_at", "-id"], name="idx_messages_folder_page"),
        ),
        AddIndexConcurrently(
            model_name="message",
            index=models.Index(
                condition=models.Q(("is_deleted", False), ("is_read", False)),
                fields=["folder", "-received_at", "-id"],
                name="idx_messages_folder_unread",
            ),
        ),
        RemoveIndexConcurrently(model_name="message", name="idx_messages_folder_received"),
        RemoveIndexConcurrently(model_name="message", name="idx_messages_unread"),
    ]
