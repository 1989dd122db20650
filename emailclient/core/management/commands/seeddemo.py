from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from emailclient.core.models import Tenant
from emailclient.core.services import tenant_member_add


class Command(BaseCommand):
    help = "Development only: the demo tenant `demo`, its user `demo` and an operator `admin`."

    def handle(self, *args, **options) -> None:
        password = getattr(settings, "DEMO_PASSWORD", None)
        if not settings.DEBUG or password is None:
            raise CommandError("seeddemo runs only with the local (DEBUG) settings.")
        User = get_user_model()
        with transaction.atomic():
            tenant, _ = Tenant.objects.get_or_create(slug="demo", defaults={"name": "Demo"})
            demo, _ = User.objects.get_or_create(username="demo")
            demo.set_password(password)
            demo.save()
            tenant_member_add(tenant=tenant, user=demo, role="admin")
            operator, _ = User.objects.get_or_create(username="admin")
            operator.is_staff = operator.is_superuser = True
            operator.set_password(password)
            operator.save()
        self.stdout.write(
            f"Demo tenant 'demo' ({tenant.id}): API user 'demo', Django admin user 'admin', "
            f"both with password {password!r} (DEMO_PASSWORD)."
        )
