"""Every default of the collector in one place, each with the reason it has that value.

`config.py` builds its dataclasses from these; `conf/collector.toml` documents them for users.
"""

from __future__ import annotations

# --- server -----------------------------------------------------------------------------------
HOST = "127.0.0.1"
"""Loopback by default: exposing the collector to a network is an explicit choice (SPEC §9)."""
PORT = 8080
WORKERS = 1
"""Worker processes sharing the port through SO_REUSEPORT; each gets its own Snowflake worker."""
DATACENTER_ID = 0
"""Snowflake datacenter bits (0-31); distinct (datacenter, worker) pairs never collide."""
WORKER_ID = 0
"""Snowflake worker bits (0-31) of the first worker process; worker i uses WORKER_ID + i."""
MAX_CONNECTIONS = 10_000
"""Above this a worker stops accepting until connections close, instead of running out of fds."""
HEADER_TIMEOUT = 10.0
"""Seconds a client may take to send a complete header block (slowloris defence)."""
BODY_TIMEOUT = 30.0
"""Seconds a client may go silent in the middle of a body before the connection is dropped."""
KEEPALIVE_TIMEOUT = 75.0
"""Idle seconds between requests on a keep-alive connection (nginx's default)."""
SHUTDOWN_TIMEOUT = 10.0
"""Seconds in-flight requests get to finish on SIGTERM before connections are cut."""
MAX_BODY_BYTES = 1024 * 1024
"""1 MiB, applied to the body on the wire and again after gzip decoding (no zip bombs)."""
MAX_EVENTS_PER_REQUEST = 1000
MAX_HEADER_BYTES = 16 * 1024
"""16 KiB for the whole header block: 431 above it."""
MAX_REQUEST_LINE_BYTES = 8 * 1024
"""8 KiB for the request line: 414 above it."""
MAX_FUTURE_SKEW = 86_400.0
"""An event's ts may be at most one day ahead of the server clock."""
MAX_PIPELINED = 64
"""Requests parsed ahead of their responses on one connection before reading pauses."""
WRITE_BUFFER_HIGH = 256 * 1024
"""Transport write buffer size above which a connection stops reading (backpressure)."""

# --- segments ---------------------------------------------------------------------------------
SEGMENTS_DIR = "segments"
SEGMENT_ROLL_BYTES = 64 * 1024 * 1024
"""64 MiB: large enough that the loader reads long sequential runs, small enough to retain."""
SEGMENT_ROLL_SECONDS = 60.0
"""A segment is sealed at least this often, so the loader's `.open` tail is short."""
DURABILITY = "os"
"""'os': ack once the kernel has the bytes (survives a process crash). 'fsync': ack after a
group-committed fsync (survives power loss)."""
FSYNC_MAX_DELAY = 0.0
"""With durability 'fsync': how long a commit may wait for more requests to share its fsync,
when none is running. 0 (as PostgreSQL's commit_delay and MySQL's group-commit delay): the
requests that arrive while one fsync runs share the next, which batches by itself under load.
A wait only adds to every fsync cycle: at 2 ms, a disk whose fsync takes 0.12 ms gave 21,400
acknowledged requests/s at 64 connections, against 48,800 without."""
REJECTED_DIR = "rejected"
REJECTED_MAX_FILE_BYTES = 16 * 1024 * 1024
REJECTED_MAX_FILES = 8
"""Rejected bodies are bounded: at most 8 files of 16 MiB; the oldest is deleted first."""
REJECTED_BODY_BYTES = 64 * 1024
"""Up to 64 KiB of each rejected body is kept with its reason."""

# --- redis ------------------------------------------------------------------------------------
REDIS_URL = ""
"""Empty: start and supervise an embedded redis-server on a unix socket in the data dir."""
REDIS_KEY_PREFIX = "collector"
REDIS_FLUSH_INTERVAL = 0.1
"""Counts are summed in memory and flushed in one pipeline per tick."""
REDIS_MAX_PENDING_KEYS = 200_000
"""Bound on distinct pending (bucket, type) counters kept while Redis is unreachable."""
REDIS_TIMEOUT = 1.0
"""Socket timeout for Redis commands: Redis being slow must never stall ingestion."""
STATS_USER_KEY = "user_id"
STATS_WINDOW_SECONDS = 48 * 3600
GRANULARITIES = {
    "second": {"seconds": 1, "retention": 2 * 3600, "format": "%Y%m%d%H%M%S"},
    "minute": {"seconds": 60, "retention": 49 * 3600, "format": "%Y%m%d%H%M"},
    "hour": {"seconds": 3600, "retention": 49 * 3600, "format": "%Y%m%d%H"},
    "day": {"seconds": 86400, "retention": 400 * 86400, "format": "%Y%m%d"},
}
"""Every granularity is counted at once; each keeps its own retention and key time format."""

# --- store and loader -------------------------------------------------------------------------
STORE_BACKEND = "sqlite"
SQLITE_PATH = "events.db"
MONGODB_URI = "mongodb://127.0.0.1:27017"
MONGODB_DATABASE = "collector"
LOADER_EMBEDDED = True
"""`collector serve` supervises the loader as a child process unless this is false."""
LOADER_BATCH_SIZE = 5000
LOADER_POLL_INTERVAL = 0.2
LOADER_RETENTION_DAYS = 7.0
LOADER_METRICS_PORT = 0
"""0: the loader serves no metrics port of its own (it still writes its status file)."""

# --- auth -------------------------------------------------------------------------------------
READ_TOKEN = ""
"""Empty: generate one at first start and keep it (mode 0600) in the data dir."""
OPEN_READS = False
WRITE_KEYS: list[str] = []

# --- paths ------------------------------------------------------------------------------------
DATA_DIR = "data"
CONFIG_FILE = "conf/collector.toml"
