"""The Streamlit server configuration keeps its protections on."""

from __future__ import annotations

import tomllib

from support import REPO

CONFIG = REPO / ".streamlit" / "config.toml"


def test_server_protections_stay_on():
    server = tomllib.loads(CONFIG.read_text())["server"]
    assert server["enableXsrfProtection"] is True
    assert server["enableCORS"] is True
    assert server["fileWatcherType"] == "none"  # torch's lazy modules break the watcher


def test_no_usage_statistics_or_error_details():
    config = tomllib.loads(CONFIG.read_text())
    assert config["browser"]["gatherUsageStats"] is False
    assert config["client"]["showErrorDetails"] in ("none", False)


def test_ci_runs_the_readme_test_command():
    root = CONFIG.parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands[0] == "pip install -r requirements.txt && streamlit run app.py"
    test_command = commands[1]
    assert "pytest" in test_command
    ci = (root / ".ci" / "run").read_text(encoding="utf-8")
    assert any(line.startswith(test_command + " ") or line == test_command for line in ci.splitlines())
    assert ci.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in ci
    assert "playwright install" not in ci.replace("no `playwright install`", "")


def test_the_effective_configuration_streamlit_reads(tmp_path):
    """What a server started in the project folder really uses, read through Streamlit itself."""
    import json
    import os
    import subprocess
    import sys

    names = ["server.enableXsrfProtection", "server.enableCORS", "server.fileWatcherType", "runner.postScriptGC",
             "server.maxUploadSize", "browser.gatherUsageStats"]
    script = ("import json, sys; from streamlit import config; config.get_config_options(force_reparse=True); "
              "print(json.dumps({n: config.get_option(n) for n in sys.argv[1:]}))")
    env = {**os.environ, "HOME": str(tmp_path)}  # no user-level config.toml in the way
    env = {k: v for k, v in env.items() if not k.startswith("STREAMLIT_")}
    done = subprocess.run([sys.executable, "-c", script, *names], cwd=CONFIG.parent.parent, env=env,
                          capture_output=True, text=True, check=True)
    effective = json.loads(done.stdout.strip().splitlines()[-1])
    assert effective == {"server.enableXsrfProtection": True, "server.enableCORS": True,
                         "server.fileWatcherType": "none", "runner.postScriptGC": False,
                         "server.maxUploadSize": 50, "browser.gatherUsageStats": False}
