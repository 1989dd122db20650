"""Message.message_id_synthetic: the message had no Message-ID and its id was
made from its raw bytes. A column with a constant default is added without
rewriting the table (PostgreSQL 11+); the database default stays, so rows
inserted by code that predates the field are still valid."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('mail', '0013_folder_indexes_keyset'),
    ]

    operations = [
        migrations.AddField(
            model_name='message',
            name='message_id_synthetic',
            field=models.BooleanField(db_default=False, default=False),
        ),
    ]
