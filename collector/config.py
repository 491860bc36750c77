"""Configuration: one TOML file, every key overridable by `COLLECTOR_<SECTION>_<KEY>`.

The precedence is defaults < TOML file < environment < command-line flags. The result is a tree
of frozen dataclasses that is built once, in the composition root, and passed down: no module
reads the environment on its own. Paths are resolved against `data_dir` here so that everything
the collector writes lives under it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from collector import defaults
from collector.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = defaults.HOST
    port: int = defaults.PORT
    workers: int = defaults.WORKERS
    datacenter_id: int = defaults.DATACENTER_ID
    worker_id: int = defaults.WORKER_ID
    max_connections: int = defaults.MAX_CONNECTIONS
    header_timeout: float = defaults.HEADER_TIMEOUT
    body_timeout: float = defaults.BODY_TIMEOUT
    keepalive_timeout: float = defaults.KEEPALIVE_TIMEOUT
    shutdown_timeout: float = defaults.SHUTDOWN_TIMEOUT
    max_body_bytes: int = defaults.MAX_BODY_BYTES
    max_events_per_request: int = defaults.MAX_EVENTS_PER_REQUEST
    max_header_bytes: int = defaults.MAX_HEADER_BYTES
    max_request_line_bytes: int = defaults.MAX_REQUEST_LINE_BYTES
    max_future_skew: float = defaults.MAX_FUTURE_SKEW
    max_pipelined: int = defaults.MAX_PIPELINED
    write_buffer_high: int = defaults.WRITE_BUFFER_HIGH


@dataclass(frozen=True, slots=True)
class SegmentsConfig:
    dir: str = defaults.SEGMENTS_DIR
    roll_bytes: int = defaults.SEGMENT_ROLL_BYTES
    roll_seconds: float = defaults.SEGMENT_ROLL_SECONDS
    durability: str = defaults.DURABILITY
    fsync_max_delay: float = defaults.FSYNC_MAX_DELAY
    rejected_dir: str = defaults.REJECTED_DIR
    rejected_max_file_bytes: int = defaults.REJECTED_MAX_FILE_BYTES
    rejected_max_files: int = defaults.REJECTED_MAX_FILES
    rejected_body_bytes: int = defaults.REJECTED_BODY_BYTES


@dataclass(frozen=True, slots=True)
class Granularity:
    name: str
    seconds: int
    retention: int
    format: str


def _default_granularities() -> tuple[Granularity, ...]:
    return tuple(
        Granularity(name=name, seconds=int(str(g["seconds"])),
                    retention=int(str(g["retention"])), format=str(g["format"]))
        for name, g in defaults.GRANULARITIES.items()
    )


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = defaults.REDIS_URL
    key_prefix: str = defaults.REDIS_KEY_PREFIX
    flush_interval: float = defaults.REDIS_FLUSH_INTERVAL
    max_pending_keys: int = defaults.REDIS_MAX_PENDING_KEYS
    timeout: float = defaults.REDIS_TIMEOUT
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class StatsConfig:
    user_key: str = defaults.STATS_USER_KEY
    window_seconds: int = defaults.STATS_WINDOW_SECONDS
    granularities: tuple[Granularity, ...] = field(default_factory=_default_granularities)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    backend: str = defaults.STORE_BACKEND
    sqlite_path: str = defaults.SQLITE_PATH
    mongodb_uri: str = defaults.MONGODB_URI
    mongodb_database: str = defaults.MONGODB_DATABASE


@dataclass(frozen=True, slots=True)
class LoaderConfig:
    embedded: bool = defaults.LOADER_EMBEDDED
    batch_size: int = defaults.LOADER_BATCH_SIZE
    poll_interval: float = defaults.LOADER_POLL_INTERVAL
    retention_days: float = defaults.LOADER_RETENTION_DAYS
    metrics_port: int = defaults.LOADER_METRICS_PORT


@dataclass(frozen=True, slots=True)
class AuthConfig:
    read_token: str = defaults.READ_TOKEN
    open_reads: bool = defaults.OPEN_READS
    write_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProcessorsConfig:
    request: tuple[str, ...] = ("redis_stats",)
    """What happens to accepted events on the request path, after the segment writer (which
    is the log itself and always first): "redis_stats", or "package.module:Class" for a
    processor of one's own (collector/processors.py)."""


@dataclass(frozen=True, slots=True)
class Config:
    data_dir: str = defaults.DATA_DIR
    server: ServerConfig = field(default_factory=ServerConfig)
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    processors: ProcessorsConfig = field(default_factory=ProcessorsConfig)

    @property
    def stats_enabled(self) -> bool:
        """Real-time Redis stats: on unless redis.enabled is false or processors.request does
        not name redis_stats."""
        return self.redis.enabled and "redis_stats" in self.processors.request

    # Paths below are derived from data_dir so that one flag moves everything.
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def under_data(self, name: str) -> Path:
        """A configured path: absolute as given, relative ones under the data directory."""
        p = Path(name)
        return p if p.is_absolute() else self.data_path / p

    @property
    def segments_path(self) -> Path:
        return self.under_data(self.segments.dir)

    @property
    def rejected_path(self) -> Path:
        return self.under_data(self.segments.rejected_dir)

    @property
    def sqlite_file(self) -> Path:
        return self.under_data(self.store.sqlite_path)

    @property
    def run_path(self) -> Path:
        """Runtime files: worker metrics snapshots, loader status, embedded Redis socket."""
        return self.data_path / "run"

    @property
    def read_token_file(self) -> Path:
        return self.data_path / "read_token"


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "segments": SegmentsConfig,
    "redis": RedisConfig,
    "stats": StatsConfig,
    "store": StoreConfig,
    "loader": LoaderConfig,
    "auth": AuthConfig,
    "processors": ProcessorsConfig,
}


_OTHER_ENV = ("config", "supervised")
"""Our COLLECTOR_* variables that are not settings: the config file's path, and the mark the
supervisor sets for its children. (Others are ignored unless they look like a misspelled
section: load_config.)"""


def _coerce(value: Any, target: Any, where: str) -> Any:
    """Convert a TOML or environment value to the dataclass field's type, or say what is wrong."""
    t = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    try:
        if t == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if t == "int":
            # No silent rounding: port = 8080.9 is a mistake to report, not 8080.
            if isinstance(value, str):
                return int(value.strip())
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if type(value) is not int:
                raise ValueError(value)
            return value
        if t == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError(value)
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(value)
            return number
        if t == "str":
            if not isinstance(value, str):
                raise ValueError(value)  # (host = 127 or a list: quote it)
            return value
        if t.startswith("tuple[str"):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(value)
            return tuple(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {_TYPE_NAMES.get(t, t)}, got {value!r}") from None
    return value


_TYPE_NAMES = {"int": "a whole number", "float": "a finite number", "str": "a quoted string",
               "bool": "true or false"}


def _granularities(value: Any, where: str) -> tuple[Granularity, ...]:
    """`[stats.granularities.<name>]` tables, or a comma list of names from the environment."""
    base = {g.name: g for g in _default_granularities()}
    if isinstance(value, str):
        names = [v.strip() for v in value.split(",") if v.strip()]
        unknown = [n for n in names if n not in base]
        if unknown:
            raise ConfigError(f"{where}: unknown granularity {unknown}; use {sorted(base)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: a granularity is named twice in {value!r}")
        return tuple(base[n] for n in names)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table of granularities")
    out = []
    for name, spec in value.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}.{name}: expected a table with seconds, retention, format")
        d = base.get(name)
        unknown = sorted(set(spec) - {"seconds", "retention", "format"})
        if unknown:
            raise ConfigError(f"{where}.{name} has no key {unknown[0]!r}; known keys: format, "
                              "retention, seconds")
        seconds = _coerce(spec.get("seconds", d.seconds if d else 0), "int",
                          f"{where}.{name}.seconds")
        retention = _coerce(spec.get("retention", d.retention if d else 0), "int",
                            f"{where}.{name}.retention")
        fmt = _coerce(spec.get("format", d.format if d else ""), "str", f"{where}.{name}.format")
        if seconds <= 0 or retention < seconds or not fmt:
            raise ConfigError(
                f"{where}.{name}: needs seconds > 0, retention >= seconds and a time format"
            )
        out.append(Granularity(name=name, seconds=seconds, retention=retention, format=fmt))
    if not out:
        raise ConfigError(f"{where}: at least one granularity is needed")
    return tuple(out)


def _build_section(cls: type[Any], values: Mapping[str, Any], section: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"[{section}] has no key {key!r}; known keys: {', '.join(sorted(known))}"
            )
        where = f"{section}.{key}"
        if cls is StatsConfig and key == "granularities":
            kwargs[key] = _granularities(value, where)
        else:
            kwargs[key] = _coerce(value, known[key].type, where)
    return cls(**kwargs)


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration.

    Args:
        path: TOML file; None means `conf/collector.toml` if it exists, else the defaults only.
            A path given explicitly must exist.
        env: environment to read `COLLECTOR_<SECTION>_<KEY>` and `COLLECTOR_DATA_DIR` from
            (defaults to os.environ).
        overrides: flag values as dotted keys, e.g. {"server.port": 9000, "data_dir": "/x"};
            None values are ignored.

    Raises:
        ConfigError: unreadable file, unknown section or key, or a value of the wrong type.
    """
    env = os.environ if env is None else env
    raw: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    top: dict[str, Any] = {}
    if path is None:
        path = env.get("COLLECTOR_CONFIG") or None
    if path is None and Path(defaults.CONFIG_FILE).is_file():
        path = defaults.CONFIG_FILE
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        for key, value in doc.items():
            if key in _SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"[{key}] must be a table")
                raw[key].update(value)
            elif key == "data_dir":
                top["data_dir"] = value
            else:
                raise ConfigError(
                    f"unknown top-level key {key!r} in {path}; sections are {sorted(_SECTIONS)}"
                )
    for name, value in env.items():
        if not name.startswith("COLLECTOR_"):
            continue
        rest = name[len("COLLECTOR_"):].lower()
        if rest == "data_dir":
            top["data_dir"] = value
            continue
        section, _, key = rest.partition("_")
        if section in _SECTIONS and key:
            raw[section][key] = value
        elif key and rest not in _OTHER_ENV:
            # A typo in a section (COLLECTOR_SERVR_PORT) would be ignored silently. Only a
            # near miss is refused: other COLLECTOR_* variables are not ours to judge
            # (Kubernetes sets COLLECTOR_SERVICE_HOST and COLLECTOR_PORT_8080_TCP for a
            # Service named collector; a wrapper may set COLLECTOR_LOG_LEVEL).
            near = difflib.get_close_matches(section, _SECTIONS, n=1, cutoff=0.8)
            if near:
                raise ConfigError(
                    f"environment variable {name} names no setting: did you mean "
                    f"COLLECTOR_{near[0].upper()}_{key.upper()}? (fix or unset it)")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        if "." not in dotted:
            top[dotted] = value
        else:
            section, key = dotted.split(".", 1)
            raw[section][key] = value
    built = {s: _build_section(cls, raw[s], s) for s, cls in _SECTIONS.items()}
    # Absolute from here on: children (loader, embedded Redis) and unix:// URLs built from it
    # must not depend on the directory they run in.
    data_dir = top.get("data_dir", defaults.DATA_DIR)
    if not isinstance(data_dir, str) or not data_dir:
        raise ConfigError(f"data_dir must be a directory path (a string), not {data_dir!r}")
    cfg = Config(data_dir=os.path.abspath(data_dir), **built)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Reject values that would only fail later, with a message naming the key."""
    s = cfg.server
    if not 0 <= s.port <= 65535:
        raise ConfigError(f"server.port must be 0-65535, got {s.port}")
    if s.workers < 1:
        raise ConfigError("server.workers must be at least 1")
    if not 0 <= s.datacenter_id <= 31:
        raise ConfigError("server.datacenter_id must be 0-31 (5 bits of the Snowflake ID)")
    if s.worker_id < 0 or s.worker_id + s.workers - 1 > 31:
        raise ConfigError(
            "server.worker_id + workers - 1 must be at most 31 (5 bits of the Snowflake ID)"
        )
    if cfg.segments.durability not in ("os", "fsync"):
        raise ConfigError("segments.durability must be 'os' or 'fsync'")
    if cfg.segments.roll_bytes < 1024:
        raise ConfigError("segments.roll_bytes must be at least 1024")
    if cfg.store.backend not in ("sqlite", "mongodb"):
        raise ConfigError("store.backend must be 'sqlite' or 'mongodb'")
    for name in ("max_body_bytes", "max_events_per_request", "max_header_bytes",
                 "max_request_line_bytes", "max_connections", "max_pipelined",
                 "write_buffer_high"):
        if getattr(s, name) < 1:
            raise ConfigError(f"server.{name} must be positive")
    if not s.host.strip():
        raise ConfigError("server.host is empty; give an address (127.0.0.1 by default, "
                          "0.0.0.0 to listen on every interface, which is then explicit)")
    _positive(cfg, "server", "header_timeout", "body_timeout", "keepalive_timeout")
    _at_least_zero(cfg, "server", "shutdown_timeout", "max_future_skew")
    _positive(cfg, "segments", "roll_seconds", "rejected_max_file_bytes", "rejected_max_files")
    _at_least_zero(cfg, "segments", "fsync_max_delay", "rejected_body_bytes")
    _positive(cfg, "redis", "flush_interval", "max_pending_keys", "timeout")
    if cfg.redis.url:
        from collector.storage.redis_client import parse_redis_url  # (imports redis)

        parse_redis_url(cfg.redis.url)  # raises ConfigError naming the fix
    _positive(cfg, "stats", "window_seconds")
    if not cfg.stats.granularities:
        raise ConfigError("stats.granularities is empty; name at least one of second, minute, "
                          "hour, day")
    if not cfg.stats.user_key:
        raise ConfigError("stats.user_key is empty; name the params key that holds the user "
                          "(user_id by default)")
    if cfg.store.backend == "mongodb":
        from pymongo.errors import PyMongoError
        from pymongo.uri_parser import parse_uri

        try:
            parse_uri(cfg.store.mongodb_uri)  # (syntax only: connects to nothing)
        except (PyMongoError, ValueError) as e:
            raise ConfigError(f"store.mongodb_uri {cfg.store.mongodb_uri!r} is not a MongoDB "
                              f"URI ({e}); use mongodb://host:port or mongodb+srv://...") from None
    if not cfg.store.sqlite_path.strip():
        raise ConfigError("store.sqlite_path is empty; give a file name (events.db by default)")
    _positive(cfg, "loader", "batch_size", "poll_interval")
    _at_least_zero(cfg, "loader", "retention_days")
    if not 0 <= cfg.loader.metrics_port <= 65535:
        raise ConfigError(f"loader.metrics_port must be 0 (off) or a port up to 65535, got "
                          f"{cfg.loader.metrics_port}")
    a = cfg.auth
    if a.read_token and (a.read_token != a.read_token.strip() or not a.read_token.strip()):
        raise ConfigError("auth.read_token has leading or trailing spaces, or only spaces; "
                          "give the token alone (or nothing, to have one generated)")
    for name in cfg.processors.request:
        module, colon, cls = name.partition(":")
        if name != "redis_stats" and not (colon and module and cls.isidentifier()):
            raise ConfigError(f"processors.request: {name!r} is not a processor; use "
                              "\"redis_stats\" or \"package.module:Class\"")
    if len(set(cfg.processors.request)) != len(cfg.processors.request):
        raise ConfigError("processors.request names a processor twice")
    if any(not k.strip() for k in a.write_keys):
        raise ConfigError("auth.write_keys holds an empty key; remove it (an empty list turns "
                          "write keys off)")


def _positive(cfg: Config, section: str, *names: str) -> None:
    for name in names:
        value = getattr(getattr(cfg, section), name)
        if not value > 0:
            raise ConfigError(f"{section}.{name} must be greater than 0, got {value}")


def _at_least_zero(cfg: Config, section: str, *names: str) -> None:
    for name in names:
        value = getattr(getattr(cfg, section), name)
        if not value >= 0:
            raise ConfigError(f"{section}.{name} must be 0 or more, got {value}")


def with_overrides(cfg: Config, **sections: Mapping[str, Any]) -> Config:
    """A copy of `cfg` with some section fields replaced; for tests and the supervisor."""
    changes: dict[str, Any] = {}
    for section, values in sections.items():
        if section == "data_dir":
            changes["data_dir"] = os.path.abspath(str(values))
            continue
        changes[section] = replace(getattr(cfg, section), **values)
    return dataclasses.replace(cfg, **changes)
