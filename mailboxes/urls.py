from django.urls import path
from rest_framework.routers import SimpleRouter

from .views import FolderViewSet, SyncStatusView, SyncTriggerView

router = SimpleRouter()
router.register("folders", FolderViewSet, basename="folder")

urlpatterns = [
    path("sync/imap/<uuid:account_id>", SyncTriggerView.as_view(), name="sync-trigger"),
    path("sync/status/<uuid:account_id>", SyncStatusView.as_view(), name="sync-status"),
    *router.urls,
]
