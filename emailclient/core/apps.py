from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "emailclient.core"
    label = "core"
    verbose_name = "Tenants and audit"

    def ready(self) -> None:
        from . import lookups, schema  # noqa: F401  (register `__any` and the OpenAPI auth extension)
