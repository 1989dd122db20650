from emailclient.core.routes import ApiRouter, api_path

from .views import AttachmentDownloadView, FolderViewSet, MessageViewSet, SearchView, ThreadViewSet

router = ApiRouter()
router.register("folders", FolderViewSet, basename="folder")
router.register("messages", MessageViewSet, basename="message")
router.register("threads", ThreadViewSet, basename="thread")

urlpatterns = [
    api_path("sync/search", SearchView.as_view(), name="search"),
    api_path("messages/<uuid:pk>/raw", MessageViewSet.as_view({"get": "raw"}), name="message-source"),
    api_path("attachments/<uuid:pk>/download", AttachmentDownloadView.as_view(), name="attachment-download"),
    *router.urls,
]
