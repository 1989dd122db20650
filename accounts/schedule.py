"""Each account's periodic sync, as a django-celery-beat PeriodicTask.

Beat runs with the database scheduler, so creating, changing or removing the
row is all it takes. The task gets ids only, never credentials.
"""

import json

from django_celery_beat.models import IntervalSchedule, PeriodicTask

from .models import EmailAccount

SYNC_TASK = "mailboxes.tasks.sync_account"


def periodic_task_name(account: EmailAccount) -> str:
    return f"sync-account-{account.id}"


def account_sync_schedule(*, account: EmailAccount) -> None:
    """Create, update or remove the account's periodic sync to match it."""
    active = account.is_enabled and account.is_sync_enabled and not account.is_deleted
    if not active:
        PeriodicTask.objects.filter(name=periodic_task_name(account)).delete()
        return
    interval, _ = IntervalSchedule.objects.get_or_create(
        every=account.sync_interval, period=IntervalSchedule.SECONDS
    )
    PeriodicTask.objects.update_or_create(
        name=periodic_task_name(account),
        defaults={
            "task": SYNC_TASK,
            "interval": interval,
            "kwargs": json.dumps({"tenant_id": str(account.tenant_id), "account_id": str(account.id)}),
            "enabled": True,
            "queue": None,
            "description": f"Periodic sync of {account.email_address}",
        },
    )
