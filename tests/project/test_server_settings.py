"""The operator's server settings: read from a TOML file and MASKLAB_* variables, validated once,
shown by ``masklab settings``, and described in the README from the one declaration."""

from __future__ import annotations

import re

import pytest
from support import REPO

from mlm_core.cli import main
from mlm_core.errors import InputError
from mlm_core.policy import ServerPolicy, describe_policy, reload_policy, server_policy


@pytest.fixture(autouse=True)
def operator_home(tmp_path, monkeypatch):
    """A home of its own with no settings file, and no settings from the environment of the test run."""
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path))
    monkeypatch.delenv("MASKLAB_CONFIG", raising=False)
    for name, _, _ in describe_policy(ServerPolicy()):
        monkeypatch.delenv(f"MASKLAB_{name.upper()}", raising=False)
    reload_policy()
    yield tmp_path
    monkeypatch.undo()
    reload_policy()


def test_defaults_are_the_declared_ones():
    assert server_policy() == ServerPolicy()
    assert server_policy().model_sources == ()  # a shared server offers nothing beyond its own models


def test_the_home_file_then_the_environment(operator_home, monkeypatch):
    (operator_home / "server.toml").write_text('model_sources = ["/srv/models", "bert-base-uncased"]\n'
                                               "max_masks_per_text = 40\n")
    assert reload_policy().model_sources == ("/srv/models", "bert-base-uncased")
    assert server_policy().max_masks_per_text == 40
    monkeypatch.setenv("MASKLAB_MAX_MASKS_PER_TEXT", "12")
    monkeypatch.setenv("MASKLAB_MODEL_SOURCES", "/a:/b")
    assert reload_policy().max_masks_per_text == 12  # a variable outranks the file
    assert server_policy().model_sources == ("/a", "/b")


@pytest.mark.parametrize(("content", "expected"), [
    ("max_masks_per_text = 0\n", "max_masks_per_text must be a whole number from 1 to 2048"),
    ("max_masks = 5\n", "unknown setting max_masks"),
    ("max_masks_per_text = \n", "cannot be read"),
    ("others_may_manage_runs = 'perhaps'\n", "others_may_manage_runs must be true or false"),
])
def test_an_invalid_file_names_itself_and_the_setting(tmp_path, monkeypatch, content, expected):
    settings = tmp_path / "class.toml"
    settings.write_text(content)
    monkeypatch.setenv("MASKLAB_CONFIG", str(settings))
    with pytest.raises(InputError, match=expected) as caught:
        reload_policy()
    assert str(settings) in str(caught.value)


def test_a_missing_named_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAB_CONFIG", str(tmp_path / "nowhere.toml"))
    with pytest.raises(InputError, match="not a file"):
        reload_policy()


def test_the_settings_command(monkeypatch, capsys):
    monkeypatch.setenv("MASKLAB_MAX_RUNS_PER_OWNER", "3")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"max_runs_per_owner\s+3\s+\(environment\)", out)
    monkeypatch.setenv("MASKLAB_MAX_RUNS_PER_OWNER", "many")
    assert main(["settings"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "MASKLAB_MAX_RUNS_PER_OWNER" in err


def test_the_app_refuses_to_start_with_invalid_settings_and_says_nothing_of_the_files(tmp_path, monkeypatch):
    from support.apptest import open_app_page, shown_errors

    settings = tmp_path / "secret-folder" / "class.toml"
    settings.parent.mkdir()
    settings.write_text("max_queued_runs = -1\n")
    monkeypatch.setenv("MASKLAB_CONFIG", str(settings))
    server_policy.cache_clear()  # the app reads the settings afresh, as a newly started server would
    app = open_app_page(None)
    errors = shown_errors(app)
    assert errors and "settings are invalid" in errors[0]
    assert "secret-folder" not in " ".join(errors)


def test_the_readme_table_is_the_declaration():
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- settings:start")[1].split("<!-- settings:end -->")[0]
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines() if line.startswith("| `")}
    declared = describe_policy(ServerPolicy())
    assert set(rows) == {name for name, _, _ in declared}
    for name, default, meaning in declared:
        assert f"| `{name}` | {default or '(empty)'} | {meaning} |" == rows[name], name
