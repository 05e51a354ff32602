"""The Batch analysis page in a real Chromium: upload a small file by its file input, run the
analysis by clicking, read the results and the summary download. The file's name and one of its
sentences carry HTML: both stay text and no script runs."""

from __future__ import annotations

import json
import re

import pytest

from mlm_core.evaluate import EvalConfig, evaluate
from mlm_core.masking import STRATEGIES, build_strategy

from .support import EXCEPTION, Watch, assert_no_script_ran, settle

pytestmark = pytest.mark.browser

HOSTILE_NAME = "<img src=x onerror=window.__xss=1>.txt"
SENTENCES = [
    "The capital of France is Paris.",
    "She walked to the station and bought a ticket to London.",
    "<script>window.__xss=2</script> The children played in the garden all afternoon.",
    "Water boils at 100 degrees at sea level.",
]


def test_batch_analysis_of_an_uploaded_file(page, app_url, default_loaded, artifacts, tmp_path):
    watch = Watch(page)
    page.goto(f"{app_url}/batch")
    page.get_by_role("heading", name="1 · Sentences").wait_for()
    settle(page)
    page.get_by_text("Upload a file", exact=True).click()
    settle(page)
    data = ("\n".join(SENTENCES) + "\n").encode()
    page.locator("input[type=file]").set_input_files({"name": HOSTILE_NAME, "mimeType": "text/plain", "buffer": data})
    page.get_by_text(f"{len(SENTENCES)} texts", exact=False).first.wait_for()
    caption = page.locator("strong", has_text=HOSTILE_NAME)  # the file name, in bold, as text
    caption.first.wait_for()
    assert caption.first.inner_text() == HOSTILE_NAME
    page.get_by_text(f"{len(SENTENCES)} sentences × 1 configuration(s) × 1 seed(s)", exact=False).first.wait_for()
    settle(page)
    assert_no_script_ran(page)

    page.get_by_text("Pseudo-log-likelihood per sentence", exact=False).first.click()  # off by default: it is slow
    page.get_by_text(re.compile(r"pseudo-log-likelihood (about|under)")).first.wait_for()  # its time, in the estimate
    settle(page)
    page.get_by_role("button", name="▶ Run the analysis").click()
    page.get_by_role("heading", name="4 · Results").wait_for()
    page.get_by_text(f"{len(SENTENCES)} sentences · 1 configuration(s) · seeds 0", exact=False).first.wait_for()
    page.locator(".js-plotly-plot").first.wait_for()  # the category chart
    page.get_by_text("Done in", exact=False).first.wait_for()
    settle(page)
    assert page.locator(EXCEPTION).count() == 0
    page.get_by_role("heading", name="4 · Results").evaluate("e => e.scrollIntoView({block: 'start'})")
    page.screenshot(path=str(artifacts / "batch-results.png"))

    with page.expect_download() as download:
        page.get_by_role("button", name="Summary JSON").click()
    summary = json.loads(download.value.path().read_text())
    assert summary["sentences"] == len(SENTENCES)
    # The same analysis in this process (mlm_core, the CLI's engine) gives the same numbers.
    params = {spec.name: spec.default for spec in STRATEGIES["random"].params}
    config = EvalConfig.from_strategy(build_strategy("random", params))
    report = evaluate(default_loaded, SENTENCES, [config], seeds=[0], with_pll=True, cache_dir=tmp_path)
    want = report.to_dict()["configurations"][0]
    got = summary["configurations"][0]
    assert got["label"] == want["label"]
    assert got["overall"]["n"] == want["overall"]["n"] > 0
    assert got["overall"]["top1"] == pytest.approx(want["overall"]["top1"])
    assert {k: v["n"] for k, v in got["by_category"].items()} == {k: v["n"] for k, v in want["by_category"].items()}
    assert got["pll"]["mean_per_token"] == pytest.approx(want["pll"]["mean_per_token"], rel=1e-4)
    assert_no_script_ran(page)
    watch.assert_quiet()
