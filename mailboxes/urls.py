from django.urls import path

from .views import SyncStatusView, SyncTriggerView

urlpatterns = [
    path("sync/imap/<uuid:account_id>", SyncTriggerView.as_view(), name="sync-trigger"),
    path("sync/status/<uuid:account_id>", SyncStatusView.as_view(), name="sync-status"),
]
