"""The supervisor's check of its port says what to change, whatever the bind's error."""

from __future__ import annotations

import socket

import pytest

from collector.supervisor import _check_port_free


def test_a_port_in_use_names_the_way_out() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit, match="another collector or server listens there; "
                                             "stop it, or choose another --port"):
            _check_port_free("127.0.0.1", port)


def test_an_address_of_no_interface_points_at_the_host() -> None:
    # 192.0.2.0/24 is reserved for documentation: no machine has it.
    with pytest.raises(SystemExit, match=r"192\.0\.2\.1:8080: .*; no interface .*check --host"):
        _check_port_free("192.0.2.1", 8080)


def test_a_free_port_passes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _check_port_free("127.0.0.1", port)  # no SystemExit
