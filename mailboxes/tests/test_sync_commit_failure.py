"""A commit that fails is not a dead worker (issue 14, section 1): the UIDs
marked in flight for batches the writer never committed are taken back, so
a persistent database failure (disk full, a statement timeout) does not
count against ordinary messages until they are quarantined unfetched."""

import pytest
import redis
from django.db import connections

from emailclient.core.tenancy import tenant_scope
from mailboxes.sync import account_sync
from messages.models import Message, QuarantinedMessage

# The commit of a message's row waits a moment, so that the batches behind
# it are queued on the writer, then fails, as a full disk or a statement
# timeout would: a real error from PostgreSQL, on the writer's connection.
FAIL = """
CREATE FUNCTION test_commit_fails() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(0.3); RAISE EXCEPTION 'could not extend file (test)'; END $$;
CREATE TRIGGER test_commit_fails BEFORE INSERT ON email_messages
FOR EACH STATEMENT EXECUTE FUNCTION test_commit_fails();
"""
HEAL = (
    "DROP TRIGGER IF EXISTS test_commit_fails ON email_messages; DROP FUNCTION IF EXISTS test_commit_fails();"
)


def _message(number: int) -> bytes:
    return (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: m%d\r\nMessage-ID: <m%d@example.com>\r\n"
        b"Content-Type: text/plain\r\n\r\nbody %d\r\n" % (number, number, number)
    )


@pytest.fixture
def failing_commits(committed_db):
    with connections["owner"].cursor() as cursor:
        cursor.execute(FAIL)
    try:
        yield lambda: connections["owner"].cursor().execute(HEAL)
    finally:
        with connections["owner"].cursor() as cursor:
            cursor.execute(HEAL)


def test_a_failing_commit_counts_no_uid_as_lost(failing_commits, devmail, mail_user, imap_account, settings):
    settings.SYNC_BATCH_MESSAGES = 1  # a batch, a group and a commit job per message
    for number in range(1, 7):
        devmail.deliver(mail_user, _message(number))
    client = redis.Redis.from_url(settings.REDIS_URL)
    pattern = f"sync:inflight:{imap_account.id}:*"
    for key in client.keys(pattern):
        client.delete(key)

    for _ in range(settings.SYNC_MAX_WORKER_LOSSES + 1):
        with pytest.raises(Exception, match="could not extend file"):
            account_sync(tenant_id=imap_account.tenant_id, account_id=imap_account.id)
        marks = {key: client.hgetall(key) for key in client.keys(pattern)}
        assert marks == {}  # no UID counted as in flight when a worker died

    failing_commits()
    report = account_sync(tenant_id=imap_account.tenant_id, account_id=imap_account.id)
    assert (report.new, report.quarantined) == (6, 0)
    with tenant_scope(imap_account.tenant_id):
        assert sorted(Message.objects.values_list("subject", flat=True)) == [f"m{n}" for n in range(1, 7)]
        assert not QuarantinedMessage.objects.exists()
    assert client.keys(pattern) == []
