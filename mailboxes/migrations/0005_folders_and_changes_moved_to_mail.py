"""`Folder` and `MessageChange` moved to the mail store (app label `mail`,
migration `mail.0015`): state only, the tables stay."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('mailboxes', '0004_message_changes_rls'),
        ('mail', '0015_folders_and_changes_move_here'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(
                    model_name='messagechange',
                    name='target_folder',
                ),
                migrations.RemoveField(
                    model_name='messagechange',
                    name='account',
                ),
                migrations.RemoveField(
                    model_name='messagechange',
                    name='actor',
                ),
                migrations.RemoveField(
                    model_name='messagechange',
                    name='message',
                ),
                migrations.RemoveField(
                    model_name='messagechange',
                    name='tenant',
                ),
                migrations.DeleteModel(
                    name='Folder',
                ),
                migrations.DeleteModel(
                    name='MessageChange',
                ),
            ],
            database_operations=[],
        ),
    ]
