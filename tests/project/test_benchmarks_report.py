"""The README's "Reliability and performance" section is rebuilt from benchmarks/results/*.json.

Only the text between the markers changes; benchmark results become table rows, suite figures
(any JSON with title and rows) become small tables, and a benchmark without results is listed
as not measured. No model, no benchmark run: sample JSON in a temporary folder.
"""

from __future__ import annotations

import json

import pytest

from benchmarks._report import END, START, MarkerError, replace_section, update_readme

MACHINE = {"cpu": "Test CPU 3000", "cores": 2, "memory_gib": 8.0, "os": "Debian GNU/Linux 12 (bookworm)",
           "gpu": None, "versions": {"python": "3.11.7", "torch": "2.13.0"}, "load_at_start": [4.25, 3.0, 2.0]}
BENCHMARK = {
    "name": "predict", "title": "one prediction with attentions", "ours": "41.0 ms",
    "baseline": '`pipeline("fill-mask")` 55.0 ms', "ratio": 0.76, "goal": "≤ 1.0", "better": "lower",
    "command": "python benchmarks/predict.py --rounds 2", "measured_at": "2026-01-02 03:04 UTC",
    "machine": MACHINE, "printed": ["ours: median 41.0 ms", "pipeline: median 55.0 ms"], "figures": {},
}
SUITE = {"title": "Chaos suite", "rows": [{"name": "kills survived", "value": "25 of 25"},
                                          {"name": "a | pipe", "value": 3}]}
BEFORE = "# App\n\nIntro text.\n\n## Reliability and performance\n\n"
AFTER = "\n\nProse after the section.\n\n## Next section\n\nMore text.\n"


@pytest.fixture
def project(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "predict.json").write_text(json.dumps(BENCHMARK))
    (results / "chaos.json").write_text(json.dumps(SUITE))
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEFORE}{START}\n| old | table |\n|---|---|\n| 1 | 2 |\n{END}{AFTER}")
    return readme, results


def section_of(text: str) -> str:
    return text.split(START)[1].split(END)[0]


def test_only_the_section_between_the_markers_changes(project):
    readme, results = project
    skipped = update_readme(readme, results, expected=["predict", "train"])
    text = readme.read_text()
    assert skipped == []
    assert text.startswith(BEFORE + START) and text.endswith(END + AFTER)
    section = section_of(text)
    assert "| old | table |" not in section
    # the benchmark row: command, figures, ratio with its goal and direction, when and under what load
    assert "`python benchmarks/predict.py --rounds 2`: one prediction with attentions | 41.0 ms |" in section
    assert "**0.76** (goal ≤ 1.0; lower is better)" in section
    assert "2026-01-02 03:04 UTC; load average 4.2 at start" in section
    assert "Machine: 2-core Test CPU 3000, 8 GiB RAM, Debian GNU/Linux 12 (bookworm), no GPU;" in section
    assert "ours: median 41.0 ms" in section  # what the script printed
    # a benchmark without results is listed as such, with the command that measures it
    assert "| `benchmarks/train.py` | not measured yet |" in section
    assert "`python -m benchmarks --only train`" in section
    # suite figures, rendered generically; a pipe in a value does not break the table
    assert "**Chaos suite**" in section and "| kills survived | 25 of 25 |" in section
    assert "| a \\| pipe | 3 |" in section


def test_rebuilding_twice_gives_the_same_readme(project):
    readme, results = project
    update_readme(readme, results)
    first = readme.read_text()
    update_readme(readme, results)
    assert readme.read_text() == first


def test_unusable_result_files_are_reported_not_rendered(project):
    readme, results = project
    (results / "broken.json").write_text("{not json")
    (results / "other.json").write_text(json.dumps({"something": 1}))
    skipped = update_readme(readme, results)
    assert sorted(line.split(":")[0] for line in skipped) == ["broken.json", "other.json"]
    assert "Chaos suite" in section_of(readme.read_text())


@pytest.mark.parametrize("text", ["no markers at all\n", f"{END}\nswapped\n{START}\n",
                                  f"{START}\n{START}\ntwice\n{END}\n"])
def test_a_readme_without_proper_markers_is_left_alone(tmp_path, text):
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(MarkerError):
        update_readme(readme, tmp_path)
    assert readme.read_text() == text


def test_replace_section_keeps_surrounding_bytes(tmp_path):
    assert replace_section(f"a\r\nb {START} old {END} c\n", "new") == f"a\r\nb {START}\nnew\n{END} c\n"
    readme = tmp_path / "README.md"
    readme.write_bytes(f"Windows\r\nlines\r\n{START}\r\nold\r\n{END}\r\nafter\r\n".encode())
    update_readme(readme, tmp_path / "no-results-yet")
    text = readme.read_bytes().decode()
    assert text.startswith(f"Windows\r\nlines\r\n{START}\n") and text.endswith(f"{END}\r\nafter\r\n")
    assert "No benchmark has saved results yet." in text
