"""Celery task names are their module path now (`mailboxes.tasks.sync_account`,
was `mailboxes.sync_account`; likewise the write-back, the search indexing
and the blob collection). Periodic tasks stored by django-celery-beat name
the task they run: renamed here, so each account's schedule (and any an
operator made for the blob collection) keeps running the same task."""

from django.db import migrations

RENAMED = {
    "mailboxes.sync_account": "mailboxes.tasks.sync_account",
    "mail.write_back": "mailboxes.tasks.write_back",
    "mail.index_search": "messages.tasks.index_search",
    "mail.gc_blobs": "messages.tasks.gc_blobs",
}


def _rename(apps, schema_editor, names: dict[str, str]) -> None:
    tasks = apps.get_model("django_celery_beat", "PeriodicTask").objects.using(schema_editor.connection.alias)
    for old, new in names.items():
        tasks.filter(task=old).update(task=new)


def forwards(apps, schema_editor):
    _rename(apps, schema_editor, RENAMED)


def backwards(apps, schema_editor):
    _rename(apps, schema_editor, {new: old for old, new in RENAMED.items()})


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_row_level_security"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
