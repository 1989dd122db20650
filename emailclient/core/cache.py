"""Django's Redis cache, with one redis-py client per connection pool.

Django's `RedisCacheClient.get_client()` builds a new `redis.Redis` for
every cache call, and each build fills a table of ~170 response callbacks:
on the machines this runs on that was a quarter of a millisecond a call,
and a tenant request makes several (its rate-limit counters, a send its
drain mark). A `redis.Redis` is safe to share between threads (each command
borrows a connection from the pool), so one per pool is kept and reused.

`redis_client()` hands that client to the few places that need commands
the cache API lacks (the rate-limit counters' script, the sync slots'
leases), instead of each reaching into the backend's private parts.
"""

from typing import Any

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient as DjangoRedisCacheClient


class RedisCacheClient(DjangoRedisCacheClient):
    def __init__(self, servers: Any, **options: Any):
        super().__init__(servers, **options)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]  # Django's, not in its stubs
        client = self._clients.get(id(pool))
        if client is None:
            # Two threads racing here build two clients over the same pool:
            # harmless, one of them is kept.
            client = self._clients.setdefault(id(pool), self._client(connection_pool=pool))  # type: ignore[attr-defined]
        return client


class RedisCache(DjangoRedisCache):
    def __init__(self, server: Any, params: dict[str, Any]):
        super().__init__(server, params)
        self._class = RedisCacheClient

    def redis_client(self) -> Any:
        """The redis-py client of the cache's (first, writable) server."""
        return self._cache.get_client(write=True)  # type: ignore[attr-defined]


def redis_client(alias: str = "default") -> Any:
    """The redis-py client of cache `alias` (an `emailclient.core.cache.RedisCache`)."""
    backend = caches[alias]
    if not isinstance(backend, RedisCache):
        raise TypeError(f"cache {alias!r} is {type(backend).__name__}, not emailclient.core.cache.RedisCache")
    return backend.redis_client()
