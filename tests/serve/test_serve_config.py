"""Settings: environment, TOML config file and command line, each refused with what is wrong."""

from __future__ import annotations

import pytest

from fabguard.cli import main
from fabguard.errors import InputError
from fabguard.serve.config import load_settings


def test_priority_command_line_then_file_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FABGUARD_MAX_BATCH", "4")
    monkeypatch.setenv("FABGUARD_MAX_WAIT_MS", "7")
    monkeypatch.setenv("FABGUARD_HOME", str(tmp_path / "env-home"))
    config = tmp_path / "serve.toml"
    config.write_text('max_batch = 8\ngate_min_auroc = 0.9\n')
    settings = load_settings(config, max_batch=None, home=tmp_path / "cli-home")
    assert (settings.max_batch, settings.max_wait_ms, settings.gate_min_auroc) == (8, 7.0, 0.9)
    assert settings.home == tmp_path / "cli-home"
    assert load_settings().home == tmp_path / "env-home"
    assert load_settings().db_url == f"sqlite:///{tmp_path / 'env-home' / 'fabguard.db'}"


def test_token_from_file(tmp_path):
    token = tmp_path / "token"
    token.write_text("  s3cret \nignored\n")
    assert load_settings(home=tmp_path, token_file=token).token == "s3cret"
    token.write_text("\n")
    with pytest.raises(InputError, match="token"):
        load_settings(home=tmp_path, token_file=token)
    with pytest.raises(InputError, match="cannot read"):
        load_settings(home=tmp_path, token_file=tmp_path / "missing")


@pytest.mark.parametrize("text, words", [("max_batch = 0", "max_batch"), ("nope = 1", "nope"),
                                         ("max_batch = ", "config file"), ("keep_loaded = 'x'", "keep_loaded")])
def test_bad_config_files(tmp_path, text, words):
    config = tmp_path / "serve.toml"
    config.write_text(text)
    with pytest.raises(InputError, match=words):
        load_settings(config)


def test_serve_command_refuses_a_bad_config_with_the_error_line(tmp_path, capsys):
    config = tmp_path / "serve.toml"
    config.write_text("max_pixels = 1")
    assert main(["serve", "--config", str(config), "--home", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("fabguard: error: settings: max_pixels")
    assert main(["serve", "--config", str(tmp_path / "none.toml")]) == 2
    with pytest.raises(SystemExit):
        main(["serve", "--port", "70000"])
