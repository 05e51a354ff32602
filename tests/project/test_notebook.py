"""examples/tour.ipynb runs top to bottom on the real default model, offline (nbclient + ipykernel), so the
README's pointer to it never goes stale; the README's own API example runs too."""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient
from support import REPO

NOTEBOOK = REPO / "examples" / "tour.ipynb"


def test_the_tour_notebook_executes(tmp_path, monkeypatch):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "the notebook is stored without outputs (they would go stale)"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except Exception as exc:  # noqa: BLE001 - nbclient raises CellExecutionError with the cell's traceback
        pytest.fail(f"the tour notebook failed: {exc}")
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    shown = "\n".join(str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", "")) for out in outputs)
    assert "paris" in shown  # the first prediction, as the README promises
    assert "held-out loss" in shown


def test_the_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    readme = (REPO / "README.md").read_text()
    example = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(REPO)  # the example reads assets/demo_corpus.txt from a checkout
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path))  # its evaluation cache goes here
    exec(compile(example, "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out
    assert "paris" in printed and "top1" in printed
