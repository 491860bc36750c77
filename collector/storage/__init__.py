"""The durable log: NDJSON segment files, the per-worker segment log, the group-commit writer and
the bounded log of rejected request bodies (SPEC §5, §3)."""

from __future__ import annotations
