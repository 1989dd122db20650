from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "emailclient.core"
    label = "core"
    verbose_name = "Tenants and audit"

    def ready(self) -> None:
        from . import schema  # noqa: F401  (registers the OpenAPI auth extension)
