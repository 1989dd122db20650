from emailclient.core.routes import ApiRouter

from .views import AccountViewSet

router = ApiRouter()
router.register("accounts", AccountViewSet, basename="account")

urlpatterns = router.urls
