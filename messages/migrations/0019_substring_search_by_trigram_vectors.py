"""Substring searches find their candidates through trigram tsvectors, not
pg_trgm's ILIKE index: ILIKE (texticlike) is no longer marked LEAKPROOF by
`setupdb` (it is not: a pattern ending in an escape raises an error only when
a row matches the rest, an oracle on other tenants' rows), and under
row-level security PostgreSQL uses only leakproof conditions as index
conditions. `@@` (ts_match_vq) on these columns is one; ILIKE then checks the
tenant's candidates. The gin_trgm_ops indexes had no other reader.

The four stored generated columns are added by one ALTER TABLE, so the
table is rewritten once; writes wait meanwhile."""

import django.contrib.postgres.indexes
import django.contrib.postgres.search
import django.db.models.functions.comparison
import messages.models
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("mail", "0018_unused_indexes_dropped"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="message",
            name="trgm_messages_subject",
        ),
        migrations.RemoveIndex(
            model_name="message",
            name="trgm_messages_from",
        ),
        migrations.RemoveIndex(
            model_name="message",
            name="trgm_messages_from_name",
        ),
        migrations.RemoveIndex(
            model_name="message",
            name="trgm_messages_to",
        ),
        migrations.RemoveIndex(
            model_name="message",
            name="trgm_messages_cc",
        ),
        # One ALTER TABLE, so one rewrite of the table, not four.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddField(
                    model_name="message",
                    name="cc_trigrams",
                    field=models.GeneratedField(
                        db_persist=True,
                        expression=messages.models.Trigrams(
                            django.db.models.functions.comparison.Cast(
                                models.Func(
                                    models.F("cc"),
                                    models.Value("$[*].*"),
                                    function="jsonb_path_query_array",
                                    output_field=models.JSONField(),
                                ),
                                models.TextField(),
                            )
                        ),
                        output_field=django.contrib.postgres.search.SearchVectorField(),
                    ),
                ),
                migrations.AddField(
                    model_name="message",
                    name="from_trigrams",
                    field=models.GeneratedField(
                        db_persist=True,
                        expression=messages.models.Trigrams("from_address", "from_name"),
                        output_field=django.contrib.postgres.search.SearchVectorField(),
                    ),
                ),
                migrations.AddField(
                    model_name="message",
                    name="subject_trigrams",
                    field=models.GeneratedField(
                        db_persist=True,
                        expression=messages.models.Trigrams("subject"),
                        output_field=django.contrib.postgres.search.SearchVectorField(),
                    ),
                ),
                migrations.AddField(
                    model_name="message",
                    name="to_trigrams",
                    field=models.GeneratedField(
                        db_persist=True,
                        expression=messages.models.Trigrams(
                            django.db.models.functions.comparison.Cast(
                                models.Func(
                                    models.F("to"),
                                    models.Value("$[*].*"),
                                    function="jsonb_path_query_array",
                                    output_field=models.JSONField(),
                                ),
                                models.TextField(),
                            )
                        ),
                        output_field=django.contrib.postgres.search.SearchVectorField(),
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    sql="""
                        ALTER TABLE "email_messages"
                        ADD COLUMN "cc_trigrams" tsvector GENERATED ALWAYS AS
                            (array_to_tsvector(show_trgm(left((jsonb_path_query_array("cc", '$[*].*'))::text, 10000)))) STORED,
                        ADD COLUMN "from_trigrams" tsvector GENERATED ALWAYS AS
                            (array_to_tsvector(show_trgm(left("from_address" || ' ' || "from_name", 10000)))) STORED,
                        ADD COLUMN "subject_trigrams" tsvector GENERATED ALWAYS AS
                            (array_to_tsvector(show_trgm(left("subject", 10000)))) STORED,
                        ADD COLUMN "to_trigrams" tsvector GENERATED ALWAYS AS
                            (array_to_tsvector(show_trgm(left((jsonb_path_query_array("to", '$[*].*'))::text, 10000)))) STORED
                    """,
                    reverse_sql="""
                        ALTER TABLE "email_messages"
                        DROP COLUMN "cc_trigrams", DROP COLUMN "from_trigrams",
                        DROP COLUMN "subject_trigrams", DROP COLUMN "to_trigrams"
                    """,
                ),
            ],
        ),
        migrations.AddIndex(
            model_name="message",
            index=django.contrib.postgres.indexes.GinIndex(
                fields=["subject_trigrams"], name="gin_messages_subject_trgm"
            ),
        ),
        migrations.AddIndex(
            model_name="message",
            index=django.contrib.postgres.indexes.GinIndex(
                fields=["from_trigrams"], name="gin_messages_from_trgm"
            ),
        ),
        migrations.AddIndex(
            model_name="message",
            index=django.contrib.postgres.indexes.GinIndex(
                fields=["to_trigrams"], name="gin_messages_to_trgm"
            ),
        ),
        migrations.AddIndex(
            model_name="message",
            index=django.contrib.postgres.indexes.GinIndex(
                fields=["cc_trigrams"], name="gin_messages_cc_trgm"
            ),
        ),
    ]
