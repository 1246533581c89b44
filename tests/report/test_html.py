"""The HTML reports: numbers as in the database, the recommendation and frontier, escaping, the comparison."""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path

import pytest

from engine.__main__ import main
from engine.report import tables
from engine.report.html import compare_html, study_html
from engine.report.pareto import Constraints, accuracy_column, pareto_frontier, recommend
from engine.report import source
from storage.db import session
from tests.conftest import results_frame
from tests.report.conftest import HOSTILE_FILE, HOSTILE_STUDY, Seeded
from tests.report.htmltables import parse

# Everything a report may contain; an escaped string can never add an element of its own.
TAGS = {"html", "head", "meta", "title", "style", "script", "body", "h1", "h2", "h3", "p", "table", "thead", "tbody",
        "tr", "th", "td", "div", "details", "summary", "pre", "span", "ul", "li"}


def report_file(tmp_path: Path, *args: str) -> str:
    out = tmp_path / "report.html"
    stdout = io.StringIO()
    assert main(["report", *args, "--format", "html", "--out", str(out)], out=stdout) == 0
    assert "written to" in stdout.getvalue()
    return out.read_text(encoding="utf-8")


def frame_of(study_id: int):  # type: ignore[no-untyped-def]
    return results_frame(study_id)


def test_html_numbers_match_the_database(seeded: Seeded, data_dir: Path, tmp_path: Path) -> None:
    page = parse(report_file(tmp_path, str(seeded.study_a)))
    frame = frame_of(seeded.study_a)
    rows = {r.cell: r.by_column() for r in page.tables["results"] if r.cell is not None}
    assert set(rows) == set(frame["cell"]) and len(rows) == 4
    for _, db in frame.iterrows():
        got = rows[db["cell"]]
        assert (got["variant"].text, got["runtime"].text) == (db["variant"], db["runtime"])
        # a cell flagged noisy (the seeded studies run on a busy test machine) says so beside its status
        assert got["status"].text == tables.status_text(db) and got["status"].text.startswith("ok")
        assert got["batch_size"].text == str(db["batch_size"])
        for column, fmt in (("p50_ms", "%.3f"), ("p99_ms", "%.3f"), ("throughput_per_s", "%.1f"),
                            ("speedup", "%.2f×"), ("peak_host_mb", "%.0f"), ("model_size_mb", "%.2f"),
                            ("cosine", "%.5f"), ("top1_agreement", "%.3f")):
            assert float(got[column].value) == db[column], column  # the full value, exactly
            assert got[column].text.startswith(fmt % db[column]), column  # and what the reader sees
        # the speedup with its 95% interval where the study measured one, as every table shows it
        assert got["speedup"].text == tables.speedup_text(db)
        assert got["task_metric"].value == ""  # no labels: no task metric, shown as missing, not invented

    accuracy, _ = accuracy_column(frame)
    best = recommend(frame, Constraints(max_accuracy_drop=0.01, batch_size=1), accuracy)
    assert best is not None
    highlighted = [r.cell for r in page.tables["results"] if "recommended" in r.classes]
    assert highlighted == [best["cell"]]
    used = {r.texts()[0]: r.texts()[1] for r in page.tables["constraints"]}
    assert used["maximum accuracy drop (of cosine)"] == "0.01"
    assert used["maximum p99 (ms)"] == "none" and used["batch size"] == "1"
    for batch in (1, 2):
        front = pareto_frontier(frame[frame["batch_size"] == batch], "p50_ms", accuracy)
        assert [r.cell for r in page.tables[f"pareto-b{batch}"] if r.cell is not None] == list(front["cell"])

    facts = {r.texts()[0]: r.texts()[1] for r in page.tables["settings"]}
    assert facts["study"] == f"#{seeded.study_a} {HOSTILE_STUDY}"
    assert facts["model"] == HOSTILE_FILE and facts["settings measure.iterations"] == "5"
    with session(write=False) as s:
        env = source.results_json(s, seeded.study_a)["environment"]
    environment = {r.texts()[0]: r.texts()[1] for r in page.tables["environment-0"]}
    assert environment["hostname"] == env["hostname"] and environment["cores_logical"] == str(env["cores_logical"])


def test_recommendation_follows_the_cli_constraints(seeded: Seeded, data_dir: Path, tmp_path: Path) -> None:
    text = report_file(tmp_path, str(seeded.study_a), "--batch-size", "2", "--max-drop", "0.5")
    page = parse(text)
    frame = frame_of(seeded.study_a)
    best = recommend(frame, Constraints(max_accuracy_drop=0.5, batch_size=2), accuracy_column(frame)[0])
    assert best is not None and best["batch_size"] == 2
    assert [r.cell for r in page.tables["results"] if "recommended" in r.classes] == [best["cell"]]
    assert f"p50 {best['p50_ms']:.3f} ms" in text

    text = report_file(tmp_path, str(seeded.study_a), "--max-p99", "0.000001")
    assert "No cell meets these constraints" in text
    assert not [r for r in parse(text).tables["results"] if "recommended" in r.classes]


def test_user_strings_are_escaped_and_nothing_is_fetched(seeded: Seeded, report_a: dict) -> None:
    text = study_html(report_a)
    assert HOSTILE_STUDY not in text and "<b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "mlp &lt;b&gt;&amp;&quot;&#x27;.onnx" in text
    page = parse(text)
    assert page.scripts and all(s.get("src") is None for s in page.scripts)
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.IGNORECASE)
    assert not re.search(r"<(link|iframe|img|object|embed)\b", text, re.IGNORECASE)
    assert "Content-Security-Policy" in text


def test_hostile_errors_notes_names_and_environment_stay_text(report_a: dict) -> None:
    bad = copy.deepcopy(report_a)
    failed = bad["results"][1]
    failed.update(status="failed", error="RuntimeError: <img src=x onerror=alert(2)>", latency_ms=None,
                  notes=["</pre><script>alert(3)</script>"])
    bad["results"][0]["variant"] = "</script><script>alert(4)</script>"  # an ok cell: its label is in the charts
    bad["results"][0]["notes"] = ["a & b < c"]
    bad["environment"] = {"hostname": "</td><script>alert(5)</script>", "<key>": {"x'y": '"quoted"'}}
    bad["study"]["settings"]["runtime_options"] = {"onnxruntime": {"<option>": "<value>"}}
    text = study_html(bad)
    for n in range(2, 6):
        assert f"<script>alert({n})" not in text
    assert "<img" not in text
    page = parse(text)
    assert page.tags <= TAGS, page.tags - TAGS
    assert all(s.get("src") is None for s in page.scripts)
    rows = {r.cell: r.by_column() for r in page.tables["results"] if r.cell is not None}
    assert rows[failed["cell"]]["error"].text == "RuntimeError: <img src=x onerror=alert(2)>"
    assert rows[0]["notes"].text == "a & b < c"


def test_comparison_report_shows_ratios_and_environment(seeded: Seeded, data_dir: Path, tmp_path: Path) -> None:
    text = report_file(tmp_path, str(seeded.study_a), "--compare", str(seeded.study_b))
    assert HOSTILE_STUDY not in text
    page = parse(text)
    a, b = frame_of(seeded.study_a), frame_of(seeded.study_b)
    rows = [r.by_column() for r in page.tables["ratios"][1:]]
    assert len(rows) == 4  # every cell of either study, measured in both or not
    both = [r for r in rows if r["p50_ratio"].value]
    assert len(both) == 1 and both[0]["variant"].text == "baseline" and both[0]["batch_size"].text == "1"
    ratio = b[b["batch_size"] == 1]["p50_ms"].iloc[0] / a[(a["variant"] == "baseline") & (a["batch_size"] == 1)][
        "p50_ms"].iloc[0]
    assert float(both[0]["p50_ratio"].value) == pytest.approx(ratio, rel=1e-12)
    assert 'id="chart-ratios"' in text
    assert "Environment differences" in text
    with session(write=False) as s:
        envs = [source.results_json(s, study).get("environment") for study in (seeded.study_a, seeded.study_b)]
    diff = tables.environment_diff(*envs)
    if diff:  # whichever the seeded studies have, the report says exactly that
        assert "environment-diff" in page.tables and len(page.tables["environment-diff"]) == len(diff) + 1
    else:
        assert "Same machine and software." in text and "environment-diff" not in page.tables


def test_comparison_of_studies_with_nothing_in_common(report_a: dict) -> None:
    other = copy.deepcopy(report_a)
    for r in other["results"]:
        r["runtime"] = "openvino"
    other["environment"] = {**report_a["environment"], "hostname": "<other host>"}
    text = compare_html(report_a, other)
    assert 'id="chart-ratios"' not in text and "no measured cell in common" in text
    page = parse(text)
    diff = {r.texts()[0]: r.texts()[1:] for r in page.tables["environment-diff"][1:]}
    assert diff["hostname"] == [report_a["environment"]["hostname"], "<other host>"]


@pytest.mark.parametrize(("args", "message"), [
    (["999"], "no study with id 999"),
    (["A", "--format", "csv", "--compare", "2"], "--compare makes an HTML comparison"),
    (["A", "--format", "json", "--batch-size", "1"], "only for a study's HTML report"),
    (["A", "--format", "html", "--batch-size", "64"], "--batch-size 64 has no measured cell"),
    (["A", "--format", "html", "--max-drop", "-1"], "--max-drop must be 0 or more"),
    (["A", "--format", "csv", "--push", "me/space"], "--push uploads a Space"),
])
def test_bad_report_requests_are_one_line_errors(seeded: Seeded, data_dir: Path, args: list[str], message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(seeded.study_a) if a == "A" else a for a in args]
    assert main(["report", *args], out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_a_study_without_measured_cells_still_reports(report_a: dict) -> None:
    bad = copy.deepcopy(report_a)
    for r in bad["results"]:
        r.update(status="crashed", error="the child process died (signal 9)", latency_ms=None, samples_ms=None)
    bad["environment"] = None
    text = study_html(bad)
    assert "nothing to chart" in text and 'class="chart"' not in text and "recommendation" not in text
    assert len([r for r in parse(text).tables["results"] if r.cell is not None]) == 4
    empty = {**bad, "results": []}
    assert "No environment was recorded" in study_html(empty)


def test_html_report_explains_every_cell(seeded: Seeded, data_dir: Path, tmp_path: Path) -> None:
    from engine.report.why import explain_lines
    from engine.results import CellResult

    html = report_file(tmp_path, str(seeded.study_a))
    assert "<h2>Why? Each cell explained</h2>" in html
    with session(write=False) as s:
        report = source.results_json(s, seeded.study_a)
    frame = frame_of(seeded.study_a)
    best = recommend(frame, Constraints(max_accuracy_drop=0.01, batch_size=1), accuracy_column(frame)[0])
    assert best is not None
    for row in report["results"]:
        lines = explain_lines(CellResult.from_json(row), report["environment"])
        opened = " open" if row["cell"] == best["cell"] else ""
        found = re.search(rf'<details id="why-{row["cell"]}"{opened}><summary>(.*?)</summary><pre>(.*?)</pre>', html,
                          re.S)
        assert found is not None, row["cell"]
        assert found.group(1) == lines[0].replace("<", "&lt;").replace(">", "&gt;")  # the CLI's words, escaped
        assert "time by op type:" in found.group(2)
