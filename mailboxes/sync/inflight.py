"""Messages in flight, counted in Redis, so that a message that kills the
worker is not handed back forever.

Sync tasks are `acks_late` with `reject_on_worker_lost`: a worker killed in
the middle of a sync (the kernel's OOM killer, a container memory limit,
SIGKILL) gives its task back to the broker and the next worker runs it
again, from the folder's cursor, that is from the same messages. A message
that makes every worker die would loop for ever; one that fails with an
exception is quarantined by the engine and does not.

So before a batch's bodies are fetched its UIDs are marked in flight (one
counter per UID in a Redis hash per folder and UIDVALIDITY) and the marks are
cleared once the batch is committed, and taken back (one count less) when
its fetch, parse or commit fails with an exception or its commit is skipped
after another one failed (a lost connection, a full disk, are not the
message's fault). A mark still there when the folder is synced again was in
flight when a worker died:

- such UIDs (`suspects`) are fetched, parsed and committed one at a time,
  each committed before the next is fetched, so that only the message that
  kills the worker is counted again, not the batch around it;
- a UID found in flight `SYNC_MAX_WORKER_LOSSES` times is quarantined
  without being fetched, with the reason.

The groups a batch splits into follow UID order, so the folder's cursor,
which each commit advances, never passes a UID not yet handled.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache

import redis
from django.conf import settings

from mailboxes.imap import FetchedMessage
from messages.models import Folder

logger = logging.getLogger(__name__)

# Marks of a folder left by a run that never came back go after this.
_TTL_SECONDS = 14 * 24 * 3600


@cache
def _client() -> redis.Redis:
    # redis-py's pool notices a fork and opens new connections in the child.
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=5)


@dataclass
class Group:
    """A run of a batch's messages, in UID order, handled as one batch."""

    metas: list[FetchedMessage]
    # In flight when a worker died before: alone, committed before the next.
    single: bool = False
    # Times a worker died with it in flight, when that reached the limit:
    # quarantined without being fetched.
    losses: int = 0
    uids: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.uids = [meta.uid for meta in self.metas]


@dataclass(frozen=True)
class Mark:
    """UIDs marked in flight in one folder's hash; cleared after commit."""

    key: str
    uids: tuple[int, ...]


class InFlight:
    def __init__(self, account_id: object) -> None:
        self.prefix = f"sync:inflight:{account_id}"
        self.max_losses = settings.SYNC_MAX_WORKER_LOSSES

    def key(self, folder: Folder) -> str:
        return f"{self.prefix}:{folder.id}:{folder.uidvalidity}"

    def groups(self, folder: Folder, metas: list[FetchedMessage]) -> Iterator[Group]:
        """`metas` (in UID order) as the groups to handle in turn: runs of
        UIDs never seen in flight as one batch, each suspect alone, each
        UID over the limit alone and refused."""
        losses = [int(count or 0) for count in _client().hmget(self.key(folder), [m.uid for m in metas])]
        run: list[FetchedMessage] = []
        for meta, lost in zip(metas, losses, strict=True):
            if not lost:
                run.append(meta)
                continue
            if run:
                yield Group(run)
                run = []
            if lost >= self.max_losses:
                logger.warning(
                    "uid %s of folder %s was in flight when %s workers died: quarantined unfetched",
                    meta.uid,
                    folder.id,
                    lost,
                )
                yield Group([meta], single=True, losses=lost)
            else:
                yield Group([meta], single=True)
        if run:
            yield Group(run)

    @contextmanager
    def started(self, folder: Folder, group: Group) -> Iterator[Mark]:
        """Marks the group's UIDs in flight (one more worker that may die
        with them); an exception leaving the block takes the marks back, a
        worker killed inside leaves them. `clear` after the commit."""
        mark = Mark(self.key(folder), tuple(group.uids))
        pipe = _client().pipeline(transaction=False)
        for uid in mark.uids:
            pipe.hincrby(mark.key, str(uid), 1)
        pipe.expire(mark.key, _TTL_SECONDS)
        pipe.execute()
        try:
            yield mark
        except MemoryError:
            raise  # the message's fault, as a kill would be
        except BaseException:
            self.undo(mark)
            raise

    def undo(self, mark: Mark) -> None:
        pipe = _client().pipeline(transaction=False)
        for uid in mark.uids:
            pipe.hincrby(mark.key, str(uid), -1)
        counts = pipe.execute()
        done = [uid for uid, count in zip(mark.uids, counts, strict=True) if count <= 0]
        if done:
            _client().hdel(mark.key, *[str(uid) for uid in done])

    @staticmethod
    def clear(mark: Mark) -> None:
        """The UIDs are committed (stored or quarantined): no longer in flight."""
        if mark.uids:
            _client().hdel(mark.key, *[str(uid) for uid in mark.uids])
