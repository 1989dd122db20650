from emailclient.core.routes import ApiRouter, api_path

from .views import FolderViewSet, SyncStatusView, SyncTriggerView

router = ApiRouter()
router.register("folders", FolderViewSet, basename="folder")

urlpatterns = [
    api_path("sync/imap/<uuid:account_id>", SyncTriggerView.as_view(), name="sync-trigger"),
    api_path("sync/status/<uuid:account_id>", SyncStatusView.as_view(), name="sync-status"),
    *router.urls,
]
