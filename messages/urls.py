from django.urls import path
from rest_framework.routers import SimpleRouter

from .views import AttachmentDownloadView, MessageViewSet, SearchView, ThreadViewSet

router = SimpleRouter()
router.register("messages", MessageViewSet, basename="message")
router.register("threads", ThreadViewSet, basename="thread")

urlpatterns = [
    path("sync/search", SearchView.as_view(), name="search"),
    # The form, without a trailing slash.
    path("messages/<uuid:pk>/raw", MessageViewSet.as_view({"get": "raw"}), name="message-source"),
    path("attachments/<uuid:pk>/download", AttachmentDownloadView.as_view(), name="attachment-download"),
    *router.urls,
]
