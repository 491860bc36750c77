"""Self-hosted event collector: HTTP ingestion, NDJSON segments, Redis stats, a loader."""

__version__ = "0.1.0"
