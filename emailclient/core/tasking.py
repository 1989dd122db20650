"""The base class of every Celery task of the service (`emailclient.celery`
names it as the app's `task_cls`)."""

import logging
import os

from celery import Task
from django.conf import settings

from .rls import database_secured_once

logger = logging.getLogger(__name__)


class IsolatedTask(Task):
    """A task runs only in a process that has seen the database isolate
    tenants (`rls.database_secured_once`: checked once, then free). A worker
    checks at start-up; one that could not reach the database then checks
    before its first task. A signal handler could not do this: Celery logs
    what a `task_prerun` handler raises and runs the task anyway."""

    abstract = True

    def __call__(self, *args, **kwargs):
        database_secured_once()
        return super().__call__(*args, **kwargs)


def worker_priority_lower(**_kwargs: object) -> None:
    """A worker's CPU priority: `CELERY_WORKER_NICE` (10 by default), set
    before the pool forks, so its children inherit it. Where the web and
    the workers share cores, a sync or an outbox draining yields them to the
    requests (bench/send_bench.py: the API's latency while the outbox
    drains); with nothing else to run, the workers still take every core.
    Only ever lowered (raising it needs privileges)."""
    wanted = settings.CELERY_WORKER_NICE
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if wanted > current:
        os.setpriority(os.PRIO_PROCESS, 0, wanted)
        logger.info("worker CPU priority: nice %d", wanted)
