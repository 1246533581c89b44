"""A study, or two compared, as one self-contained HTML file: Plotly's JavaScript inlined, every string escaped.

The charts are the Results page's (engine/report/charts.py) drawn from the same columns; the file makes no
network request when opened (a Content-Security-Policy forbids any, and no script has a `src`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html import escape
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from engine.report import charts, tables
from engine.report.pareto import (
    DEFAULT_MAX_DROP,
    Constraints,
    accuracy_column,
    accuracy_drop_unit,
    pareto_frontier,
    recommend,
    recommendation_notes,
)
from engine.report.why import explain_lines
from engine.results import CellResult, Status

# Inline scripts and styles only: nothing is fetched, even if some string slipped through unescaped.
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
        "font-src data:")

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #1f2430; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .3rem; }
.meta { color: #555; }
table { border-collapse: collapse; font-size: .85rem; margin: .6rem 0; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f4f5f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.recommended td { background: #fff3d6; }
.ship { background: #e9f7ef; border: 1px solid #9fd8b4; padding: .8rem 1rem; border-radius: 6px; }
.none { background: #fdf1e3; border: 1px solid #f0c08a; padding: .8rem 1rem; border-radius: 6px; }
.warn { color: #9a4a00; font-weight: 600; }
.chart { margin: 1rem 0; }
pre { background: #f7f7f9; padding: .8rem; overflow-x: auto; font-size: .78rem; }
"""


def e(value: Any) -> str:
    """Any value as HTML text, escaped (quotes too: the same helper fills attributes)."""
    return escape("" if value is None else str(value), quote=True)


def _number_cell(column: str, value: Any, shown: str) -> str:
    if tables.missing(value):
        return f'<td class="num" data-col="{e(column)}" data-value="">{tables.MISSING}</td>'
    raw = repr(float(value)) if isinstance(value, float) else str(value)
    return f'<td class="num" data-col="{e(column)}" data-value="{e(raw)}">{e(shown)}</td>'


def _table(frame: pd.DataFrame, columns: list[tuple[str, str, str | None]], *, table_id: str,
           highlight: Any = None) -> str:
    """Rows of a frame as a table; numbers carry their full value in data-value beside the shown text."""
    head = "".join(f"<th>{e(label)}</th>" for _, label, _ in columns)
    body = []
    for _, row in frame.iterrows():
        tds = []
        for column, _, fmt in columns:
            value = row.get(column)
            if fmt is None:
                shown = tables.MISSING if tables.missing(value) or value == "" else e(value)
                tds.append(f'<td data-col="{e(column)}">{shown}</td>')
            else:  # the text as every table shows it (a speedup with its interval), the full number beside it
                tds.append(_number_cell(column, value, tables.shown_text(row, column, fmt)))
        attrs = ""
        if "cell" in row.index and not tables.missing(row["cell"]):
            attrs = f' data-cell="{int(row["cell"])}"'
            if highlight is not None and int(row["cell"]) == highlight:
                attrs += ' class="recommended"'
        body.append(f"<tr{attrs}>{''.join(tds)}</tr>")
    return f'<table id="{e(table_id)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _pairs(items: dict[str, Any], table_id: str) -> str:
    """A key/value table; lists and objects shown as compact JSON."""
    rows = []
    for key, value in items.items():
        shown = json.dumps(value, default=str) if isinstance(value, (list, dict)) else value
        text = tables.MISSING if tables.missing(shown) or shown == "" else e(shown)
        rows.append(f"<tr><th>{e(key)}</th><td>{text}</td></tr>")
    return f'<table id="{e(table_id)}"><tbody>{"".join(rows)}</tbody></table>'


def _figure(fig: go.Figure, div_id: str) -> str:
    import plotly.io as pio

    # Plotly writes the figure JSON with <, > and / escaped, so trace text cannot close the script.
    div = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id,
                      config={"displaylogo": False, "responsive": True})
    return f'<div class="chart">{div}</div>'


def _document(title: str, body: str) -> str:
    from plotly.offline import get_plotlyjs

    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{e(title)}</title>\n<style>{_STYLE}</style>\n"
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
        f"<script>{get_plotlyjs()}</script>\n</head>\n<body>\n{body}\n"
        f'<p class="meta">Generated by Paretoscope on {e(generated)}.</p>\n</body>\n</html>\n'
    )


# --- one study ----------------------------------------------------------------------------------------


def default_constraints(frame: pd.DataFrame, max_drop: float | None = DEFAULT_MAX_DROP,
                        max_p99_ms: float | None = None, batch_size: int | None = None) -> Constraints:
    """The Results page's defaults: 0.01 accuracy drop, no p99 budget, the smallest measured batch size."""
    if batch_size is None:
        ok = frame[frame["status"] == Status.OK] if len(frame) else frame
        batch_size = int(min(ok["batch_size"])) if len(ok) else None
    return Constraints(max_accuracy_drop=max_drop, max_p99_ms=max_p99_ms or None, batch_size=batch_size)


def _spec_text(spec: dict[str, Any] | None) -> dict[str, str]:
    out = {}
    for kind in ("inputs", "outputs"):
        for io in (spec or {}).get(kind) or []:
            shape = ",".join(str(d) for d in io.get("shape") or [])
            out[f"{kind[:-1]} {io.get('name')}"] = f"{io.get('dtype')}[{shape}]"
    return out


def _study_facts(study: dict[str, Any]) -> dict[str, Any]:
    model = study.get("model") or {}
    facts: dict[str, Any] = {
        "study": f"#{study.get('id')} {study.get('name')}", "created": study.get("created_at"),
        "finished": study.get("finished_at"), "cancelled": study.get("cancelled"),
        "variants": study.get("variants"), "runtimes": study.get("runtimes"),
        "batch sizes": study.get("batch_sizes"), "cells": study.get("progress"),
        "model": model.get("name"), "model format": model.get("format"), "model sha256": model.get("sha256"),
        "model size (bytes)": model.get("size_bytes"),
    }
    facts.update(_spec_text(model.get("spec")))
    facts.update({f"model {k}": v for k, v in tables.flat_dict(model.get("info") or {}).items() if k})
    facts.update({f"settings {k}": v for k, v in tables.flat_dict(study.get("settings") or {}).items() if k})
    facts.update({f"reference {k}": v for k, v in tables.flat_dict(study.get("reference") or {}).items() if k})
    return facts


def _environments(env: Any, prefix: str) -> str:
    envs = env if isinstance(env, list) else ([env] if env else [])
    if not envs:
        return "<p>No environment was recorded (no cell ran).</p>"
    parts = []
    for i, one in enumerate(envs):
        if len(envs) > 1:
            parts.append(f"<h3>Environment {i + 1}</h3>")
        parts.append(_pairs(tables.flat_dict(one), f"{prefix}-{i}"))
    return "".join(parts)


def recommendation_text(best: pd.Series | None, accuracy: str, accuracy_label: str,
                        baseline: str = "baseline") -> str:
    """The Results page's sentence for the recommended cell (plain text, to be escaped by the caller).

    `baseline`: what the speedup divides by, tables.baseline_label's "baseline on torch".
    """
    if best is None:
        return "No cell meets these constraints; loosen them."
    text = (f"Ship {best['variant']} on {best['runtime']} (batch {best['batch_size']}): p50 {best['p50_ms']:.3f} ms, "
            f"p99 {best['p99_ms']:.3f} ms, {accuracy_label} {best[accuracy]:.4f}")
    speedup = tables.speedup_phrase(best, baseline)
    return text if speedup is None else f"{text}, {speedup}"


def _shared_notes(report: dict[str, Any], notes: list[str]) -> str:
    """Notes carried by several cells, once each, with how many cells carry them."""
    if not notes:
        return ""
    counts, cells = tables.note_counts(report), len(report["results"])
    items = "".join(f'<li>{e(note)} <span class="meta">({counts[note]} of {cells} cells)</span></li>'
                    for note in notes)
    return f'<h3>Notes for the whole study</h3><ul id="shared-notes">{items}</ul>'


def _why_section(report: dict[str, Any], shipped: int | None) -> list[str]:
    """"Why?" for every measured cell: what `python -m engine explain` prints, the recommended cell open."""
    rows = [CellResult.from_json(r) for r in report.get("results") or [] if r.get("status") == Status.OK]
    explained = [row for row in rows if row.diagnostics]
    if not explained:
        return []
    parts = ["<h2>Why? Each cell explained</h2>",
             "<p>Where the time goes (the runtime's profiler, after the timing), what quantization covered, which "
             "layers lost accuracy against fp32, and what this machine's hardware lets each number format do.</p>"]
    for row in explained:
        lines = explain_lines(row, report.get("environment"))
        opened = " open" if row.cell == shipped else ""
        parts.append(f'<details id="why-{e(row.cell)}"{opened}><summary>{e(lines[0])}</summary>'
                     f"<pre>{e(chr(10).join(line[2:] for line in lines[1:]))}</pre></details>")
    return parts


def _generation_section(report: dict[str, Any]) -> list[str]:
    """"Generation": the Results page's three generation charts, each generating cell's numbers and the cells on
    the frontier of decode tokens/s against perplexity increase (a generation study only)."""
    from engine.generation.charts import frontier, generation_figures, generation_frame

    frame = generation_frame(report.get("results") or [])
    if frame.empty:
        return []
    columns = [("variant", "variant", None), ("runtime", "runtime", None), ("batch_size", "batch", "%d"),
               ("prompt_len", "prompt tokens", "%d"), ("ttft_ms", "TTFT p50 ms", "%.2f"),
               ("tpot_ms", "TPOT p50 ms", "%.3f"), ("decode_tokens_per_s", "decode tok/s", "%.1f"),
               ("perplexity", "perplexity", "%.2f"), ("perplexity_increase_pct", "perplexity increase %", "%.2f"),
               ("agreement", "next-token agreement", "%.3f")]
    parts = ["<h2>Generation</h2>",
             "<p>Greedy decoding of a fixed number of new tokens (EOS ignored): time to the first token (prompt and "
             "first token), time per output token after it, and fidelity to fp32 on the bundled evaluation text.</p>",
             *(_figure(figure, f"chart-{key}") for key, figure in generation_figures(report.get("results") or [])),
             _table(frame, columns, table_id="generation"),
             "<h3>Frontier: decode tokens/s against perplexity increase</h3>",
             _table(frontier(frame), columns, table_id="generation-frontier")]
    return parts


def _serving_section(report: dict[str, Any]) -> list[str]:
    """"Serving": each served cell's latency against throughput, one line per `serve-bench` run, and the levels."""
    from engine.report import serving

    frame = serving.serving_frame(report)
    if frame.empty:
        return []
    parts = ["<h2>Serving</h2>",
             "<p>Each cell's FastAPI server under load (<code>python -m engine serve-bench</code>): p50 and p99 "
             "latency against throughput, one line per run with its dynamic batching, one point per load level. "
             "A level is stable when its last 3 windows' throughput and p99 agree within 10%. A generation cell's "
             "streaming server adds time to first token (TTFT), time per output token (TPOT), inter-token latency "
             "(ITL), output tokens/s and goodput (requests/s meeting the run's TTFT and TPOT targets).</p>"]
    for cell in serving.served_cells(report):
        levels = frame[frame["cell"] == cell]
        label = serving.cell_label(report, cell)
        parts += [f"<h3>{e(label)}</h3>",
                  _figure(serving.latency_vs_throughput(levels, f"Serving {label}"), f"chart-serving-{cell}"),
                  _table(levels.drop(columns=["cell"]), serving.table_columns(levels), table_id=f"serving-{cell}")]
    return parts


def study_html(report: dict[str, Any], constraints: Constraints | None = None) -> str:
    """The Results page of one study as a standalone HTML document."""
    study = report["study"]
    shared = tables.shared_notes(report)
    frame = tables.results_table(report, without=shared)
    samples = tables.samples_by_cell(report)
    baseline = tables.baseline_label(report)
    constraints = constraints or default_constraints(frame)
    title = f"Paretoscope report: {study['name']}"
    parts = [f"<h1>{e(title)}</h1>",
             f'<p class="meta">Study #{e(study["id"])} · model {e(study["model"]["name"])} '
             f'({e(study["model"]["format"])}) · '
             + " · ".join(f"{e(n)} {e(status)}" for status, n in sorted((study.get("progress") or {}).items()))
             + "</p>"]

    ok = frame[(frame["status"] == Status.OK) & frame["p50_ms"].notna()] if len(frame) else frame
    accuracy, accuracy_label = accuracy_column(frame)
    best = None
    if len(ok):
        best = recommend(frame, constraints, accuracy)
        used = {"accuracy measure": accuracy_label,
                f"maximum accuracy drop ({accuracy_drop_unit(accuracy)})": constraints.max_accuracy_drop,
                "maximum p99 (ms)": constraints.max_p99_ms if constraints.max_p99_ms else "none",
                "batch size": constraints.batch_size if constraints.batch_size is not None else "any"}
        css = "ship" if best is not None else "none"
        notes = recommendation_notes(best)
        caveat = f' <span class="warn" id="recommendation-note">⚠ {e("; ".join(notes))}</span>' if notes else ""
        sentence = e(recommendation_text(best, accuracy, accuracy_label, baseline))
        parts += ["<h2>Which variant should I ship?</h2>",
                  f'<p class="{css}" id="recommendation">{sentence}{caveat}</p>',
                  "<p>Constraints used:</p>", _pairs(used, "constraints")]
    parts += ["<h2>Results</h2>", _shared_notes(report, shared),
              _table(tables.with_status(frame), tables.shown_columns(report), table_id="results",
                     highlight=int(best["cell"]) if best is not None else None)]
    parts += _generation_section(report)
    if not len(ok):
        parts.append("<p>No cell has finished successfully, so there is nothing to chart.</p>")
    else:
        at_batch = frame if constraints.batch_size is None else frame[frame["batch_size"] == constraints.batch_size]
        parts += ["<h2>Charts</h2>",
                  _figure(charts.accuracy_vs_latency(at_batch, accuracy, accuracy_label, best, baseline),
                          "chart-pareto"),
                  _figure(charts.latency_bars(frame, baseline), "chart-latency")]
        if charts.has_speedup_intervals(frame):  # older studies have point speedups only: the latency hover has them
            parts.append(_figure(charts.speedup_bars(frame, baseline), "chart-speedup"))
        parts += [_figure(charts.latency_distribution(frame, samples), "chart-distribution"),
                  _figure(charts.memory_and_size(frame), "chart-memory"),
                  _figure(charts.throughput_vs_batch(frame), "chart-throughput"),
                  "<h2>Pareto frontier</h2>",
                  f"<p>Cells that no other cell at the same batch size beats on both p50 latency and "
                  f"{e(accuracy_label)}, fastest first.</p>"]
        front_columns = [("variant", "variant", None), ("runtime", "runtime", None), ("batch_size", "batch", "%d"),
                         ("p50_ms", "p50 ms", "%.3f"), ("p99_ms", "p99 ms", "%.3f"),
                         (accuracy, accuracy_label, "%.5f")]
        for batch in sorted(ok["batch_size"].unique()):
            front = pareto_frontier(frame[frame["batch_size"] == batch], "p50_ms", accuracy)
            parts += [f"<h3>Batch size {e(int(batch))}</h3>",
                      _table(front, front_columns, table_id=f"pareto-b{int(batch)}",
                             highlight=int(best["cell"]) if best is not None else None)]
    parts += _why_section(report, int(best["cell"]) if best is not None else None)
    parts += _serving_section(report)
    parts += ["<h2>Study settings</h2>", _pairs(_study_facts(study), "settings"),
              "<h2>Environment</h2>", _environments(report.get("environment"), "environment")]
    compact = tables.shareable(report, samples=False)
    parts += ["<h2>Every measured field</h2>",
              "<details><summary>The results JSON (raw latency samples left out; the JSON report has them)"
              "</summary>", f"<pre>{e(json.dumps(compact, indent=1, default=str))}</pre></details>"]
    return _document(title, "\n".join(parts))


# --- two studies ---------------------------------------------------------------------------------------

def compare_html(report_a: dict[str, Any], report_b: dict[str, Any]) -> str:
    """The Compare page for studies A and B: per-cell ratios B/A, their chart, environment differences."""
    a, b = report_a["study"], report_b["study"]
    label_a, label_b = f"#{a['id']}", f"#{b['id']}"
    joined = tables.compare_frames(tables.results_table(report_a), tables.results_table(report_b))
    title = f"Paretoscope comparison: {label_a} {a['name']} vs {label_b} {b['name']}"
    summary = pd.DataFrame([
        {"which": "A", "study": f"{label_a} {a['name']}", "model": a["model"]["name"], "created": a["created_at"],
         "cells": len(report_a["results"])},
        {"which": "B", "study": f"{label_b} {b['name']}", "model": b["model"]["name"], "created": b["created_at"],
         "cells": len(report_b["results"])},
    ])
    parts = [f"<h1>{e(title)}</h1>",
             _table(summary, [(c, c, "%d" if c == "cells" else None) for c in summary.columns], table_id="studies"),
             "<h2>Per-cell ratios (B / A)</h2>",
             "<p>Below 1, B is faster (p50, p99); above 1, B has more throughput.</p>",
             _table(joined, tables.compare_columns(), table_id="ratios")]
    both = joined.dropna(subset=["p50_ratio"])
    if both.empty:
        parts.append("<p>The two studies have no measured cell in common.</p>")
    else:
        parts.append(_figure(charts.compare_ratios(both, label_a, label_b), "chart-ratios"))
    diff = tables.environment_diff(report_a.get("environment"), report_b.get("environment"))
    parts.append("<h2>Environment differences</h2>")
    if diff:
        parts.append(_table(pd.DataFrame(diff), [("field", "field", None), ("A", "A", None), ("B", "B", None)],
                            table_id="environment-diff"))
    else:
        parts.append("<p>Same machine and software.</p>")
    return _document(title, "\n".join(parts))
