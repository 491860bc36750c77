"""Redis clients for the stats, built from `[redis]` and a URL, in the composition root.

URLs
    `redis://[user:pass@]host[:port][/db]`, `rediss://...` (TLS), `unix:///path/to/redis.sock`
    (the embedded Redis) connect to one server. A Redis Cluster is named by the scheme
    `redis+cluster://host:port` (or `rediss+cluster://` with TLS), or by adding `cluster=true`
    to the query of a redis:// or rediss:// URL; the host is any node, the others are
    discovered. Other query parameters are redis-py connection options and win over the
    `[redis]` section (e.g. `?socket_timeout=0.5`).

Why these options
    - `socket_timeout` and `socket_connect_timeout` are `redis.timeout`: a slow or unreachable
      Redis costs a flush at most that long, and the flush runs in its own task anyway.
    - No retries (`Retry(NoBackoff(), 0)`): redis-py retries three times with backoff by
      default, which would stretch one failed flush to several timeouts. The counters retry
      on the next tick themselves, with everything that is pending.
    - `decode_responses=True`: hash fields come back as `str` event types.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from collector.config import RedisConfig
from collector.errors import ConfigError

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_PLAIN_SCHEMES = ("redis", "rediss", "unix")
_TRUE = ("1", "true", "yes", "on")


def parse_redis_url(url: str) -> tuple[str, bool]:
    """Split a configured URL into the URL redis-py understands and whether it is a cluster.

    Raises:
        ConfigError: empty URL, unknown scheme, or a cluster over a unix socket.
    """
    if not url:
        raise ConfigError(
            "no Redis URL: set redis.url, or leave it empty and let `collector serve` start "
            "the embedded Redis"
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qsl(parts.query, keep_blank_values=True)
    flags = [v for k, v in query if k.lower() == "cluster"]
    rest = [(k, v) for k, v in query if k.lower() != "cluster"]
    cluster = bool(flags) and flags[-1].strip().lower() in _TRUE
    if scheme in _CLUSTER_SCHEMES:
        scheme, cluster = _CLUSTER_SCHEMES[scheme], True
    elif scheme not in _PLAIN_SCHEMES:
        raise ConfigError(
            f"redis.url {url!r}: the scheme must be redis://, rediss://, unix://, "
            "redis+cluster:// or rediss+cluster://"
        )
    if cluster and scheme == "unix":
        raise ConfigError(f"redis.url {url!r}: a Redis Cluster is reached over TCP, not unix://")
    if not flags and scheme == parts.scheme:
        return url, cluster  # untouched: urlunsplit would turn unix:///x into unix:/x
    clean = urlunsplit((scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment))
    return clean, cluster


def _common_kwargs(cfg: RedisConfig) -> dict[str, Any]:
    return {
        "socket_timeout": cfg.timeout,
        "socket_connect_timeout": cfg.timeout,
        "decode_responses": True,
        "client_name": "collector",
    }


def make_redis_client(cfg: RedisConfig, url: str | None = None) -> Any:
    """An asyncio client (redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster).

    Connects lazily: building it never touches the network. The caller owns it and closes it
    with `await client.aclose()`.

    Args:
        url: overrides `cfg.url` (the supervisor passes the embedded Redis's unix:// URL).
    Raises:
        ConfigError: see parse_redis_url.
    """
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    clean, cluster = parse_redis_url(url if url is not None else cfg.url)
    kwargs = _common_kwargs(cfg)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    if cluster:
        return RedisCluster.from_url(clean, **kwargs)
    return Redis.from_url(clean, **kwargs)


def make_sync_redis_client(cfg: RedisConfig, url: str | None = None) -> Any:
    """A blocking client (redis.Redis or redis.cluster.RedisCluster), for CLI commands such as
    `collector stats rebuild`; same URL rules and options as make_redis_client."""
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.retry import Retry

    clean, cluster = parse_redis_url(url if url is not None else cfg.url)
    kwargs = _common_kwargs(cfg)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    if cluster:
        return RedisCluster.from_url(clean, **kwargs)
    return Redis.from_url(clean, **kwargs)
