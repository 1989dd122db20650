"""Core's Celery tasks: the scheduled backup."""

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from celery import shared_task
from django.conf import settings

from .backup import BackupError, BackupResult, encryption_key_read, scheduled_backup

logger = logging.getLogger(__name__)


@shared_task(
    name="emailclient.core.tasks.backup_scheduled",
    time_limit=settings.BACKUP_TASK_TIME_LIMIT,
    soft_time_limit=settings.BACKUP_TASK_TIME_LIMIT - 300,
)
def backup_scheduled_task() -> dict:
    """On BACKUP_SCHEDULE (CELERY_BEAT_SCHEDULE, when BACKUP_DIR is set):
    one archive in BACKUP_DIR, then all but the newest BACKUP_KEEP removed.
    One at a time (a lock file in the folder): a second run while one is
    writing returns "busy". The key comes from the settings, never from the
    task's arguments."""
    folder = settings.BACKUP_DIR
    if folder is None:
        logger.warning("scheduled backup: BACKUP_DIR is not set; nothing done")
        return {"result": "off"}
    try:
        result, pruned = _backup_locked(folder)
    except BackupError as exc:
        logger.error("scheduled backup failed: %s", exc)
        raise
    except OSError as exc:
        # E.g. a folder the worker's user cannot write (a volume owned by root).
        message = f"cannot write in {folder}: {exc.strerror} ({exc.filename})"
        logger.error("scheduled backup failed: %s", message)
        raise BackupError(message) from exc
    if result is None:
        logger.warning("scheduled backup: another backup is running in %s", folder)
        return {"result": "busy"}
    logger.info(
        "scheduled backup: wrote %s (%d bytes, %d blobs, %.1f s); removed %d old archives",
        result.path.name,
        result.size,
        result.blobs,
        result.seconds,
        len(pruned),
    )
    return {
        "result": "done",
        "archive": result.path.name,
        "bytes": result.size,
        "blobs": result.blobs,
        "pruned": [path.name for path in pruned],
    }


def _backup_locked(folder: Path) -> tuple[BackupResult | None, list[Path]]:
    """scheduled_backup under the folder's lock file; (None, []) when
    another backup holds it."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None, []
        return scheduled_backup(
            folder=folder,
            keep=settings.BACKUP_KEEP,
            databases=settings.DATABASES,
            blob_root=settings.BLOB_STORAGE_DIR,
            key=encryption_key_read(key_file=settings.BACKUP_ENCRYPTION_KEY_FILE),
        )
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
