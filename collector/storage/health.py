"""Whether the segment directory can take events now, before a write fails.

The writer learns of a full disk or a read-only mount only when an append fails, so /healthz
said 200 until the first POST got 503, and a load balancer kept sending traffic to a node that
could store nothing. One statvfs per health check says it up front.
"""

from __future__ import annotations

import os
from pathlib import Path

MIN_FREE_BYTES = 64 * 1024
"""Less free space than this is a full disk: a few events fit, hardly a batch. (Not the body
limit: a disk with a few hundred KiB left still stores most requests, and a 503 then would
take a working node out of a load balancer.)"""


def storage_problem(directory: Path, min_free_bytes: int = MIN_FREE_BYTES) -> str | None:
    """Why `directory` cannot take events now (read-only, or less than `min_free_bytes`
    free), or None. A directory not there yet is judged by the closest existing parent (the
    writer creates it on the next write)."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError as e:
        return f"cannot inspect the segment directory {directory}: {e.strerror}"
    if st.f_flag & os.ST_RDONLY:
        return f"the segment directory {directory} is on a read-only filesystem"
    if st.f_blocks == 0:
        return None  # a filesystem that reports no sizes (some FUSE ones): nothing to judge
    # Root may write into the blocks ext4 reserves for it (f_bfree); others only f_bavail.
    free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
    if free < min_free_bytes:
        return (f"the disk of the segment directory {directory} is full ({free} bytes free); "
                "free some space")
    return None
