"""`Folder` and `MessageChange` join the mail store (they were the `mailboxes`
app's): the store owns every table the API reads and the changes it records;
the sync side above it only reads and writes them.

State only: the tables (`email_folders`, `email_message_changes`), their
indexes, constraints and RLS policies stay as they are. The content types
follow the models, so admin permissions and log entries keep pointing at
them."""

import django.contrib.postgres.fields
import django.db.models.deletion
import uuid
from django.conf import settings
from django.db import migrations, models


MOVED = ("folder", "messagechange")


def _move_content_types(apps, schema_editor, source: str, target: str) -> None:
    content_types = apps.get_model("contenttypes", "ContentType").objects.using(schema_editor.connection.alias)
    for model in MOVED:
        if not content_types.filter(app_label=target, model=model).exists():
            content_types.filter(app_label=source, model=model).update(app_label=target)


def content_types_to_mail(apps, schema_editor):
    _move_content_types(apps, schema_editor, "mailboxes", "mail")


def content_types_to_mailboxes(apps, schema_editor):
    _move_content_types(apps, schema_editor, "mail", "mailboxes")


class Migration(migrations.Migration):

    dependencies = [
        ('contenttypes', '0002_remove_content_type_name'),
        ('accounts', '0002_row_level_security'),
        ('core', '0002_row_level_security'),
        ('mail', '0014_message_id_synthetic'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='Folder',
                    fields=[
                        ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('name', models.TextField(help_text="Full server-side name, e.g. 'INBOX/Projects'.")),
                        ('delimiter', models.CharField(blank=True, max_length=8)),
                        ('type', models.CharField(choices=[('inbox', 'Inbox'), ('sent', 'Sent'), ('drafts', 'Drafts'), ('trash', 'Trash'), ('spam', 'Spam'), ('archive', 'Archive'), ('custom', 'Custom')], default='custom', max_length=16)),
                        ('attributes', django.contrib.postgres.fields.ArrayField(base_field=models.CharField(max_length=64), blank=True, default=list, size=None)),
                        ('is_selectable', models.BooleanField(default=True)),
                        ('unread_count', models.PositiveIntegerField(default=0)),
                        ('total_count', models.PositiveIntegerField(default=0)),
                        ('uidvalidity', models.BigIntegerField(blank=True, null=True)),
                        ('uidnext', models.BigIntegerField(blank=True, null=True)),
                        ('highestmodseq', models.BigIntegerField(blank=True, null=True)),
                        ('sync_token', models.TextField(blank=True, help_text='Protocol-specific cursor (POP3).')),
                        ('last_synced_at', models.DateTimeField(blank=True, null=True)),
                        ('account', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='folders', to='accounts.emailaccount')),
                        ('parent', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='children', to='mail.folder')),
                        ('tenant', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, to='core.tenant')),
                    ],
                    options={
                        'db_table': 'email_folders',
                        'ordering': ['account_id', 'name'],
                    },
                ),
                migrations.AlterField(
                    model_name='message',
                    name='folder',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='messages', to='mail.folder'),
                ),
                migrations.AlterField(
                    model_name='quarantinedmessage',
                    name='folder',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='quarantined', to='mail.folder'),
                ),
                migrations.CreateModel(
                    name='MessageChange',
                    fields=[
                        ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('kind', models.CharField(choices=[('flags', 'Flags'), ('move', 'Move'), ('expunge', 'Expunge')], max_length=16)),
                        ('state', models.CharField(choices=[('pending', 'Pending'), ('done', 'Written to the server'), ('failed', 'Failed and undone')], default='pending', max_length=16)),
                        ('folder_name', models.TextField(blank=True)),
                        ('uidvalidity', models.BigIntegerField(blank=True, null=True)),
                        ('imap_uid', models.BigIntegerField(blank=True, null=True)),
                        ('flags', models.JSONField(blank=True, default=dict, help_text='e.g. {"\\\\Seen": true}')),
                        ('previous', models.JSONField(blank=True, default=dict, help_text='The database state to restore on failure.')),
                        ('attempts', models.PositiveIntegerField(default=0)),
                        ('last_error', models.TextField(blank=True)),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                        ('account', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='accounts.emailaccount')),
                        ('actor', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('message', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='changes', to='mail.message')),
                        ('target_folder', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='mail.folder')),
                        ('tenant', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, to='core.tenant')),
                    ],
                    options={
                        'db_table': 'email_message_changes',
                        'ordering': ['created_at'],
                    },
                ),
                migrations.AddIndex(
                    model_name='folder',
                    index=models.Index(fields=['account', 'type'], name='idx_folders_account_type'),
                ),
                migrations.AddIndex(
                    model_name='folder',
                    index=models.Index(fields=['tenant', 'account'], name='idx_folders_tenant_account'),
                ),
                migrations.AddIndex(
                    model_name='folder',
                    index=models.Index(condition=models.Q(('type__in', ['inbox', 'sent', 'drafts', 'trash', 'spam', 'archive'])), fields=['type'], name='idx_folders_special_type'),
                ),
                migrations.AddConstraint(
                    model_name='folder',
                    constraint=models.UniqueConstraint(fields=('tenant', 'account', 'name'), name='uniq_folder_tenant_account_name'),
                ),
                migrations.AddConstraint(
                    model_name='folder',
                    constraint=models.CheckConstraint(condition=models.Q(('type__in', ['inbox', 'sent', 'drafts', 'trash', 'spam', 'archive', 'custom'])), name='folder_type_valid'),
                ),
                migrations.AddIndex(
                    model_name='messagechange',
                    index=models.Index(condition=models.Q(('state', 'pending')), fields=['account', 'created_at'], name='idx_changes_pending'),
                ),
                migrations.AddIndex(
                    model_name='messagechange',
                    index=models.Index(condition=models.Q(('state', 'pending')), fields=['message'], name='idx_changes_pending_message'),
                ),
                migrations.AddConstraint(
                    model_name='messagechange',
                    constraint=models.CheckConstraint(condition=models.Q(('kind__in', ['flags', 'move', 'expunge'])), name='message_change_kind_valid'),
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_to_mail, content_types_to_mailboxes),
    ]
