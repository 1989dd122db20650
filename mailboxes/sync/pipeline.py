"""The two kinds of background work of a sync: blob writes on a thread pool,
and commits in order on a writer thread with its own database connection."""

import logging
import queue
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

from django.db import connection

from messages.blobs import BlobStore

logger = logging.getLogger(__name__)


class _BlobWriter:
    """Writes blobs on two background threads. A blob write is mostly work
    without the GIL (gzip in C; creating the file, which costs a few hundred
    microseconds of kernel time on ext4), so it runs on the other core while
    this thread parses. The writes not yet done hold at most `max_bytes`
    (one always goes, however big). Without `threaded`, writes run inline.
    Leaving the block waits for every write. The blobs are written but
    neither fsynced nor named: the batch's commit makes them durable
    together first (`BlobStore.flush`)."""

    def __init__(self, store: BlobStore, tenant_id: uuid.UUID, *, threaded: bool, max_bytes: int) -> None:
        self.store = store
        self.tenant_id = tenant_id
        self.max_bytes = max_bytes
        self.pending = 0
        self.done = threading.Condition()
        self.executor = ThreadPoolExecutor(2, thread_name_prefix="sync-blobs") if threaded else None

    def put(self, data: bytes, key: str) -> Future[None] | None:
        if self.executor is None:
            self.store.put(self.tenant_id, data, key, deferred=True)
            return None
        with self.done:
            while self.pending and self.pending + len(data) > self.max_bytes:
                self.done.wait()
            self.pending += len(data)
        return self.executor.submit(self._put, data, key)

    def flush(self) -> Future[None] | None:
        """Make the blobs written so far durable (`BlobStore.flush`) on a
        blob thread, ahead of the commit that waits for them; inline, the
        commit does it."""
        if self.executor is None:
            return None
        return self.executor.submit(self._flush)

    def _flush(self) -> None:
        self.store.flush()

    def _put(self, data: bytes, key: str) -> None:
        try:
            self.store.put(self.tenant_id, data, key, deferred=True)
        finally:
            with self.done:
                self.pending -= len(data)
                self.done.notify_all()

    def __enter__(self) -> "_BlobWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)


_Job = tuple[Callable[[], None], int, Callable[[], None] | None]


def _skip(skipped: Callable[[], None] | None) -> None:
    """A job's `skipped`; its own failure is logged, not raised over the
    error that made the job be skipped."""
    if skipped is None:
        return
    try:
        skipped()
    except Exception:
        logger.exception("sync: cleanup of a skipped commit failed")


class _Pipeline:
    """Runs commit jobs in order on a writer thread with its own database
    connection, so that PostgreSQL works on batch N while this thread fetches
    and parses batch N+1 (two cores, one GIL: parsing is Python, a commit is
    mostly waiting on PostgreSQL). At most two jobs wait, and the jobs not
    yet done hold at most `max_bytes` (one job always goes, however big),
    bounding memory by bytes whatever the size of the mail.

    Without `threaded` (inside an outer transaction, as in tests that roll
    back) jobs run inline. Leaving the block waits for every job; the first
    job error is raised then, or by the next `submit`. After an error no job
    runs: each job not run has its `skipped` called instead (on the writer
    thread, or in `submit` when it refuses the job), so what a job would
    have released (its UIDs' in-flight marks) is released all the same."""

    def __init__(self, *, threaded: bool, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.threaded = threaded
        self.error: BaseException | None = None
        self.max_bytes = max_bytes
        self.in_flight = 0
        self.jobs_pending = 0
        self.done = threading.Condition()
        if threaded:
            self.jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=2)
            self.thread = threading.Thread(target=self._work, name="sync-writer", daemon=True)
            self.thread.start()

    def _work(self) -> None:
        try:
            while (item := self.jobs.get()) is not None:
                job, size, skipped = item
                try:
                    if self.error is None:
                        job()
                    else:
                        _skip(skipped)
                except BaseException as exc:
                    self.error = exc
                finally:
                    with self.done:
                        self.in_flight -= size
                        self.jobs_pending -= 1
                        self.done.notify_all()
        finally:
            connection.close()

    def submit(
        self, job: Callable[[], None], size: int = 0, skipped: Callable[[], None] | None = None
    ) -> None:
        """Queue `job`; `skipped` runs instead if it never will (an earlier
        job failed, or this call is interrupted before the job is queued).
        Inline, `job` runs here and handles its own failure."""
        if self.error is not None:
            _skip(skipped)
            raise self.error
        if not self.threaded:
            job()
            return
        counted = False
        try:
            with self.done:
                while self.in_flight and self.in_flight + size > self.max_bytes and self.error is None:
                    self.done.wait()
                self.in_flight += size
                self.jobs_pending += 1
                counted = True
            self.jobs.put((job, size, skipped))
        except BaseException:
            # Interrupted (a soft time limit) before the job was queued.
            if counted:
                with self.done:
                    self.in_flight -= size
                    self.jobs_pending -= 1
                    self.done.notify_all()
            _skip(skipped)
            raise

    def wait(self) -> None:
        """Returns once every job submitted so far is done; raises the first
        job error."""
        if self.threaded:
            with self.done:
                while self.jobs_pending:
                    self.done.wait()
        if self.error is not None:
            raise self.error

    def __enter__(self) -> "_Pipeline":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.threaded:
            # Wait for the writer whatever happens here (a soft time limit, a
            # ^C): returning early would release the account's lock while
            # batches are still being committed. It has two jobs at most.
            while True:
                try:
                    self.jobs.put(None)
                    break
                except BaseException:  # noqa: S112 - interrupted while waiting; wait again
                    continue
            while self.thread.is_alive():
                try:
                    self.thread.join()
                except BaseException:  # noqa: S112
                    continue
        if self.error is not None:
            if exc is None:
                raise self.error
            logger.error("sync writer failed as well", exc_info=self.error)
