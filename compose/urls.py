from emailclient.core.routes import ApiRouter, api_path

from .views import ComposeViewSet

router = ApiRouter()
router.register("compose", ComposeViewSet, basename="compose")

urlpatterns = [
    # The seed's form of `compose/{id}/send`.
    api_path("compose/send/<uuid:pk>", ComposeViewSet.as_view({"post": "send"}), name="compose-send-alias"),
    *router.urls,
]
