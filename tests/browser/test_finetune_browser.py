"""The Fine-tune page in a real Chromium: a bad upload names its line; a started run's progress
bar moves while the page polls; Cancel stops it.

The app runs on its own server here, with MASKLAB_HOME in a temporary folder, so runs never
land in the user's store. Job processes started through the page are killed by their pids
(from that store) when the module ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import zipfile

import pytest
from support.corpora import corpus_bytes
from support.waiting import wait_for

from mlm_core.training.store import RUNNING, RunStore

from .support import streamlit_server

pytestmark = pytest.mark.browser

BAD_CSV = b"id,text\n1,the cat sat\n2,the dog ran,extra\n3,the mat\n"


@pytest.fixture(scope="module")
def masklab_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("masklab-home")
    yield home
    store = RunStore(home / "runs")
    for record in store.list():
        if record.status == RUNNING and record.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def finetune_url(chromium_path, masklab_home, tmp_path_factory):
    """A Streamlit server whose run store is ``masklab_home``; yields the Fine-tune page's URL."""
    with streamlit_server(tmp_path_factory, home=masklab_home, OMP_NUM_THREADS="1") as url:
        yield f"{url}/finetune"


def settle(page, ms: int = 600) -> None:
    """Let Streamlit finish the rerun a widget change started."""
    page.wait_for_timeout(ms)
    page.locator('[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]'
                 ).first.wait_for(state="detached", timeout=120_000)


def upload(page, name: str, data: bytes, mime: str = "text/plain") -> None:
    page.locator("input[type=file]").set_input_files({"name": name, "mimeType": mime, "buffer": data})
    settle(page)


def set_number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    settle(page)


def progress_value(page) -> float:
    bar = page.locator('[role="progressbar"]').first
    return float(bar.get_attribute("aria-valuenow") or 0)




def test_start_a_run_and_watch_its_progress_bar_move(page, finetune_url, tiny_model_dir, masklab_home, artifacts):
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(finetune_url)  # a fresh server's first visitor, by the page's own link
    page.get_by_text("Block 1:", exact=False).first.wait_for()  # the demo corpus preview
    nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
    assert "Fine-tune" in nav and "app" not in nav.split()  # routed by app.py, not legacy pages/ mode

    page.get_by_text("Upload a file", exact=True).click()
    settle(page)
    upload(page, "<img src=x onerror=alert(1)>.csv", BAD_CSV, "text/csv")
    error = page.get_by_text("Line 3", exact=False).first
    error.wait_for()
    assert "3 fields where the header has 2" in error.inner_text()
    assert page.locator("img[src='x']").count() == 0
    page.screenshot(path=str(artifacts / "finetune-bad-upload.png"), full_page=True)

    upload(page, "tiny.txt", corpus_bytes())
    page.get_by_text("240 texts", exact=False).first.wait_for()
    # Start and the estimate sit above the settings now: the model list is below the fold, and a list
    # opened by a click that scrolls the page closes again. Scroll first.
    page.get_by_text("estimated time", exact=False).first.wait_for()
    settle(page)
    picker = page.locator('[data-testid="stSelectbox"]').filter(has_text="Start from")
    picker.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    picker.click()
    page.get_by_role("option", name="Other: hub id or local folder").click()
    settle(page)
    other = page.get_by_label("Hub id or model folder", exact=True)
    other.fill(str(tiny_model_dir))
    other.press("Enter")
    settle(page)
    set_number(page, "Steps", 20_000)
    set_number(page, "Batch (blocks per step)", 8)
    set_number(page, "Block length (tokens)", 32)
    page.get_by_text("Evaluation and checkpoints", exact=True).click()
    set_number(page, "Evaluate every N steps (0: about 20 evaluations per run)", 150)
    page.get_by_text("estimated time", exact=False).first.wait_for()

    page.get_by_role("button", name="Start training").click()
    page.locator('[role="progressbar"]').first.wait_for()
    assert "run=" in page.url  # the followed run is in the URL: a reload re-attaches
    first = wait_for(lambda: progress_value(page) > 0 and progress_value(page), 150, "the first steps", interval=0.5)
    later = wait_for(lambda: progress_value(page) > first and progress_value(page), 90, "the bar to move", interval=0.5)
    assert later > first
    page.get_by_text(re.compile(r"step [0-9,]+/20,000 · about .+ left")).first.wait_for()  # with an ETA
    page.locator(".js-plotly-plot").first.wait_for(timeout=150_000)  # curves after the first evaluation
    page.locator('[role="progressbar"]').first.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "finetune-live.png"))

    page.reload()  # a closed and reopened tab comes back to the same run
    page.locator('[role="progressbar"]').first.wait_for()
    assert wait_for(lambda: progress_value(page) >= later and progress_value(page), 60, "re-attaching", interval=0.5)
    page.get_by_role("button", name="Cancel the run").click()
    page.get_by_text("cancelled", exact=False).first.wait_for(timeout=90_000)
    page.screenshot(path=str(artifacts / "finetune-cancelled.png"), full_page=True)
    runs = RunStore(masklab_home / "runs").list()
    assert len(runs) == 1 and runs[0].status == "cancelled"

    page.goto(finetune_url.replace("/finetune", "/runs"))
    page.get_by_text("1 of 1 runs", exact=False).first.wait_for()
    page.screenshot(path=str(artifacts / "runs.png"))
    assert dialogs == []


def test_runs_page_compares_two_finished_runs(page, finetune_url, tiny_model_dir, masklab_home, artifacts):
    import torch

    from mlm_core.training import TrainConfig, jobs
    from ui.identity import XSRF_COOKIE, browser_owner

    store = RunStore(masklab_home / "runs")
    page.goto(finetune_url.replace("/finetune", "/runs"))  # the first visit gives the browser its XSRF cookie,
    page.get_by_role("heading", name="Runs", exact=True).wait_for()  # (runs of the test above may be listed)
    owner = browser_owner(next(c["value"] for c in page.context.cookies() if c["name"] == XSRF_COOKIE))
    threads = torch.get_num_threads()  # which makes it the owner of the runs below: only an owner downloads
    torch.set_num_threads(1)
    try:
        for strategy, masking, lr in (("random", "dynamic", 1e-3), ("span", "static", 1e-2)):
            config = TrainConfig(model=str(tiny_model_dir), device="cpu", steps=6, batch_size=4, seq_len=32,
                                 lr=lr, eval_every=2, eval_blocks=8, strategy=strategy, masking=masking,
                                 corpus_name="tiny.txt")
            record, _ = jobs.submit(store, config, corpus_bytes(), launch=False, owner=owner)
            assert jobs.execute(store, record.id).status == "finished"
    finally:
        torch.set_num_threads(threads)
    page.goto(finetune_url.replace("/finetune", "/runs"))
    page.get_by_text("runs.", exact=False).first.wait_for()
    box = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Runs to compare")
    # Menu labels are "name · created · status", the name made from the settings.
    for label in (r"^random 15% · .* · finished$", r"^span 15% static · .* · finished$"):
        box.click()
        page.get_by_role("option", name=re.compile(label)).click()
        settle(page)
    page.keyboard.press("Escape")
    page.get_by_text("Highlighted: settings that differ", exact=False).first.wait_for()
    # The caption comes before Plotly has drawn the curves: wait for them rather than count once.
    wait_for(lambda: page.locator(".js-plotly-plot").count() >= 6, 120, "the comparison's charts", interval=0.5)
    page.get_by_role("heading", name="Compare runs").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "runs-compare.png"))

    with page.expect_download(timeout=120_000) as download:  # the zip is built on this click only
        page.get_by_role("button", name="Model (.zip)").click()
    with zipfile.ZipFile(download.value.path()) as archive:
        names = archive.namelist()
    assert any(n.endswith("-model/config.json") for n in names)
    assert any(n.endswith("model.safetensors") for n in names)
