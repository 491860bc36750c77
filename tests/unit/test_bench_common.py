"""bench/common.py's reading of the machine: what the benchmark prints beside its figures."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from tests.fixtures.server import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402

SHARED_MAPS = (
    "55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1 /usr/bin/python3.11\n"
    "7f3e1c000000-7f3e1c100000 r-xp 00000000 08:01 2 "
    "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0\n")
STATIC_MAPS = (
    "55d0c0a00000-55d0c0a01000 r-xp 00000000 08:01 1 /usr/bin/python3.11\n"
    "7f3e1c000000-7f3e1c100000 r-xp 00000000 08:01 3 /usr/lib/x86_64-linux-gnu/libc.so.6\n")


def test_interpreter_names_a_shared_libpython() -> None:
    assert common.interpreter(SHARED_MAPS) == (
        f"{platform.python_version()} {sys.executable} (libpython shared)")


def test_interpreter_names_a_libpython_linked_into_the_binary() -> None:
    assert common.interpreter(STATIC_MAPS).endswith("(libpython linked in)")


def test_interpreter_reads_this_process_by_default() -> None:
    maps = Path("/proc/self/maps").read_text()
    linked = "shared" if "/libpython" in maps else "linked in"
    assert common.interpreter().endswith(f"(libpython {linked})")
