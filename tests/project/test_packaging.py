"""The wheel: what it carries (library, app, assets; no tests), and that the installed copy runs outside the
checkout: its resource finder, its app, and ``masklab app``'s server settings from any folder.

Built offline: ``--no-build-isolation`` uses the setuptools already installed, ``--no-deps`` fetches nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest
from support import REPO, free_port

from mlm_core.cli.app import config_flags, streamlit_command
from mlm_core.resources import APP_PACKAGE, app_root, app_script, asset, streamlit_config

ROOT = REPO
NOT_SHIPPED = ("tests", "benchmarks", "recipes")
SERVER_START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout without tests/, benchmarks/ and recipes/ (the build needs
    none of them, and writes its build/ and egg-info into the copy, not into the working tree)."""
    source = tmp_path_factory.mktemp("source") / "masklab"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            ".hypothesis",
            ".benchmarks",
            ".venv",
            ".masklab",
            "runs",
            *NOT_SHIPPED,
        ),
    )
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("masklab-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel unpacked into a folder of its own: what pip installs of a pure-Python wheel."""
    site = tmp_path_factory.mktemp("site-packages")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def outside_checkout(site: Path, tmp_path: Path) -> dict:
    """The environment of a process that sees only the installed copy (not the checkout) of MaskLab."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    return {
        **env,
        "PYTHONPATH": str(site),
        "HOME": str(tmp_path),
        "MASKLAB_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def run_python(code: str, env: dict, cwd: Path, timeout: int = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_the_wheel_carries_the_library_the_app_and_every_asset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_app = [
        ROOT / "app.py",
        streamlit_config(),
        *(ROOT / "app_pages").glob("*.py"),
        *(ROOT / "ui").glob("*.py"),
        *(p for p in (ROOT / "assets").rglob("*") if p.is_file()),
    ]
    missing = [
        str(p.relative_to(ROOT))
        for p in shipped_app
        if f"{APP_PACKAGE}/{p.relative_to(ROOT).as_posix()}" not in names
    ]
    missing += [
        str(p.relative_to(ROOT))
        for p in (ROOT / "mlm_core").rglob("*.py")
        if "__pycache__" not in p.parts and p.relative_to(ROOT).as_posix() not in names
    ]
    assert missing == []  # a new subpackage or asset folder goes into pyproject.toml's packages
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"mlm_core", APP_PACKAGE, wheel.name.split("-py3")[0] + ".dist-info"}, tops


def test_no_pages_folder_beside_app_py(wheel):
    """A folder named pages/ beside the entry point switches on Streamlit's legacy page discovery: until the
    server's first st.navigation call, a page's own link runs that page without app.py, and the sidebar lists
    file names. The pages live in app_pages/."""
    assert not (app_root() / "pages").exists()
    assert not any(name.startswith(f"{APP_PACKAGE}/pages/") for name in zipfile.ZipFile(wheel).namelist())


def test_the_wheel_declares_the_command_and_the_pinned_requirements(wheel):
    archive = zipfile.ZipFile(wheel)
    info = next(name.split("/")[0] for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
    assert "masklab = mlm_core.cli:main" in archive.read(f"{info}/entry_points.txt").decode()
    metadata = archive.read(f"{info}/METADATA").decode()
    required = [
        line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")
    ]
    pins = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert required == [pin for pin in pins if pin]  # requirements.txt is the one list


def test_the_checkout_finds_its_own_files():
    assert app_root() == ROOT
    assert app_script() == ROOT / "app.py"
    assert asset("default_model", "adapter.safetensors").is_file()
    assert streamlit_config() == ROOT / ".streamlit" / "config.toml"


def test_the_installed_copy_finds_its_files_outside_the_checkout(installed, tmp_path):
    code = (
        "import json, mlm_core, mlm_core.resources as r; from mlm_core.model.default_model import ADAPTER_DIR; "
        "from mlm_core.training.probes import PRESET_FILE; "
        "print(json.dumps([mlm_core.__file__, str(r.app_root()), str(ADAPTER_DIR), PRESET_FILE.is_file(), "
        "r.asset('teach', 'lesson.json').is_file(), r.asset('demo_corpus.txt').is_file()]))"
    )
    module, root, adapter, *found = json.loads(
        run_python(code, outside_checkout(installed, tmp_path), tmp_path)
    )
    assert Path(module).is_relative_to(installed)
    assert Path(root) == installed / APP_PACKAGE
    assert (Path(adapter) / "adapter.safetensors").is_file()
    assert found == [True, True, True]


def test_the_installed_app_runs_outside_the_checkout(installed, tmp_path):
    """app.py from the wheel, its default page rendered with the default model (``ui`` is found beside it)."""
    code = (
        "from streamlit.testing.v1 import AppTest; from mlm_core.resources import app_script; "
        "app = AppTest.from_file(str(app_script()), default_timeout=240); app.run(); "
        "import json, sys; print(json.dumps([len(app.exception), [t.value for t in app.title], "
        "sys.modules['ui'].__file__]))"
    )
    exceptions, titles, ui_file = json.loads(
        run_python(code, outside_checkout(installed, tmp_path), tmp_path)
    )
    assert (exceptions, titles) == (0, ["Explore"])
    assert Path(ui_file).is_relative_to(installed / APP_PACKAGE)


def effective_settings(flags: list[str], cwd: Path, env: dict) -> dict:
    """The settings a ``streamlit run`` with these flags uses in ``cwd``: the flags parsed by Streamlit's own
    command line, then loaded the way ``streamlit run`` loads them."""
    code = (
        "import json, sys; from streamlit import config; from streamlit.web import bootstrap, cli; "
        "ctx = cli.main_run.make_context('run', ['app.py', *sys.argv[1:]]); "
        "bootstrap.load_config_options({k: v for k, v in ctx.params.items() if k not in ('target', 'args')}); "
        "print(json.dumps({name: config.get_option(name) for name in json.loads(sys.stdin.readline())}))"
    )
    settings = tomllib.loads(streamlit_config().read_text())
    names = [f"{section}.{name}" for section, options in settings.items() for name in options] + [
        "server.port"
    ]
    done = subprocess.run(
        [sys.executable, "-c", code, *flags],
        input=json.dumps(names) + "\n",
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_masklab_app_applies_the_config_toml_from_any_folder_and_the_user_options_win(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / ".streamlit").mkdir(parents=True)  # another project's settings in the working folder
    (elsewhere / ".streamlit" / "config.toml").write_text(
        "[server]\nenableXsrfProtection = false\nfileWatcherType = 'auto'\n[runner]\npostScriptGC = true\n"
    )
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}, "HOME": str(tmp_path)}
    command = streamlit_command(["--server.port", "8600", "--theme.base", "dark"])
    flags = command[command.index(str(app_script())) + 1 :]
    effective = effective_settings(flags, elsewhere, env)
    declared = tomllib.loads(streamlit_config().read_text())
    expected = {f"{s}.{n}": v for s, options in declared.items() for n, v in options.items()}
    assert effective == {**expected, "theme.base": "dark", "server.port": 8600}
    assert config_flags(streamlit_config())[:2] == ["--server.fileWatcherType", "none"]


def test_masklab_app_serves_the_installed_app_from_another_folder(installed, tmp_path):
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlm_core",
            "app",
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
        ],
        cwd=tmp_path,
        env=outside_checkout(installed, tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
    finally:
        server.send_signal(signal.SIGTERM)  # the server itself: `masklab app` hands its process over on POSIX
        try:
            assert server.wait(timeout=30) is not None
        finally:
            if server.poll() is None:
                server.kill()
            log.close()
