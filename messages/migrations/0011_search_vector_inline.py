from django.db import migrations


class Migration(migrations.Migration):
    """Keep each message's search vector in its row (STORAGE MAIN) instead of
    in the TOAST table.

    A vector is about 5 KB and barely compresses, so it went out of line:
    a search that tests rows one by one (a phrase of common words, walked
    newest first) read the row, then the vector's TOAST index and chunks,
    about six buffers a row. In line it is one (on 60,000 generated
    messages, `"please review"` walked 19,500 rows in 144 ms, not 340).
    A vector too big for a page still goes out of line.

    The price is on writes: a row now carries its vector, so an update
    (a flag, a move) writes about 5 KB, not 1, and rarely fits beside the
    old version on its page. Flipping is_read on 5,000 of 20,000 copied
    rows with four indexes: 552 ms and 53 MB of WAL, against 245 ms and
    28 MB out of line.

    Only the storage rule changes (no rewrite, no long lock): vectors written
    from now on (indexing, re-indexing) are kept in line; `VACUUM FULL
    email_messages` moves the ones already stored."""

    dependencies = [
        ("mail", "0010_address_keys"),
    ]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE email_messages ALTER COLUMN search_vector SET STORAGE MAIN",
            reverse_sql="ALTER TABLE email_messages ALTER COLUMN search_vector SET STORAGE EXTENDED",
        ),
    ]
