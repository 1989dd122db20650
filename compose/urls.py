from emailclient.core.routes import ApiRouter

router = ApiRouter()

urlpatterns = [
    *router.urls,
]
