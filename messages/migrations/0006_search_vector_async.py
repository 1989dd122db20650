import django.contrib.postgres.search
from django.db import migrations, models


class Migration(migrations.Migration):
    """`search_vector` stops being a generated column: the sync stores rows
    without it and `messages.indexing` fills it. DROP EXPRESSION keeps the
    vectors already computed."""

    dependencies = [
        ("mail", "0005_lz4_bodies"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE email_messages ALTER COLUMN search_vector DROP EXPRESSION",
                    reverse_sql=migrations.RunSQL.noop,
                ),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="message",
                    name="search_vector",
                    field=django.contrib.postgres.search.SearchVectorField(blank=True, editable=False, null=True),
                ),
            ],
        ),
        migrations.AddIndex(
            model_name="message",
            index=models.Index(
                condition=models.Q(("search_vector__isnull", True)),
                fields=["tenant"],
                name="idx_messages_unindexed",
            ),
        ),
    ]
