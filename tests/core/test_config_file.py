"""The one ``--config`` reader: TOML or JSON, a named table picked when present, bad files named."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcogen.config_file import read_config_file


def test_reads_toml_and_json_and_picks_the_named_table(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[privacy]\nn_users = 3\n[other]\nx = 1\n')
    assert read_config_file(tmp_path / "a.toml", table="privacy") == {"n_users": 3}
    assert read_config_file(tmp_path / "a.toml") == {"privacy": {"n_users": 3}, "other": {"x": 1}}
    (tmp_path / "b.json").write_text('{"engine": "loopback", "lora": {"r": 4}}')
    assert read_config_file(tmp_path / "b.json", table="simulation") == {"engine": "loopback", "lora": {"r": 4}}


def test_a_missing_or_malformed_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.toml does not exist"):
        read_config_file(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("rounds = = 3\n")
    with pytest.raises(ValueError, match="bad.toml is not valid TOML"):
        read_config_file(tmp_path / "bad.toml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a table of settings, not list"):
        read_config_file(tmp_path / "list.json")
