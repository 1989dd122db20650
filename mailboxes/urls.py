from emailclient.core.routes import api_path

from .views import SyncStatusView, SyncTriggerView

urlpatterns = [
    # IMAP or POP3 alike; the protocol-neutral form first.
    api_path("sync/<uuid:account_id>", SyncTriggerView.as_view(), name="sync-account"),
    api_path("sync/imap/<uuid:account_id>", SyncTriggerView.as_view(), name="sync-trigger"),
    api_path("sync/status/<uuid:account_id>", SyncStatusView.as_view(), name="sync-status"),
    # The seed's form of the same trigger.
    api_path("accounts/<uuid:account_id>/sync", SyncTriggerView.as_view(), name="account-sync"),
]
