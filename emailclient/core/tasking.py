"""The base class of every Celery task of the service (`emailclient.celery`
names it as the app's `task_cls`)."""

from celery import Task

from .rls import database_secured_once


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
