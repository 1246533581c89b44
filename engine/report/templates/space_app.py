"""Read-only viewer of one Paretoscope study: the results table, filters, the Pareto view and the charts.

Written into a Hugging Face Space by Paretoscope. It reads data/results.json beside it and needs only
streamlit, plotly and pandas; viewer/ holds copies of Paretoscope's chart, Pareto, table and ship-panel code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import streamlit as st

from viewer import charts, tables  # `streamlit run app.py` puts this folder on the path
from viewer.pareto import pareto_frontier
from viewer.ship import markdown_text as md, ship_panel

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


@st.cache_data
def load() -> dict[str, Any]:
    return json.loads((DATA / "results.json").read_text(encoding="utf-8"))


report = load()
study = report["study"]
st.set_page_config(page_title=f"Paretoscope: {study['name']}"[:80], page_icon="📊", layout="wide")
shared = tables.shared_notes(report)  # shown once above the table, left out of each row
frame = tables.results_table(report, without=shared)
samples = tables.samples_by_cell(report)
baseline = tables.baseline_label(report)

st.title(md(study["name"]))
model = study["model"]
settings = study.get("settings") or {}
measure = settings.get("measure") or {}
st.caption(f"Model **{md(model['name'])}** ({md(model['format'])}) · threads {md(settings.get('threads'))} · "
           f"min {md(measure.get('iterations'))} iterations and {md(measure.get('min_seconds'))} s per cell · "
           "measured with Paretoscope; this page only reads the results")

with st.sidebar:
    st.header("Filters")
    runtimes = st.multiselect("Runtimes", sorted(frame["runtime"].unique()), default=sorted(frame["runtime"].unique()))
    variants = st.multiselect("Variants", list(dict.fromkeys(frame["variant"])), default=list(dict.fromkeys(
        frame["variant"])))
    batches = st.multiselect("Batch sizes", sorted(int(b) for b in frame["batch_size"].unique()),
                             default=sorted(int(b) for b in frame["batch_size"].unique()))
    statuses = st.multiselect("Status", sorted(frame["status"].unique()), default=sorted(frame["status"].unique()))
    st.header("Data")
    st.download_button("Results CSV", data=(DATA / "results.csv").read_bytes(), file_name="results.csv",
                       mime="text/csv", on_click="ignore")
    st.download_button("Results JSON (with raw samples)", data=(DATA / "results.json").read_bytes(),
                       file_name="results.json", mime="application/json", on_click="ignore")

shown = frame[frame["runtime"].isin(runtimes) & frame["variant"].isin(variants)
              & frame["batch_size"].isin(batches) & frame["status"].isin(statuses)]
if shared:
    st.markdown("**Notes for the whole study**\n\n" + "\n".join(f"- {md(note)}" for note in shared))
columns = tables.shown_columns(report)
# labels only: the styler formats the numbers and shows tables.MISSING where a value is missing
st.dataframe(tables.styled(shown, columns), hide_index=True,
             column_config={column: st.column_config.Column(label) for column, label, _ in columns})

ok = shown[(shown["status"] == "ok") & shown["p50_ms"].notna()]
if ok.empty:
    st.info("No measured cell matches the filters.")
    st.stop()

choice = ship_panel(shown, baseline)
accuracy, accuracy_label, best = choice.accuracy, choice.accuracy_label, choice.best

at_batch = shown[shown["batch_size"] == choice.constraints.batch_size]
# theme=None: the figures carry their own template, the same as in the HTML report and the dashboard
st.plotly_chart(charts.accuracy_vs_latency(at_batch, accuracy, accuracy_label, best, baseline), key="pareto",
                theme=None)
front = pareto_frontier(at_batch, "p50_ms", accuracy)
st.caption("Pareto frontier at this batch size: no other cell is both faster and more accurate.")
st.dataframe(front[["variant", "runtime", "batch_size", "p50_ms", "p99_ms", accuracy]], hide_index=True,
             column_config={"p50_ms": st.column_config.NumberColumn("p50 ms", format="%.3f"),
                            "p99_ms": st.column_config.NumberColumn("p99 ms", format="%.3f"),
                            accuracy: st.column_config.NumberColumn(accuracy_label, format="%.5f")})

st.plotly_chart(charts.latency_bars(shown, baseline), key="latency", theme=None)
if charts.has_speedup_intervals(shown):  # older studies have point speedups only: the latency hover has them
    st.plotly_chart(charts.speedup_bars(shown, baseline), key="speedup", theme=None)
st.plotly_chart(charts.latency_distribution(shown, samples), key="distribution", theme=None)
c1, c2 = st.columns(2)
c1.plotly_chart(charts.memory_and_size(shown), key="memory", theme=None)
c2.plotly_chart(charts.throughput_vs_batch(shown), key="throughput", theme=None)

with st.expander("Study settings"):
    st.json({k: study.get(k) for k in ("variants", "runtimes", "batch_sizes", "settings", "reference", "progress",
                                       "created_at", "finished_at")})
    st.json({"model": model})
environment = report.get("environment")
if environment:
    with st.expander("Environment"):
        st.json(environment)
