"""Process helpers shared by the supervisor and the embedded Redis."""

from __future__ import annotations

import signal


def die_with_parent() -> None:
    """For `preexec_fn`: the child gets SIGTERM when its parent dies (Linux PR_SET_PDEATHSIG).

    If the supervisor is killed outright (SIGKILL, OOM), its children stop gracefully instead
    of lingering with the port, the data directory's lock, or the embedded Redis's socket.
    Elsewhere a no-op: the supervisor's own stop path still covers the normal case.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass
