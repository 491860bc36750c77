"""The shared flags of SPEC §8 on the command line, and where they put the data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from collector import cli
from collector.config import load_config
from collector.errors import ConfigError


def data_dir_of(argv: list[str]) -> str:
    args = cli.build_parser().parse_args(argv)
    return cli._config(args).data_dir


@pytest.mark.parametrize("argv", [
    ["--data-dir", "/tmp/xyz", "check-config"],
    ["check-config", "--data-dir", "/tmp/xyz"],
    ["--data-dir", "/tmp/xyz", "serve", "--port", "9"],
    ["serve", "--data-dir", "/tmp/xyz"],
    ["--data-dir", "/tmp/xyz", "stats", "rebuild", "--since", "0"],
    ["--data-dir", "/tmp/other", "loader", "--data-dir", "/tmp/xyz"],  # the later one wins
])
def test_data_dir_is_honoured_before_or_after_the_command(argv: list[str]) -> None:
    assert data_dir_of(argv) == "/tmp/xyz"


def test_a_missing_config_file_fails_wherever_the_flag_is(capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    for argv in (["--config", "/nonexistent.toml", "check-config"],
                 ["check-config", "--config", "/nonexistent.toml"]):
        assert cli.main(argv) == 2
        assert "/nonexistent.toml does not exist" in capsys.readouterr().err


def test_log_level_before_the_command_is_kept() -> None:
    assert cli.build_parser().parse_args(["--log-level", "DEBUG", "serve"]).log_level == "DEBUG"
    assert cli.build_parser().parse_args(["serve"]).log_level == "INFO"


def test_a_relative_data_dir_is_made_absolute_against_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Children (loader, embedded Redis) and unix:// URLs are built from it: they must not
    depend on the directory they run in."""
    monkeypatch.chdir(tmp_path)
    assert load_config(None, env={}).data_dir == str(tmp_path / "data")
    assert load_config(None, env={"COLLECTOR_DATA_DIR": "d2"}).data_dir == str(tmp_path / "d2")
    cfg = load_config(None, env={}, overrides={"data_dir": "sub/d3"})
    assert cfg.data_dir == str(tmp_path / "sub" / "d3")
    assert cfg.run_path == tmp_path / "sub" / "d3" / "run"
    assert os.path.isabs(cfg.sqlite_file)


def test_a_data_dir_that_is_not_a_path_is_a_configuration_error(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("data_dir = 5\n")
    with pytest.raises(ConfigError, match="data_dir must be a directory path"):
        load_config(conf, env={})
