"""Configuration values that would only fail later (a traceback in a worker, a crash-looping
loader, a 500) or silently mean something else are refused by load_config with a message
naming the key (an audit found each of these accepted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.config import load_config
from collector.errors import ConfigError


def config(tmp_path: Path, env: dict[str, str] | None = None, toml: str | None = None) -> object:
    path = None
    if toml is not None:
        path = tmp_path / "c.toml"
        path.write_text(toml)
    return load_config(path, env={"COLLECTOR_DATA_DIR": str(tmp_path), **(env or {})})


@pytest.mark.parametrize(("name", "value", "key"), [
    ("SERVER_HOST", "", "server.host"),
    ("SERVER_HOST", "  ", "server.host"),
    ("SERVER_HEADER_TIMEOUT", "-1", "server.header_timeout"),
    ("SERVER_HEADER_TIMEOUT", "nan", "server.header_timeout"),
    ("SERVER_KEEPALIVE_TIMEOUT", "0", "server.keepalive_timeout"),
    ("SERVER_SHUTDOWN_TIMEOUT", "-5", "server.shutdown_timeout"),
    ("SERVER_MAX_FUTURE_SKEW", "-1", "server.max_future_skew"),
    ("SERVER_WRITE_BUFFER_HIGH", "0", "server.write_buffer_high"),
    ("SERVER_PORT", "80.5", "server.port"),
    ("SEGMENTS_ROLL_SECONDS", "0", "segments.roll_seconds"),
    ("SEGMENTS_ROLL_SECONDS", "-1", "segments.roll_seconds"),
    ("SEGMENTS_FSYNC_MAX_DELAY", "-1", "segments.fsync_max_delay"),
    ("SEGMENTS_REJECTED_MAX_FILES", "0", "segments.rejected_max_files"),
    ("REDIS_URL", "http://foo", "redis.url"),
    ("REDIS_FLUSH_INTERVAL", "0", "redis.flush_interval"),
    ("REDIS_MAX_PENDING_KEYS", "-1", "redis.max_pending_keys"),
    ("REDIS_TIMEOUT", "0", "redis.timeout"),
    ("STATS_GRANULARITIES", "", "stats.granularities"),
    ("STATS_GRANULARITIES", "minute,minute", "stats.granularities"),
    ("STATS_WINDOW_SECONDS", "-5", "stats.window_seconds"),
    ("STATS_USER_KEY", "", "stats.user_key"),
    ("STORE_SQLITE_PATH", "", "store.sqlite_path"),
    ("LOADER_METRICS_PORT", "70000", "loader.metrics_port"),
    ("LOADER_BATCH_SIZE", "0", "loader.batch_size"),
    ("LOADER_POLL_INTERVAL", "-1", "loader.poll_interval"),
    ("LOADER_RETENTION_DAYS", "-1", "loader.retention_days"),
    ("AUTH_READ_TOKEN", " ", "auth.read_token"),
])
def test_a_bad_value_is_refused_naming_its_key(tmp_path: Path, name: str, value: str,
                                               key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config(tmp_path, {f"COLLECTOR_{name}": value})


@pytest.mark.parametrize(("toml", "key"), [
    ("[server]\nport = 8080.9\n", "server.port"),
    ("[server]\nhost = 127\n", "server.host"),
    ("[server]\nhost = [\"a\"]\n", "server.host"),
    ("[redis]\nurl = 6379\n", "redis.url"),
    ("[auth]\nwrite_keys = [\"k\", \"\"]\n", "auth.write_keys"),
    ("[auth]\nwrite_keys = [1, 2]\n", "auth.write_keys"),
    ("[stats.granularities.second]\nseconds = 1.5\n", "stats.granularities.second.seconds"),
    ("[stats.granularities.second]\nsecs = 5\n", "stats.granularities.second"),
])
def test_a_value_of_the_wrong_type_is_refused_not_converted(tmp_path: Path, toml: str,
                                                            key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config(tmp_path, toml=toml)


def test_whole_numbers_written_as_floats_are_kept(tmp_path: Path) -> None:
    cfg = config(tmp_path, toml="[server]\nport = 9000.0\nheader_timeout = 5\n")
    assert cfg.server.port == 9000 and cfg.server.header_timeout == 5.0  # type: ignore[attr-defined]


def test_a_typo_in_a_section_of_the_environment_is_refused(tmp_path: Path) -> None:
    for name, fix in (("COLLECTOR_SERVR_PORT", "COLLECTOR_SERVER_PORT"),
                      ("COLLECTOR_LOADR_BATCH_SIZE", "COLLECTOR_LOADER_BATCH_SIZE")):
        with pytest.raises(ConfigError, match=fix):
            config(tmp_path, {name: "9000"})
    # Variables that are not settings, ours or other tools', are left alone: a review found
    # that Kubernetes sets these for a Service named "collector".
    config(tmp_path, {"COLLECTOR_SUPERVISED": "1", "COLLECTOR_TEST_MONGO_URI": "x",
                      "COLLECTOR_SERVICE_HOST": "10.0.0.1", "COLLECTOR_SERVICE_PORT": "80",
                      "COLLECTOR_PORT": "tcp://10.0.0.1:80",
                      "COLLECTOR_PORT_8080_TCP_ADDR": "10.0.0.1", "COLLECTOR_LOG_LEVEL": "x"})


@pytest.mark.parametrize("uri", ["mongo://127.0.0.1:27017", "mongodb://h:27O17", ""])
def test_a_mongodb_uri_that_can_never_work_is_refused(tmp_path: Path, uri: str) -> None:
    with pytest.raises(ConfigError, match="store.mongodb_uri"):
        config(tmp_path, {"COLLECTOR_STORE_BACKEND": "mongodb",
                          "COLLECTOR_STORE_MONGODB_URI": uri})
    config(tmp_path, {"COLLECTOR_STORE_MONGODB_URI": uri})  # (not used by sqlite)


def test_the_defaults_and_the_shipped_file_pass(tmp_path: Path) -> None:
    config(tmp_path)
    load_config(Path(__file__).parents[2] / "conf" / "collector.toml",
                env={"COLLECTOR_DATA_DIR": str(tmp_path)})
