"""The outbox: each queued message delivered once, its outcome recorded.

The send task runs `outbox_send_in_turn()`: `outbox_send()` while it holds
one of its tenant's sending slots (`max_concurrent_sends`, across the
workers), or, when they are all taken, it comes back later without holding
the worker (`_wait_for_turn`). `outbox_send()` for one draft:

1. It takes a session advisory lock on the draft (`draft_send_lock`, the
   two-key form under its own class id, apart from the accounts' locks).
   Held by another worker: that worker is sending this draft now, and this
   (duplicate) delivery of the task returns. The lock dies with the
   worker's database connection, so a worker killed mid-send holds nothing.
2. Under the draft's row lock it moves the status forward, in one short
   transaction: `queued` (or `scheduled` and due) -> `sending`, attempts + 1,
   phase "connect". Finding `sending` while holding the advisory lock means
   the previous worker died: at phase "data" the body may have reached the
   server, so the item becomes `uncertain` (never resent automatically); at
   an earlier phase it is sent again. `sent`, `failed`, `uncertain`,
   `cancelled` and `draft` are left alone; a scheduled item not yet due, or
   a queued one waiting for its backoff, too (the dispatcher comes back).
3. SMTP with no transaction open, over the run's `SmtpSession`; it
   reports its phase and the callback commits "data" before the body is
   transmitted (earlier phases need no record: before the body, a message
   is sent again).
4. The outcome, under the row lock again: 2xx after the body -> `sent` (the
   recipients refused one by one recorded; all refused -> `failed`); a
   temporary failure -> `queued` again, `next_attempt_at` by exponential
   backoff, up to `COMPOSE_SEND_MAX_ATTEMPTS`, then `failed`; a permanent
   one -> `failed`; no reply after the body -> `uncertain`. Each outcome is
   audited (`compose.send.sent|retry|failed|uncertain`: counts, codes and
   the server's reply, never a body or a secret).
5. After `sent`: the stored bytes are appended to the account's Sent folder
   (unless `save_sent_copy` is off: "skipped"), the draft's copy in Drafts
   is removed (`compose.tasks.save_draft_copy`), and a sync of the account
   is queued (`SYNC_AFTER_SEND_DELAY` later, joined by the sends of a
   burst) so the Sent copy is stored. A redelivered task that finds the
   item `sent` without a Sent copy recorded (the worker died in between)
   finishes this step; the append looks for the Message-ID first, so the
   copy is never appended twice.

The Sent folder is the account's folder of type "sent"; before the first
sync has found one, the server's folder flagged `\\Sent` (SPECIAL-USE). None
at all: `sent_copy` "failed", with the reason in `error`. We never create
one: a folder of our own naming next to one the user's other client files
into would split the sent mail in two.

Draining the account's other due items (step 3 for each) costs one round
trip to the database a message: a batch's send locks are taken in one
statement and its due items claimed in another (`_claim_batch`: the same
moves as `_claim`), and a delivered message's outcome (`sent`, its
results, its audit entry) is committed with the next message's "data"
phase, in one transaction sent as one query (`_statements_run`), or at the
batch's end, before its Sent copies. A worker dying before that commit
leaves the item `sending` at "data": `uncertain`, never sent twice.

`outbox_dispatch_due()` (the beat task, every minute) queues scheduled sends
that got no ETA task (`send_at` more than `ETA_HORIZON` away when queued)
once they are due, and re-queues what a lost task would leave behind:
scheduled sends due, queued ones whose task should have run by now,
`sending` ones whose advisory lock is free (the worker died: the task
decides between sending again and `uncertain`), and `sent` ones whose Sent
copy was never recorded (the task makes it, looking for it first).
"""

import contextlib
import functools
import imaplib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError
from imapclient.imapclient import datetime_to_INTERNALDATE
from redis.exceptions import RedisError

from accounts.models import EmailAccount
from accounts.selectors import AccountNotSyncable, account_for_sync
from accounts.services import account_credentials
from emailclient.core.limits import tenant_limit
from emailclient.core.models import Tenant
from emailclient.core.retry import backoff_countdown
from emailclient.core.semaphores import semaphore_key, semaphores_acquire, semaphores_held
from emailclient.core.services import audit_log_record_many
from emailclient.core.tenancy import SETTING, tenant_scope
from mailboxes.imap import ImapSession
from messages.blobs import BlobNotFound, default_store
from messages.models import Folder, FolderType

from .addresses import needs_smtputf8
from .drafts_folder import SPECIAL_USE, imap_session, message_id_uids, special_folder_name
from .models import Draft, SendQueueItem, Status
from .smtp import (
    AuthenticationFailed,
    DeliveryResult,
    DeliveryUncertain,
    InsecureServer,
    PermanentFailure,
    SmtpReply,
    SmtpSession,
    TemporaryFailure,
    smtp_config,
)

logger = logging.getLogger(__name__)

# Outcomes of `outbox_send()`, besides the statuses it leaves an item in.
BUSY = "busy"  # another worker holds the draft: it is sending it now
WAITING = "waiting"  # the tenant's sending runs are all taken: it comes back later
MISSING = "missing"
NOT_DUE = "not_due"

# The two-key advisory lock of a send: this class id keeps it apart from the
# accounts' locks (`messages.locks`).
SEND_LOCK_CLASS = 0x73656E64  # "send"

# A task queued for a due item should have run within this; later, the
# dispatcher queues it again (and at most once per DISPATCH_REPEAT).
DISPATCH_GRACE = timedelta(minutes=1)
DISPATCH_REPEAT = 300  # seconds
# How long after a send a missing Sent copy is still made by the dispatcher.
SENT_COPY_SWEEP = timedelta(days=1)
# A scheduled send at most this far away is queued with an ETA; a later one
# is left to the dispatcher (`compose.services.draft_send`). Under the Redis
# broker's default visibility timeout (one hour), after which a task waiting
# unacknowledged for its ETA is handed to another worker.
ETA_HORIZON = timedelta(minutes=50)
# A task may arrive a little before its countdown on another worker's clock.
CLOCK_TOLERANCE = timedelta(seconds=2)
# The sync that stores the Sent copy starts this long after a send, and the
# sends of a burst join it: one sync per burst, not one per message (a sync
# per send took most of the workers' time while an outbox drained).
SYNC_AFTER_SEND_DELAY = 5.0
# One run of the send task goes on with the account's other due items over
# the same connection: at most this many (each holds its session advisory
# lock until the run ends, and PostgreSQL's lock table is shared), for at
# most this long, looked up this many at a time.
DRAIN_LIMIT = 200
DRAIN_SECONDS = 120.0
DRAIN_BATCH = 50
# How long an account's drain mark lives (`send_request`): a task queued,
# or one running, clears it when it ends; this bounds a mark left by a task
# that never ran (the dispatcher sends its items `DISPATCH_GRACE` later).
DRAIN_MARK_SECONDS = int(DRAIN_SECONDS) + 60
# How long a sync after sending stays owed by a backlog's runs (`_sync_owed`).
SYNC_OWED_SECONDS = 3600
# Tasks draining one account's backlog beside the one its sends asked for
# (`_drain_helper`): while one waits for the SMTP server, the database or
# IMAP, another works. Each holds an SMTP connection of the account.
DRAIN_HELPERS = 1
# A run's sending slot outlives a dead worker by the lease at most. A run
# finding its tenant's slots all taken comes back SEND_SLOT_WAIT_SECONDS
# later, plus up to as much again (so the waiting ones do not all come back
# at once).
SEND_SLOT_LEASE_SECONDS = 60.0


def _lock_key(draft_id: uuid.UUID) -> int:
    return int.from_bytes(draft_id.bytes[:4], "big") & 0x7FFFFFFF


@contextlib.contextmanager
def draft_send_lock(draft_id: uuid.UUID) -> Iterator[bool]:
    """A session-level advisory lock on the draft while the block runs;
    yields whether it was taken (False: another session holds it)."""
    key = _lock_key(draft_id)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [SEND_LOCK_CLASS, key])
            held = bool(cursor.fetchone()[0])
    except BaseException:
        # Taken or not (a time limit may strike between the two): closing
        # the session drops it, never left on a connection the worker keeps.
        connection.close()
        raise
    try:
        yield held
    finally:
        if held:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [SEND_LOCK_CLASS, key])
            except BaseException as exc:
                # The connection broke (the server dropped the lock with it),
                # or a time limit struck: the session goes, and the lock.
                connection.close()
                if not isinstance(exc, DatabaseError):
                    raise
                logger.warning("send lock of draft %s not released: the connection is gone", draft_id)


def _send_locks_held(draft_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these drafts some session holds the send lock of now."""
    if not draft_ids:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT objid::bigint FROM pg_locks
            WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = %s::bigint::oid
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """,
            [SEND_LOCK_CLASS],
        )
        keys = {key for (key,) in cursor.fetchall()}
    return {draft_id for draft_id in draft_ids if _lock_key(draft_id) in keys}


def send_enqueue(
    *,
    tenant_id: uuid.UUID,
    draft_id: uuid.UUID,
    countdown: float | None = None,
    account_id: uuid.UUID | None = None,
    helper: int | None = None,
    drain: str | None = None,
) -> None:
    """Queue the send task of a draft (ids only: no body, no credential).
    Call it after the commit that made the draft due. `helper`: the task
    drains beside another, in this helper slot of the account
    (`_drain_helper`); `drain`: the task holds the account's drain mark,
    this token (`send_request`)."""
    kwargs: dict[str, Any] = {"tenant_id": str(tenant_id), "draft_id": str(draft_id)}
    if account_id is not None:
        kwargs["account_id"] = str(account_id)
    if helper is not None:
        kwargs["helper"] = helper
    if drain is not None:
        kwargs["drain"] = drain
    current_app.send_task("compose.tasks.send", kwargs=kwargs, countdown=countdown)


def _drain_mark(account_id: uuid.UUID) -> str:
    return f"compose:drain:{account_id}"


def _helper_mark(account_id: uuid.UUID, slot: int) -> str:
    return f"{_drain_mark(account_id)}:helper:{slot}"


def send_request(*, tenant_id: uuid.UUID, draft_id: uuid.UUID, account_id: uuid.UUID) -> bool:
    """After the commit that made a draft due now: queue its send task,
    unless a task that will drain its account is queued or running already
    (the account's drain mark, in the cache): that one sends this draft too,
    or hands over to a new task when it ends (`_drain_handoff`). True when
    a task was queued. A queue of a thousand sends is a few tasks, not a
    thousand that each find their item sent. The mark holds a token that
    only the task queued here carries: the one run that hands it over."""
    mark = _drain_mark(account_id)
    token = uuid.uuid4().hex
    try:
        if not cache.add(mark, token, DRAIN_MARK_SECONDS):
            return False
    except Exception:
        logger.warning("drain mark of account %s not read: a task of its own", account_id, exc_info=True)
    try:
        send_enqueue(tenant_id=tenant_id, draft_id=draft_id, account_id=account_id, drain=token)
    except BaseException:
        with contextlib.suppress(Exception):
            cache.delete(mark)  # the next request tries again
        raise
    return True


def _drain_handoff(tenant_id: uuid.UUID, account_id: uuid.UUID, *, look_again: bool, token: str) -> bool:
    """The end of the run holding the account's drain mark (`token`): clear
    the mark (unless it is another run's by now), then look again. An item
    queued while the mark was set (its request queued no task) and not sent
    by this run gets a task now, unless a request after the clear queued
    one. A run that stopped on an unwell server or account (`look_again`
    False) leaves the rest to the next request or to the dispatcher
    (`DISPATCH_GRACE` later), not to a task straight away.
    True when items were left to another run."""
    mark = _drain_mark(account_id)
    try:
        if cache.get(mark) == token:
            cache.delete(mark)
    except Exception:
        logger.warning("drain mark of account %s not cleared", account_id, exc_info=True)
        return False
    return look_again and _drain_look_again(tenant_id, account_id)


def _drain_look_again(tenant_id: uuid.UUID, account_id: uuid.UUID) -> bool:
    """A task for the account's oldest due item, unless a run holds the
    account's drain mark (it sends it, or hands over when it ends). Whether
    an item is due."""
    due = _due_of_account(tenant_id, account_id, exclude=[], limit=1)
    if due:
        send_request(tenant_id=tenant_id, draft_id=due[0], account_id=account_id)
    return bool(due)


# --- The send -------------------------------------------------------------------


@dataclass(frozen=True)
class _Attempt:
    tenant_id: uuid.UUID
    draft_id: uuid.UUID
    item_id: uuid.UUID
    account_id: uuid.UUID
    actor_id: int | None
    raw_blob_key: str
    envelope_from: str
    recipients: list[str]
    attempt: int
    message_id: str = ""


def _send_locks_take(draft_ids: list[uuid.UUID]) -> list[int]:
    """Take the send locks of these drafts that no other session holds, in
    one statement (session-level, as `draft_send_lock`); the keys taken."""
    keys = sorted({_lock_key(draft_id) for draft_id in draft_ids})
    if not keys:
        return []
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT k FROM unnest(%s::int[]) AS k WHERE pg_try_advisory_lock(%s, k)",
                [keys, SEND_LOCK_CLASS],
            )
            return sorted(key for (key,) in cursor.fetchall())
    except BaseException:
        connection.close()  # whatever was taken goes with the session
        raise


def _send_locks_release(keys: list[int]) -> None:
    if not keys:
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_unlock(%s, k) FROM unnest(%s::int[]) AS k", [SEND_LOCK_CLASS, keys]
            )
    except BaseException as exc:
        connection.close()
        if not isinstance(exc, DatabaseError):
            raise
        logger.warning("send locks of %d draft(s) not released: the connection is gone", len(keys))


def _statements_run(
    tenant_id: uuid.UUID, statements: Sequence[tuple[str, Any]]
) -> list[list[tuple[Any, ...]]]:
    """Run the statements in the tenant's scope as ONE transaction in ONE
    round trip to the server, and return the rows of each. The values are
    bound on our side (psycopg's client-side binding, as every query of
    this project) and the statements go as one simple query, which
    PostgreSQL runs as a single implicit transaction: all of them or, on
    any error, none. Inside an atomic block (a caller's transaction, the
    tests') they run in it, in a nested tenant scope."""
    nested = connection.in_atomic_block
    with tenant_scope(tenant_id) if nested else contextlib.nullcontext(), connection.cursor() as cursor:
        parts = (
            [] if nested else [cursor.mogrify("SELECT set_config(%s, %s, true)", [SETTING, str(tenant_id)])]
        )
        parts += [cursor.mogrify(sql, params) for sql, params in statements]
        cursor.execute(";\n".join(parts))
        results: list[list[tuple[Any, ...]]] = []
        while True:
            results.append(cursor.fetchall() if cursor.description is not None else [])
            if not cursor.nextset():
                break
    return results if nested else results[1:]


_CLAIM_BATCH = """
WITH claimed AS (
    UPDATE email_drafts AS d SET status = 'sending', updated_at = %(now)s
    FROM email_send_queue AS q
    WHERE d.id = ANY(%(ids)s::uuid[]) AND q.draft_id = d.id
      AND d.account_id = %(account)s::uuid AND NOT d.is_deleted
      AND ((d.status = 'queued' AND (q.next_attempt_at IS NULL OR q.next_attempt_at <= %(due)s))
           OR (d.status = 'scheduled' AND (d.send_at IS NULL OR d.send_at <= %(due)s)))
    RETURNING d.id, d.user_id
)
UPDATE email_send_queue AS q
SET attempts = q.attempts + 1, phase = 'connect', last_attempt_at = %(now)s,
    next_attempt_at = NULL, updated_at = %(now)s
FROM claimed WHERE q.draft_id = claimed.id
RETURNING q.draft_id, q.id, claimed.user_id, q.raw_blob_key, q.envelope_from, q.recipients::text,
          q.attempts, q.message_id
"""


def _claim_batch(tenant_id: uuid.UUID, account_id: uuid.UUID, draft_ids: list[uuid.UUID]) -> list[_Attempt]:
    """`_claim` of each of these drafts that is due (their send locks held,
    the account read by the run), in one statement: `sending`, attempts + 1,
    phase "connect". In the order given."""
    if not draft_ids:
        return []
    now = timezone.now()
    params = {
        "now": now,
        "due": now + CLOCK_TOLERANCE,
        "ids": [str(draft_id) for draft_id in draft_ids],
        "account": str(account_id),
    }
    (rows,) = _statements_run(tenant_id, [(_CLAIM_BATCH, params)])
    found = {
        row[0]: _Attempt(
            tenant_id=tenant_id,
            draft_id=row[0],
            item_id=row[1],
            account_id=account_id,
            actor_id=row[2],
            raw_blob_key=row[3],
            envelope_from=row[4],
            recipients=[str(address) for address in json.loads(row[5])],
            attempt=row[6],
            message_id=row[7],
        )
        for row in rows
    }
    return [found[draft_id] for draft_id in draft_ids if draft_id in found]


_UNCLAIM = """
WITH back AS (
    UPDATE email_drafts AS d SET status = 'queued', updated_at = %(now)s
    FROM email_send_queue AS q
    WHERE d.id = ANY(%(ids)s::uuid[]) AND d.status = 'sending'
      AND q.draft_id = d.id AND q.phase = 'connect'
    RETURNING d.id
)
UPDATE email_send_queue AS q SET attempts = q.attempts - 1, phase = '', updated_at = %(now)s
FROM back WHERE q.draft_id = back.id
RETURNING q.draft_id
"""


def _unclaim(tenant_id: uuid.UUID, attempts: list[_Attempt]) -> None:
    """Put claimed attempts that were never made back to `queued`, their
    attempt not counted (send locks still held: nothing else changed them)."""
    if attempts:
        params = {"now": timezone.now(), "ids": [str(a.draft_id) for a in attempts]}
        _statements_run(tenant_id, [(_UNCLAIM, params)])


# The "data" phase of an attempt, committed before the first byte of the
# body goes, and only while the item is still this attempt's.
_PHASE_DATA = """
UPDATE email_send_queue AS q SET phase = 'data', updated_at = %(now)s
WHERE q.id = %(item)s::uuid AND q.attempts = %(attempt)s
  AND EXISTS (SELECT 1 FROM email_drafts AS d WHERE d.id = q.draft_id AND d.status = 'sending')
RETURNING q.id
"""

# A delivered attempt's outcome (`_record` of `sent`, with its audit entry):
# written only while the draft is `sending` and the item this attempt's.
_OUTCOME_SENT = """
WITH d AS (
    UPDATE email_drafts SET status = 'sent', updated_at = %(now)s
    WHERE id = %(draft)s::uuid AND status = 'sending'
      AND EXISTS (SELECT 1 FROM email_send_queue WHERE id = %(item)s::uuid AND attempts = %(attempt)s)
    RETURNING id
), q AS (
    UPDATE email_send_queue
    SET phase = 'done', sent_at = %(now)s, updated_at = %(now)s, error = '',
        last_reply_code = %(code)s, last_reply = %(reply)s, recipient_results = %(results)s::jsonb
    WHERE id = %(item)s::uuid AND EXISTS (SELECT 1 FROM d)
    RETURNING id
)
INSERT INTO email_audit_log
    (id, created_at, updated_at, tenant_id, actor_id, action, object_type, object_id, changes, ip_address)
SELECT %(audit)s::uuid, %(now)s, %(now)s, %(tenant)s::uuid, %(actor)s, 'compose.send.sent', 'draft',
       %(draft)s::uuid, %(changes)s::jsonb, NULL
FROM q
RETURNING object_id
"""


def outbox_send(
    *,
    tenant_id: uuid.UUID,
    draft_id: uuid.UUID,
    account_id: uuid.UUID | None = None,
    helper: int | None = None,
    drain: str | None = None,
    turn: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> str:
    """Deliver the draft's frozen message if it is due, at most once; returns
    the status it is left in (or `busy`, `missing`, `not_due`). `turn`: held
    while the run sends, and given back before it hands over, so the run it
    hands over to, or a new helper, finds it free (`outbox_send_in_turn`).

    Then, over the same SMTP connection, the other due items of the same
    account (up to `DRAIN_LIMIT`, until `DRAIN_SECONDS` have passed), each
    claimed under its own advisory lock exactly as its own task would: a
    queue of a thousand messages is a few connections, not a thousand. Their
    own tasks, if any, arriving later, find them sent and do nothing. They go
    in batches of `DRAIN_BATCH`: after each, the batch's Sent copies are
    written over the run's IMAP session and answered while the next batch
    is sent (`_SentCopies`), its send locks held until then (no other
    delivery of a task appends one again), then released. A batch cut
    short by an error still gets its copies; a copy never made (the worker
    died) is made by the dispatcher's next round (`outbox_dispatch_due`).

    `drain` (the token of the account's drain mark, given by
    `send_request`): the run ends with the hand-over of the mark
    (`_drain_handoff`). Another worker holding this draft (`busy`) may be a
    helper, which hands nothing over: such a run drains the account's other
    due items all the same. Any other run (a helper, the dispatcher's, a
    retry's) leaves the mark alone and, another worker holding its draft,
    returns `busy`; when it ends it asks for a run if items are left and no
    run holds the mark any more. `helper` (`_drain_helper`): the run frees
    its helper slot when it ends, so the next batch of a long backlog gets a
    helper again.

    The sync that stores the Sent copies (`_sync_after_send`) is asked for
    by the run that leaves nothing due behind it (or stops on an unwell
    server): a backlog of thousands syncs once, after its last run, instead
    of once a run with each sync taking the CPU the drain needs. A run that
    hands items over leaves the sync owed (`_sync_owed`); the run that ends
    the backlog asks for it even if it sent nothing itself."""
    try:
        with turn():
            run = _send_and_drain(tenant_id, draft_id, account_id, drains_busy=drain is not None)
    finally:
        if helper is not None and account_id is not None:
            _helper_free(account_id, helper)
    if run.account_id is None:
        return run.status
    if drain is not None:
        handed_over = _drain_handoff(tenant_id, run.account_id, look_again=run.healthy, token=drain)
    else:
        handed_over = run.healthy and _drain_look_again(tenant_id, run.account_id)
    _sync_owed(tenant_id, run.account_id, sent_from=run.sent_from, handed_over=handed_over)
    return run.status


def outbox_send_in_turn(
    *,
    tenant_id: uuid.UUID,
    draft_id: uuid.UUID,
    account_id: uuid.UUID | None = None,
    helper: int | None = None,
    drain: str | None = None,
) -> str:
    """`outbox_send` within the tenant's share of the workers: at most its
    `max_concurrent_sends` runs send at once, counted across the workers
    (`emailclient.core.semaphores`), so a tenant whose accounts point at a
    slow or tarpit SMTP server holds that many workers, not all of them.
    The slot is held while the run sends, and given back before it hands
    over (`outbox_send`'s `turn`).

    Without a free slot the run does not wait on its worker (`waiting`,
    `_wait_for_turn`). Redis away: the run goes on, uncounted."""
    keys = [semaphore_key(f"compose:sends:tenant:{tenant_id}")]
    holder = uuid.uuid4().hex
    # At least 1 (the admin refuses 0): none would wait forever.
    limit = max(1, tenant_limit(Tenant.objects.filter(id=tenant_id).first(), "max_concurrent_sends"))
    send = functools.partial(
        outbox_send, tenant_id=tenant_id, draft_id=draft_id, account_id=account_id, helper=helper, drain=drain
    )
    try:
        full = semaphores_acquire(keys=keys, limits=[limit], holder=holder, lease=SEND_SLOT_LEASE_SECONDS)
    except RedisError:
        logger.warning("sending runs of tenant %s not counted: Redis away", tenant_id, exc_info=True)
        return send()
    if full:
        return _wait_for_turn(tenant_id, draft_id, account_id=account_id, helper=helper, drain=drain)
    return send(turn=lambda: semaphores_held(keys=keys, holder=holder, lease=SEND_SLOT_LEASE_SECONDS))


def _wait_for_turn(
    tenant_id: uuid.UUID,
    draft_id: uuid.UUID,
    *,
    account_id: uuid.UUID | None,
    helper: int | None,
    drain: str | None,
) -> str:
    """A run that found its tenant's slots taken, without holding its worker:

    - a helper ends (the run it helps goes on);
    - the run holding the account's drain mark keeps the mark alive (takes
      it again if it expired) and comes back SEND_SLOT_WAIT_SECONDS later;
      a run whose token another run's mark has replaced ends: that run
      drains the account;
    - a run of its own (a retry's, a scheduled send's, the dispatcher's)
      leaves a due draft to its account's drain (`send_request`), so an
      account's thousand waiting items are one task coming back, not a
      thousand; a draft not due yet comes back later; anything else (a send
      a dead worker left, a Sent copy to make) is left to the dispatcher's
      sweep (`outbox_dispatch_due`, every minute), which queues such an item
      at most once per `DISPATCH_REPEAT`: the waiting tasks stay bounded."""
    if helper is not None and account_id is not None:
        _helper_free(account_id, helper)
        return WAITING
    if drain is not None and account_id is not None:
        mark = _drain_mark(account_id)
        try:
            if cache.add(mark, drain, DRAIN_MARK_SECONDS):
                pass  # expired while this run waited: its own again
            elif cache.get(mark) == drain:
                cache.touch(mark, DRAIN_MARK_SECONDS)
            else:
                return WAITING  # another run drains the account now
        except Exception:  # the dispatcher queues the account's items
            logger.warning("drain mark of account %s not renewed", account_id, exc_info=True)
    elif drain is None:
        with tenant_scope(tenant_id):
            found = (
                Draft.objects.filter(id=draft_id, is_deleted=False)
                .values_list("status", "account_id")
                .first()
            )
            due = Draft.objects.filter(_due(timezone.now()), id=draft_id).exists()
        if found is None:
            return MISSING
        status, account_id = found
        if due:
            send_request(tenant_id=tenant_id, draft_id=draft_id, account_id=account_id)
            return WAITING
        if status not in (Status.QUEUED, Status.SCHEDULED):
            return WAITING if status == Status.SENDING else status
    send_enqueue(
        tenant_id=tenant_id,
        draft_id=draft_id,
        account_id=account_id,
        drain=drain,
        countdown=settings.SEND_SLOT_WAIT_SECONDS * (1 + random.random()),  # noqa: S311 (a spread, no secret)
    )
    return WAITING


def _helper_free(account_id: uuid.UUID, helper: int) -> None:
    try:
        cache.delete(_helper_mark(account_id, helper))
    except Exception:  # the mark's timeout frees it
        logger.warning("helper slot of account %s not freed", account_id, exc_info=True)


def _sync_owed_mark(account_id: uuid.UUID) -> str:
    return f"compose:sync-owed:{account_id}"


def _sync_owed(
    tenant_id: uuid.UUID, account_id: uuid.UUID, *, sent_from: EmailAccount | None, handed_over: bool
) -> None:
    """The sync after sending, at the end of a run: owed (marked in the
    cache) while items are left to another run; else asked for, if this run
    sent a message or an earlier run of the backlog left it owed. The mark
    outlives a run that never ends by `SYNC_OWED_SECONDS`; the periodic sync
    stores those copies then."""
    mark = _sync_owed_mark(account_id)
    if handed_over:
        if sent_from is not None:
            try:
                cache.set(mark, 1, SYNC_OWED_SECONDS)
                return
            except Exception:
                logger.warning("sync of account %s not marked owed: asked for now", account_id, exc_info=True)
        else:
            return
    try:
        owed = cache.get(mark) is not None
        if owed:
            cache.delete(mark)
    except Exception:
        owed = True  # when in doubt, a sync too many
    if sent_from is None and owed:
        with tenant_scope(tenant_id):
            sent_from = EmailAccount.objects.filter(id=account_id).first()
    if sent_from is not None:
        _sync_after_send(sent_from)


@dataclass
class _Run:
    """What a run of `_send_and_drain` did."""

    status: str = MISSING
    account_id: uuid.UUID | None = None
    healthy: bool = True  # the server and the account stayed well
    sent_from: EmailAccount | None = None  # the account, if the run sent a message


def _send_and_drain(
    tenant_id: uuid.UUID, draft_id: uuid.UUID, account_id: uuid.UUID | None, *, drains_busy: bool
) -> _Run:
    """`outbox_send` but the hand-over and the sync after it."""
    with draft_send_lock(draft_id) as held:
        first: list[_Attempt] = []
        if held:
            claimed = _claim(tenant_id, draft_id)
            if isinstance(claimed, str):
                if claimed == Status.SENT:
                    _after_sent(tenant_id, [draft_id], resumed=True)
                return _Run(status=claimed, account_id=account_id)
            first, account_id = [claimed], claimed.account_id
        elif not drains_busy or account_id is None:
            return _Run(status=BUSY, account_id=account_id)
        outcome, sent_from = _drain(tenant_id, account_id, looked_at=[draft_id], first=first)
    return _Run(
        status=_status_of(tenant_id, draft_id) if held else BUSY,
        account_id=account_id,
        healthy=outcome == Status.SENT,
        sent_from=sent_from,
    )


def _drain(
    tenant_id: uuid.UUID, account_id: uuid.UUID, *, looked_at: list[uuid.UUID], first: list["_Attempt"]
) -> tuple[str, EmailAccount | None]:
    """Send the account's due items over one SMTP session, a batch at a
    time (`first`, claimed already, with the first): the last batch's
    outcome, and the account if a message was sent."""
    deadline = time.monotonic() + DRAIN_SECONDS
    with _Sender(tenant_id, account_id) as sender:
        while True:
            more = _due_of_account(tenant_id, account_id, exclude=looked_at, limit=DRAIN_BATCH + 1)
            if len(more) > DRAIN_BATCH:
                _drain_helper(tenant_id, account_id, more.pop())
            looked_at.extend(more)
            outcome = _drain_batch(sender, more, deadline, claimed=first)
            first = []
            if (
                outcome != Status.SENT
                or not more
                or len(looked_at) > DRAIN_LIMIT
                or time.monotonic() >= deadline
            ):
                break
    return outcome, sender.account if sender.sent_any else None


def _drain_helper(tenant_id: uuid.UUID, account_id: uuid.UUID, draft_id: uuid.UUID) -> None:
    """A backlog of more than a batch: one more task drains the account
    beside this run (over a connection of its own; the send locks and
    claims keep each item to one of them), starting past this run's batch.
    At most `DRAIN_HELPERS` at once per account: each holds a slot in the
    cache until its run ends (or `DRAIN_MARK_SECONDS`, for a lost task)."""
    try:
        for slot in range(DRAIN_HELPERS):
            if cache.add(_helper_mark(account_id, slot), 1, DRAIN_MARK_SECONDS):
                send_enqueue(tenant_id=tenant_id, draft_id=draft_id, account_id=account_id, helper=slot)
                return
    except Exception:
        logger.warning("no helper for the drain of account %s", account_id, exc_info=True)


def _drain_batch(
    sender: "_Sender", draft_ids: list[uuid.UUID], deadline: float, *, claimed: list["_Attempt"]
) -> str:
    """Claim and send these drafts (the ones no other worker holds), then
    store the batch's Sent copies; `sent` unless the server or the
    connection turned unwell (the rest then wait for their own tasks).

    The batch's send locks are taken in one statement and its due items
    claimed in another (each still `sending` under its row lock, attempts +
    1, exactly as `_claim` does one), instead of two round trips and a
    transaction per item; those the run does not get to are put back.
    `claimed`: attempts claimed already (the task's own draft), sent first.

    The batch's Sent copies go whatever happened in between: written to the
    IMAP server now and its answer read at the next batch's end (or the
    run's), so the server saves them while the next batch is sent
    (`_SentCopies`); the batch's send locks are held until then."""
    keys = _send_locks_take(draft_ids)
    sent: list[uuid.UUID] = []
    try:
        held = [draft_id for draft_id in draft_ids if _lock_key(draft_id) in keys]
        attempts = [*claimed, *_claim_batch(sender.tenant_id, sender.account_id, held)]
        return _send_batch(sender, attempts, sent, deadline=deadline)
    finally:
        in_flight = False
        try:
            sender.copies.finish()  # the previous batch's, releasing its locks
            in_flight = sender.copies.start(sent, keys)
            sender.sent_any = sender.sent_any or bool(sent)
        finally:
            if not in_flight:
                _send_locks_release(keys)


def _send_batch(
    sender: "_Sender", attempts: list["_Attempt"], sent: list[uuid.UUID], *, deadline: float | None = None
) -> str:
    """Send each claimed attempt (the ids of those sent added to `sent`);
    `sent` while the session is healthy. Attempts not made (the session
    broke, the deadline passed) go back to `queued` untouched."""
    outcome: str = Status.SENT
    index = 0
    try:
        while index < len(attempts):
            if deadline is not None and time.monotonic() >= deadline:
                break
            attempt = attempts[index]
            index += 1
            result = sender.deliver(attempt)
            if result == Status.SENT:
                sent.append(attempt.draft_id)
            if sender.broken or result in (Status.QUEUED, Status.UNCERTAIN):
                outcome = Status.FAILED if result == Status.SENT else result
                break
    finally:
        # The outcomes still pending (`_Sender.deliver`) are committed
        # before anything else is done with these items.
        sender.outcomes_commit()
        _unclaim(sender.tenant_id, attempts[index:])
    return outcome


def _status_of(tenant_id: uuid.UUID, draft_id: uuid.UUID) -> str:
    with tenant_scope(tenant_id):
        return str(Draft.objects.filter(id=draft_id).values_list("status", flat=True).first() or MISSING)


def _due(now: datetime) -> Q:
    """Drafts due to be sent at `now`."""
    return (
        Q(status=Status.QUEUED)
        & (Q(outbox__next_attempt_at__isnull=True) | Q(outbox__next_attempt_at__lte=now))
        | Q(status=Status.SCHEDULED, send_at__lte=now)
    ) & Q(
        is_deleted=False,
        outbox__isnull=False,  # `_claim` refuses an item without one: never due
    )


def _due_of_account(
    tenant_id: uuid.UUID, account_id: uuid.UUID, *, exclude: list[uuid.UUID], limit: int
) -> list[uuid.UUID]:
    """Items of the account that are due now, oldest first."""
    now = timezone.now()
    with tenant_scope(tenant_id):
        return list(
            Draft.objects.filter(_due(now), account_id=account_id)
            .exclude(id__in=exclude)
            .order_by("created_at", "id")
            .values_list("id", flat=True)[:limit]
        )


# What the outbox reads of a draft: never its bodies (the message is frozen).
_DRAFT_STATE = ("id", "tenant_id", "user_id", "status", "send_at", "updated_at")


def _claim(tenant_id: uuid.UUID, draft_id: uuid.UUID, *, account_checked: bool = False) -> _Attempt | str:
    """Move a due item to `sending` (committed on return), or say why not.
    `account_checked`: the caller read the account (not deleted, enabled)
    for this run already."""
    now = timezone.now()
    with tenant_scope(tenant_id):
        draft = Draft.objects.select_for_update(of=("self",)).only(*_DRAFT_STATE).filter(id=draft_id).first()
        if draft is None:
            return MISSING
        item = SendQueueItem.objects.select_for_update(of=("self",)).filter(draft_id=draft.id).first()
        if item is None:
            if draft.status in (Status.SCHEDULED, Status.QUEUED, Status.SENDING):
                logger.error("draft %s is %s without an outbox item", draft.id, draft.status)
            return str(draft.status) if draft.status not in (Status.SCHEDULED, Status.QUEUED) else MISSING
        match draft.status:
            case Status.SCHEDULED if draft.send_at is not None and draft.send_at > now + CLOCK_TOLERANCE:
                return NOT_DUE
            case Status.QUEUED if (
                item.next_attempt_at is not None and item.next_attempt_at > now + CLOCK_TOLERANCE
            ):
                return NOT_DUE
            case Status.SCHEDULED | Status.QUEUED:
                pass
            case Status.SENDING if item.phase in ("data", "done"):
                # The previous worker died after handing the body over: the
                # server may have taken it. Never sent again automatically.
                _outcome(
                    draft,
                    item,
                    Status.UNCERTAIN,
                    error="The worker stopped after the message was transmitted; no reply was recorded.",
                )
                return Status.UNCERTAIN
            case Status.SENDING:
                pass  # died before the body went: send again
            case _:
                return str(draft.status)
        if draft.status == Status.SENDING and item.attempts >= settings.COMPOSE_SEND_MAX_ATTEMPTS:
            # A worker dying again and again before the body went. (A queued
            # item always gets its attempt; an explicit resend starts the
            # count again at 0, `compose.services.draft_send`.)
            _outcome(draft, item, Status.FAILED, error=f"Gave up after {item.attempts} attempts.")
            return Status.FAILED
        account = None if account_checked else EmailAccount.objects.filter(id=item.account_id).first()
        if not account_checked and (account is None or account.is_deleted or not account.is_enabled):
            _outcome(draft, item, Status.FAILED, error="The sending account is deleted or disabled.")
            return Status.FAILED
        draft.status = Status.SENDING
        draft.save(update_fields=["status", "updated_at"])
        item.attempts += 1
        item.phase = "connect"
        item.last_attempt_at = now
        item.next_attempt_at = None
        item.save(update_fields=["attempts", "phase", "last_attempt_at", "next_attempt_at", "updated_at"])
        return _Attempt(
            tenant_id=tenant_id,
            draft_id=draft.id,
            item_id=item.id,
            account_id=item.account_id,
            actor_id=draft.user_id,
            raw_blob_key=item.raw_blob_key,
            envelope_from=item.envelope_from,
            recipients=list(item.recipients),
            attempt=item.attempts,
            message_id=item.message_id,
        )


class _Sender:
    """The SMTP session of one run of `outbox_send`: the account read and
    its credentials decrypted once, one connection for every message."""

    def __init__(self, tenant_id: uuid.UUID, account_id: uuid.UUID):
        self.tenant_id = tenant_id
        self.account_id = account_id
        self.session: SmtpSession | None = None
        self.setup_error: Exception | None = None
        # The account's settings or the server refuse us (no login, no TLS,
        # no connection): the other items must not each try again now.
        self.broken = False
        # Outcomes of delivered messages not committed yet (`deliver`).
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.account: EmailAccount | None = None
        self.sent_any = False  # a message of the run was sent: a sync at its end
        self.copies = _SentCopies(tenant_id)

    def __enter__(self) -> "_Sender":
        try:
            # A deactivated tenant's or a removed member's credentials are not used.
            account = self.account = account_for_sync(tenant_id=self.tenant_id, account_id=self.account_id)
            self.session = SmtpSession(smtp_config(account), account_credentials(account=account, smtp=True))
        except AccountNotSyncable as exc:
            self.setup_error = PermanentFailure(str(exc))
        except Exception as exc:  # no SMTP server any more, a key that does not decrypt...
            self.setup_error = exc
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.copies.close()
        finally:
            if self.session is not None:
                self.session.close()

    def deliver(self, attempt: _Attempt) -> str:
        """Talk SMTP (no transaction open) and record the outcome.

        A delivered message's outcome (`sent`, its results and audit entry)
        is not committed on its own: it goes in the same transaction (and
        round trip) as the next message's "data" phase, or with the batch's
        end (`outcomes_commit`), always before anything else touches the
        item. Until then the item is `sending` at phase "data": a worker
        dying in between leaves it `uncertain`, never sent twice, exactly
        as one dying between the server's reply and a commit of its own.
        Any other outcome is committed at once, after the pending ones."""
        committed_phase = "connect"
        reached = ""

        def on_phase(phase: str) -> None:
            nonlocal committed_phase, reached
            reached = phase
            # Only "data" matters to a worker that takes over (before it,
            # the message is sent again): committed before the first byte of
            # the body goes, and only while the item is still this attempt's.
            if phase == "data":
                params = {"now": timezone.now(), "item": str(attempt.item_id), "attempt": attempt.attempt}
                *outcomes, data = _statements_run(attempt.tenant_id, [*self.pending, (_PHASE_DATA, params)])
                self._outcomes_check(outcomes)
                if len(data) != 1:
                    raise RuntimeError("the item is no longer this attempt's: the body is not sent")
                committed_phase = phase

        try:
            if self.session is None:
                self.broken = True
                raise self.setup_error or RuntimeError("no SMTP session")
            data = default_store().get(attempt.tenant_id, attempt.raw_blob_key)
            # Built for SMTPUTF8 (a non-ASCII address in a header: everything
            # else is encoded) or an envelope address that needs it.
            headers = data.split(b"\r\n\r\n", 1)[0]
            smtputf8 = not headers.isascii() or any(
                needs_smtputf8(a) for a in [attempt.envelope_from, *attempt.recipients]
            )
            result = self.session.deliver(
                envelope_from=attempt.envelope_from,
                recipients=attempt.recipients,
                data=data,
                smtputf8=smtputf8,
                on_phase=on_phase,
            )
        except TemporaryFailure as exc:
            self.broken = self.broken or reached == "connect"
            self.outcomes_commit()
            return _record(attempt, Status.QUEUED, reply=exc.reply, error=str(exc), refused=exc.refused)
        except PermanentFailure as exc:
            self.broken = (
                self.broken or reached == "connect" or isinstance(exc, InsecureServer | AuthenticationFailed)
            )
            self.outcomes_commit()
            return _record(attempt, Status.FAILED, reply=exc.reply, error=str(exc), refused=exc.refused)
        except DeliveryUncertain as exc:
            self.outcomes_commit()
            return _record(attempt, Status.UNCERTAIN, reply=None, error=str(exc))
        except BlobNotFound:
            self.outcomes_commit()
            return _record(
                attempt, Status.FAILED, reply=None, error="The frozen message is missing from storage."
            )
        except Exception as exc:
            # A bug, the database, a time limit: what we know is the last phase
            # committed. Past "data" the server may have the message.
            logger.exception("send of draft %s stopped at phase %s", attempt.draft_id, committed_phase)
            error = f"Internal error while sending ({type(exc).__name__})."
            status = Status.UNCERTAIN if committed_phase in ("data", "done") else Status.QUEUED
            if status == Status.UNCERTAIN and self.session is not None:
                self.session.close()
            self.outcomes_commit()
            return _record(attempt, status, reply=None, error=error)
        if not result.accepted:
            self.outcomes_commit()
            return _record_delivered(attempt, result)
        self.pending.append(_outcome_sent(attempt, result))
        logger.info("send of draft %s: sent after %d attempt(s)", attempt.draft_id, attempt.attempt)
        return Status.SENT

    def outcomes_commit(self) -> None:
        """Commit the delivered messages' outcomes still pending."""
        if self.pending:
            self._outcomes_check(_statements_run(self.tenant_id, self.pending))

    def _outcomes_check(self, results: list[list[tuple[Any, ...]]]) -> None:
        written = len(self.pending)
        self.pending = []
        for rows in results[:written]:
            if len(rows) != 1:
                # Cannot happen while we hold the send locks; nothing was overwritten.
                logger.error("an item changed under its send lock; its outcome `sent` was not recorded")


def _outcome_sent(attempt: _Attempt, result: DeliveryResult) -> tuple[str, dict[str, Any]]:
    """The statement recording a delivered attempt (as `_record` and
    `_outcome` would): `sent`, the reply, each recipient's result, and the
    audit entry `compose.send.sent`."""
    results = _results(result.accepted, result.refused)
    reply = result.reply
    changes: dict[str, Any] = {
        "attempts": attempt.attempt,
        "message_id": attempt.message_id,
        "accepted": len(result.accepted),
        "refused": len(result.refused),
        "reply_code": reply.code,
        "reply": reply.text[:2000][:500],
    }
    return _OUTCOME_SENT, {
        "now": timezone.now(),
        "draft": str(attempt.draft_id),
        "item": str(attempt.item_id),
        "attempt": attempt.attempt,
        "code": reply.code,
        "reply": reply.text[:2000],
        "results": json.dumps(results),
        "audit": str(uuid.uuid4()),
        "tenant": str(attempt.tenant_id),
        "actor": attempt.actor_id,
        "changes": json.dumps(changes),
    }


def _results(accepted: dict[str, SmtpReply], refused: dict[str, SmtpReply]) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for address, reply in accepted.items():
        results[address] = {"status": "accepted", "code": reply.code, "reply": reply.text[:1000]}
    for address, reply in refused.items():
        results[address] = {"status": "refused", "code": reply.code, "reply": reply.text[:1000]}
    return results


def _record_delivered(attempt: _Attempt, result: DeliveryResult) -> str:
    if not result.accepted:
        return _record(
            attempt,
            Status.FAILED,
            reply=result.reply,
            error="Every recipient was refused.",
            refused=result.refused,
        )
    return _record(
        attempt, Status.SENT, reply=result.reply, error="", accepted=result.accepted, refused=result.refused
    )


def _record(
    attempt: _Attempt,
    status: str,
    *,
    reply: SmtpReply | None,
    error: str,
    accepted: dict[str, SmtpReply] | None = None,
    refused: dict[str, SmtpReply] | None = None,
) -> str:
    """Record an attempt's outcome under the row lock. `queued` is a
    temporary failure: queued again with backoff, or `failed` at the limit."""
    with tenant_scope(attempt.tenant_id):
        draft = Draft.objects.select_for_update(of=("self",)).only(*_DRAFT_STATE).get(id=attempt.draft_id)
        item = SendQueueItem.objects.select_for_update(of=("self",)).get(id=attempt.item_id)
        if draft.status != Status.SENDING or item.attempts != attempt.attempt:
            # Cannot happen while we hold the send lock; never overwrite.
            logger.error("draft %s changed under its send lock (%s)", draft.id, draft.status)
            return str(draft.status)
        if reply is not None:
            item.last_reply_code, item.last_reply = reply.code, reply.text[:2000]
        if accepted is not None or refused:
            item.recipient_results = _results(accepted or {}, refused or {})
        if status == Status.QUEUED and item.attempts >= settings.COMPOSE_SEND_MAX_ATTEMPTS:
            status = Status.FAILED
            error = f"{error} (gave up after {item.attempts} attempts)"
        _outcome(draft, item, status, error=error)
        return status


def _outcome(draft: Draft, item: SendQueueItem, status: str, *, error: str) -> None:
    """Write the item's new status and its audit entry (in the caller's
    transaction); a retry is queued once it commits."""
    now = timezone.now()
    item.error = error[:2000]
    if status == Status.SENT:
        item.phase = "done"
    elif status == Status.QUEUED:
        item.phase = ""
    changes: dict[str, Any] = {"attempts": item.attempts, "message_id": item.message_id}
    if status == Status.SENT:
        item.sent_at = now
        results = item.recipient_results.values()
        changes["accepted"] = sum(1 for r in results if r.get("status") == "accepted")
        changes["refused"] = sum(1 for r in results if r.get("status") == "refused")
    elif status == Status.QUEUED:
        countdown = backoff_countdown(item.attempts - 1)
        item.next_attempt_at = now + timedelta(seconds=countdown)
        changes["next_attempt_at"] = item.next_attempt_at.isoformat()
        tenant_id, draft_id = draft.tenant_id, draft.id
        transaction.on_commit(
            lambda: send_enqueue(tenant_id=tenant_id, draft_id=draft_id, countdown=countdown)
        )
    if item.last_reply_code is not None:
        changes["reply_code"] = item.last_reply_code
        changes["reply"] = item.last_reply[:500]
    if error:
        changes["error"] = item.error[:500]
    item.save()
    draft.status = status
    draft.save(update_fields=["status", "updated_at"])
    action = "retry" if status == Status.QUEUED else status
    audit_log_record_many(
        tenant_id=draft.tenant_id,
        actor_id=draft.user_id,
        action=f"compose.send.{action}",
        object_type="draft",
        entries=[(draft.id, changes)],
    )
    log = logger.info if status == Status.SENT else logger.warning
    log("send of draft %s: %s after %d attempt(s)", draft.id, status, item.attempts)


# --- After sending ----------------------------------------------------------------


def _after_sent(
    tenant_id: uuid.UUID, draft_ids: list[uuid.UUID], *, resumed: bool, sync: bool = True
) -> None:
    """The Sent copies, the Drafts copies' removal and a sync, once items
    are `sent` (all of one account). `resumed`: a later delivery of a task,
    finishing what a dead worker may have left (nothing when the Sent copy
    is recorded; else the copy is looked for by Message-ID first). `sync`
    False: the caller asks for the sync itself (a drain, once at its end)."""
    items = _sent_items(tenant_id, draft_ids)
    if resumed:
        items = [item for item in items if not item.sent_copy]
    if not items:
        return
    account = items[0].account
    _sent_copies_record(tenant_id, items, _sent_copies_store(items, account, look_first=resumed))
    if sync:
        _sync_after_send(account)


def _sent_items(tenant_id: uuid.UUID, draft_ids: list[uuid.UUID]) -> list[SendQueueItem]:
    if not draft_ids:
        return []
    with tenant_scope(tenant_id):
        return list(
            SendQueueItem.objects.select_related("account", "draft")
            .filter(draft_id__in=draft_ids)
            .order_by("sent_at", "id")
        )


def _sent_copies_record(
    tenant_id: uuid.UUID, items: list[SendQueueItem], outcomes: dict[uuid.UUID, tuple[str, str]]
) -> None:
    """Record each item's Sent copy; then the Drafts copies' removal."""
    with tenant_scope(tenant_id):
        now = timezone.now()
        for state in ("appended", "skipped"):
            ids = [item.id for item in items if outcomes.get(item.id) == (state, "")]
            if ids:
                SendQueueItem.objects.filter(id__in=ids).update(sent_copy=state, updated_at=now)
        for item in items:
            state, error = outcomes.get(item.id, ("", ""))
            if error:
                SendQueueItem.objects.filter(id=item.id).update(
                    sent_copy=state, error=f"Sent copy: {error}"[:2000], updated_at=now
                )
    for item in items:
        draft = item.draft
        if draft.server_uid is not None or draft.server_version > 0:
            current_app.send_task(
                "compose.tasks.save_draft_copy",
                kwargs={"tenant_id": str(tenant_id), "draft_id": str(draft.id)},
            )


def _sync_after_send(account: EmailAccount) -> None:
    """The sync that stores the Sent copies (`SYNC_AFTER_SEND_DELAY` later)."""
    if account.protocol == "imap" and not account.is_deleted:
        from mailboxes.services import sync_request

        try:
            sync_request(account=account, countdown=SYNC_AFTER_SEND_DELAY, again_if_joined=True)
        except Exception:
            logger.warning("sync after sending from account %s not queued", account.id, exc_info=True)


def _sent_copies_store(
    items: list[SendQueueItem], account: EmailAccount, *, look_first: bool
) -> dict[uuid.UUID, tuple[str, str]]:
    """Append the sent bytes of each item to the Sent folder, over one IMAP
    session; per item ("appended" | "skipped" | "failed", error).
    `look_first`: skip an item whose Message-ID is in the folder already (a
    dead worker may have appended it and not recorded it). Without it, the
    item was sent just now and cannot have a copy yet."""
    if not account.save_sent_copy:
        return {item.id: ("skipped", "") for item in items}
    if account.protocol != "imap":
        return {item.id: ("skipped", "") for item in items}  # POP3: no folders on the server
    try:  # the tenant deactivated or the owner removed since the send
        account_for_sync(tenant_id=account.tenant_id, account_id=account.id)
    except (AccountNotSyncable, EmailAccount.DoesNotExist) as exc:
        return {item.id: ("failed", str(exc) or "the account is deleted") for item in items}
    with tenant_scope(account.tenant_id):
        folder = (
            Folder.objects.filter(account=account, type=FolderType.SENT)
            .order_by("name")
            .values_list("name", flat=True)
            .first()
        )
    outcomes: dict[uuid.UUID, tuple[str, str]] = {}
    try:
        with imap_session(account) as session:
            name = folder or special_folder_name(session, SPECIAL_USE[FolderType.SENT])
            if name is None:
                return {item.id: ("failed", "the account has no Sent folder") for item in items}
            _sent_copies_append(session, name, items, outcomes, look_first=look_first)
    except Exception as exc:
        # The session failed (no connection, no login): the copies not made
        # yet are recorded as failed, with the reason.
        logger.warning("Sent copies from account %s not stored: %s", account.id, exc)
        error = str(exc)[:500] or type(exc).__name__
        for item in items:
            outcomes.setdefault(item.id, ("failed", error))
    return outcomes


def _sent_copies_append(
    session: ImapSession,
    folder: str,
    items: list[SendQueueItem],
    outcomes: dict[uuid.UUID, tuple[str, str]],
    *,
    look_first: bool,
) -> None:
    """`_sent_copies_store`'s appends over a session: pipelined where the
    server takes it, else one APPEND at a time. A lost connection raises,
    leaving the rest to the caller."""
    if look_first:
        session.client.select_folder(folder)
    elif session.client.has_capability("LITERAL+"):
        _sent_copies_pipelined(session, folder, items, outcomes)
        return
    for item in items:
        if look_first and message_id_uids(session, item.message_id):
            outcomes[item.id] = ("appended", "")
            continue
        try:
            data = default_store().get(item.tenant_id, item.raw_blob_key)
            session.client.append(folder, data, flags=[b"\\Seen"], msg_time=item.sent_at or timezone.now())
        except (BlobNotFound, IMAPClientError) as exc:
            # This message only (the server said NO, its bytes are gone):
            # the others go on. IMAPClientAbortError, a lost connection, is
            # not one of these.
            if isinstance(exc, IMAPClientAbortError):
                raise
            logger.warning("Sent copy of draft %s not stored: %s", item.draft_id, exc)
            outcomes[item.id] = ("failed", str(exc)[:500] or type(exc).__name__)
            continue
        outcomes[item.id] = ("appended", "")


# The Sent copies of a batch go to a server that takes non-synchronising
# literals (LITERAL+, RFC 7888) several at a time: written without waiting
# for the server's "+" and read back after, one round trip for up to this
# many bytes of messages instead of two a message; a message larger than it
# goes alone. A server that also has MULTIAPPEND (RFC 3502) takes them as
# ONE command, saved in one transaction of its mailbox: Dovecot's maildir
# took 2000 copies in 0.2-0.4 s that way, against 2-6 s as one APPEND each
# (each a transaction, slower as the folder grows).
APPEND_PIPELINE_BYTES = 4 * 1024 * 1024


def _sent_copies_pipelined(
    session: ImapSession,
    folder: str,
    items: list[SendQueueItem],
    outcomes: dict[uuid.UUID, tuple[str, str]],
) -> None:
    """`_sent_copies_store`'s appends to a server with LITERAL+: as
    MULTIAPPEND commands where it has them (`_multiappend_write`, answered
    at once), else one pipelined APPEND each. A lost connection raises,
    leaving the rest to the caller."""
    try:
        if session.client.has_capability("MULTIAPPEND"):
            outcomes.update(_multiappend_finish(session, folder, _multiappend_write(session, folder, items)))
        else:
            _sent_copies_one_each(session, folder, items, outcomes)
    except (imaplib.IMAP4.abort, OSError) as exc:
        raise IMAPClientAbortError(str(exc)) from exc


def _copies_bytes(
    items: list[SendQueueItem], outcomes: dict[uuid.UUID, tuple[str, str]]
) -> Iterator[tuple[SendQueueItem, bytes]]:
    """Each item with its stored bytes; one whose bytes are gone is failed."""
    store = default_store()
    for item in items:
        try:
            yield item, store.get(item.tenant_id, item.raw_blob_key)
        except BlobNotFound as exc:
            logger.warning("Sent copy of draft %s not stored: %s", item.draft_id, exc)
            outcomes[item.id] = ("failed", str(exc)[:500] or type(exc).__name__)


def _copy_literal(item: SendQueueItem, data: bytes) -> bytes:
    """One message of an APPEND: seen, dated when it was sent, a
    non-synchronising literal (LITERAL+)."""
    when = datetime_to_INTERNALDATE(item.sent_at or timezone.now()).encode()
    return b' (\\Seen) "%s" {%d+}\r\n' % (when, len(data)) + data


def _refusal(kind: str, data: list[Any]) -> str:
    reply = b" ".join(d for d in data if isinstance(d, bytes)).decode(errors="replace")
    return f"{kind} {reply}"[:500]


@dataclass
class _Appends:
    """MULTIAPPEND commands written and not answered yet."""

    commands: list[tuple[bytes, list[SendQueueItem]]]  # (tag, its messages)
    large: list[SendQueueItem]  # over APPEND_PIPELINE_BYTES: alone, once answered
    outcomes: dict[uuid.UUID, tuple[str, str]]  # known already (bytes gone)


def _multiappend_write(session: ImapSession, folder: str, items: list[SendQueueItem]) -> _Appends:
    """Write the items' copies as MULTIAPPEND commands of up to
    APPEND_PIPELINE_BYTES each, without waiting for the answers."""
    imap = session.client._imap
    mailbox = session.client._normalise_folder(folder)
    appends = _Appends(commands=[], large=[], outcomes={})
    chunk: list[SendQueueItem] = []
    payload = bytearray()

    def send() -> None:
        tag = imap._new_tag()
        imap.send(b"%s APPEND %s%s\r\n" % (tag, mailbox, payload))
        appends.commands.append((tag, chunk))

    for item, data in _copies_bytes(items, appends.outcomes):
        if len(data) > APPEND_PIPELINE_BYTES:
            appends.large.append(item)
            continue
        if chunk and len(payload) + len(data) > APPEND_PIPELINE_BYTES:
            send()
            chunk, payload = [], bytearray()
        payload += _copy_literal(item, data)
        chunk.append(item)
    if chunk:
        send()
    return appends


def _multiappend_finish(
    session: ImapSession, folder: str, appends: _Appends
) -> dict[uuid.UUID, tuple[str, str]]:
    """Read the answers of `_multiappend_write`'s commands: the outcome of
    each copy. A command is all or nothing; refused (one message the server
    will not save), its messages go again one APPEND each, whose own answer
    decides each, so that one costs the others nothing."""
    outcomes = dict(appends.outcomes)
    for tag, chunk in appends.commands:
        kind, reply = session.client._imap._get_tagged_response(tag)
        if kind == "OK":
            outcomes.update((item.id, ("appended", "")) for item in chunk)
        else:
            logger.info(
                "MULTIAPPEND of %d Sent copies refused (%s): one at a time", len(chunk), _refusal(kind, reply)
            )
            _sent_copies_one_each(session, folder, chunk, outcomes)
    _sent_copies_one_each(session, folder, appends.large, outcomes)
    return outcomes


def _sent_copies_one_each(
    session: ImapSession,
    folder: str,
    items: list[SendQueueItem],
    outcomes: dict[uuid.UUID, tuple[str, str]],
) -> None:
    """One APPEND a copy, written up to APPEND_PIPELINE_BYTES at a time
    (LITERAL+) and each decided by its own answer ("appended", or "failed"
    with the server's NO); a larger message goes alone."""
    client = session.client
    imap = client._imap
    mailbox = client._normalise_folder(folder)
    pending: list[tuple[uuid.UUID, bytes]] = []
    payload = bytearray()

    def flush() -> None:
        imap.send(bytes(payload))
        for item_id, tag in pending:
            kind, reply = imap._get_tagged_response(tag)
            outcomes[item_id] = ("appended", "") if kind == "OK" else ("failed", _refusal(kind, reply))

    for item, data in _copies_bytes(items, outcomes):
        if len(data) > APPEND_PIPELINE_BYTES:
            try:
                client.append(folder, data, flags=[b"\\Seen"], msg_time=item.sent_at or timezone.now())
            except IMAPClientError as exc:
                if isinstance(exc, IMAPClientAbortError):
                    raise
                outcomes[item.id] = ("failed", str(exc)[:500] or type(exc).__name__)
            else:
                outcomes[item.id] = ("appended", "")
            continue
        if pending and len(payload) + len(data) > APPEND_PIPELINE_BYTES:
            flush()
            pending, payload = [], bytearray()
        tag = imap._new_tag()
        payload += b"%s APPEND %s%s\r\n" % (tag, mailbox, _copy_literal(item, data))
        pending.append((item.id, tag))
    if pending:
        flush()


class _SentCopies:
    """The Sent copies of a drain's batches, over one IMAP session for the
    run. A batch's copies are written as MULTIAPPEND commands (`start`) and
    the server's answers read at the next batch's end, or the run's
    (`finish`): the server saves them while the next batch is sent, where
    the drain waited for it (~90 ms a batch of 50, a fifth of its time).
    The batch's send locks are held until then (`finish` releases them), so
    no other delivery of a task appends these copies meanwhile. A server
    without LITERAL+ and MULTIAPPEND: each batch's copies are made at once,
    over the run's session. An account that keeps no copy, or no session or
    Sent folder: as `_after_sent` makes them. Copies written and never
    answered (the connection or the worker died) stay unrecorded: the
    dispatcher makes them later, looking for each first."""

    def __init__(self, tenant_id: uuid.UUID):
        self.tenant_id = tenant_id
        self.session: ImapSession | None = None
        self.folder = ""
        self.multiappend = False
        self._stack = contextlib.ExitStack()
        self._opened = False
        # The batch in flight: its items, commands and send locks.
        self._items: list[SendQueueItem] = []
        self._appends = _Appends(commands=[], large=[], outcomes={})
        self._keys: list[int] = []

    def start(self, draft_ids: list[uuid.UUID], keys: list[int]) -> bool:
        """Write the Sent copies of these drafts, sent just now. True: they
        are in flight, and `finish` releases the send locks `keys`; False:
        done (or given up) already, the locks are the caller's."""
        if not draft_ids:
            return False
        # Given up, the dispatcher makes the copies of `sent` items without
        # one (looking for each first: some may have been written).
        with self._giving_up("Sent copies of %d message(s) not stored: %s", len(draft_ids)):
            items = _sent_items(self.tenant_id, draft_ids)
            if not items:
                return False
            session = self._open(items[0].account)
            if session is not None and self.multiappend:
                self._appends = _multiappend_write(session, self.folder, items)
                self._items, self._keys = items, keys
                return True
            if session is not None:  # over the run's session, answered now
                outcomes: dict[uuid.UUID, tuple[str, str]] = {}
                _sent_copies_append(session, self.folder, items, outcomes, look_first=False)
            else:
                outcomes = _sent_copies_store(items, items[0].account, look_first=False)
            _sent_copies_record(self.tenant_id, items, outcomes)
        return False

    def finish(self) -> None:
        """Read the answers of the batch in flight, record its copies and
        release its send locks."""
        if not self._items:
            return
        items, keys, appends = self._items, self._keys, self._appends
        self._items, self._keys = [], []
        try:
            with self._giving_up("Sent copies of %d message(s) not recorded: %s", len(items)):
                if self.session is None:
                    raise IMAPClientAbortError("the IMAP session is gone")
                _sent_copies_record(
                    self.tenant_id, items, _multiappend_finish(self.session, self.folder, appends)
                )
        finally:
            _send_locks_release(keys)

    def close(self) -> None:
        try:
            self.finish()
        finally:
            self._drop()

    @contextlib.contextmanager
    def _giving_up(self, message: str, count: int) -> Iterator[None]:
        """A failure of the copies drops the session and is logged, not
        raised: the sending goes on. The soft time limit still ends the run."""
        try:
            yield
        except SoftTimeLimitExceeded:
            self._drop()
            raise
        except Exception as exc:
            self._drop()
            logger.warning(message, count, exc)

    def _open(self, account: EmailAccount) -> ImapSession | None:
        """The run's session, opened at its first batch; None when this
        account's copies are made another way (or not at all)."""
        if not self._opened:
            self._opened = True
            if not account.save_sent_copy or account.protocol != "imap":
                return None
            try:  # the tenant deactivated or the owner removed since the run began
                account_for_sync(tenant_id=account.tenant_id, account_id=account.id)
            except (AccountNotSyncable, EmailAccount.DoesNotExist):
                return None  # `_sent_copies_store` records why
            with tenant_scope(account.tenant_id):
                folder = (
                    Folder.objects.filter(account=account, type=FolderType.SENT)
                    .order_by("name")
                    .values_list("name", flat=True)
                    .first()
                )
            try:
                session = self._stack.enter_context(imap_session(account))
                folder = folder or special_folder_name(session, SPECIAL_USE[FolderType.SENT])
            except Exception as exc:
                self._drop()
                logger.warning("Sent copies from account %s: no IMAP session: %s", account.id, exc)
                return None
            if folder:
                self.session, self.folder = session, folder
                client = session.client
                self.multiappend = client.has_capability("LITERAL+") and client.has_capability("MULTIAPPEND")
            else:
                self._drop()  # `_sent_copies_store` records why
        return self.session

    def _drop(self) -> None:
        self.session = None
        try:
            self._stack.close()
        except Exception as exc:
            logger.info("IMAP session for Sent copies not closed cleanly: %s", exc)


# --- The dispatcher ------------------------------------------------------------------


def outbox_dispatch_due(*, now: datetime | None = None) -> int:
    """Queue the send task of every item a lost task would leave behind, in
    every active tenant; how many were queued."""
    now = now or timezone.now()
    late = now - DISPATCH_GRACE
    due: list[tuple[uuid.UUID, uuid.UUID, uuid.UUID, str]] = []
    for tenant_id in Tenant.objects.filter(is_active=True).values_list("id", flat=True):
        with tenant_scope(tenant_id):
            rows = list(
                Draft.objects.filter(
                    Q(status=Status.SCHEDULED, send_at__lte=late)
                    # Queued with no ETA task (send_at was past ETA_HORIZON):
                    # due now, no grace to wait for a task.
                    | Q(status=Status.SCHEDULED, send_at__lte=now, send_at__gt=F("updated_at") + ETA_HORIZON)
                    | Q(status=Status.QUEUED, outbox__next_attempt_at__lte=late)
                    | Q(status=Status.QUEUED, outbox__next_attempt_at__isnull=True, updated_at__lte=late)
                    | Q(status=Status.SENDING)
                    # Sent, but the worker stopped before its Sent copy was
                    # recorded: the task makes it (looking for it first).
                    | Q(
                        status=Status.SENT,
                        outbox__sent_copy="",
                        outbox__sent_at__lte=late,
                        outbox__sent_at__gte=now - SENT_COPY_SWEEP,
                    ),
                    is_deleted=False,
                ).values_list("id", "status", "account_id")
            )
        sending = [draft_id for draft_id, status, _ in rows if status in (Status.SENDING, Status.SENT)]
        busy = _send_locks_held(sending)
        due.extend((tenant_id, d, a, status) for d, status, a in rows if d not in busy)
    draining = _accounts_draining({account_id for _, _, account_id, _ in due})
    queued = 0
    for tenant_id, draft_id, account_id, status in due:
        if status == Status.QUEUED and account_id in draining:
            continue  # a task draining the account is queued or running: it sends these
        # At most once per DISPATCH_REPEAT: a long queue must not fill up
        # with copies of the items still waiting in it.
        if cache.add(f"compose:dispatched:{draft_id}", 1, DISPATCH_REPEAT):
            send_enqueue(tenant_id=tenant_id, draft_id=draft_id, account_id=account_id)
            queued += 1
    if queued:
        logger.info("outbox dispatcher queued %d send(s)", queued)
    return queued


def _accounts_draining(account_ids: set[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these accounts have a drain mark (`send_request`): a task
    that drains it is queued or running (a mark outlives a lost task by at
    most `DRAIN_MARK_SECONDS`)."""
    if not account_ids:
        return set()
    try:
        found = cache.get_many([_drain_mark(account_id) for account_id in account_ids])
    except Exception:
        logger.warning("drain marks not read: every due item gets its task", exc_info=True)
        return set()
    return {account_id for account_id in account_ids if _drain_mark(account_id) in found}
