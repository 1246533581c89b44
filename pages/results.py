"""Results of one study: the table, latency charts, the Pareto frontier with a recommendation, memory, throughput."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from engine.report import charts
from engine.report.pareto import Constraints, accuracy_column, recommend
from pages import common


def download_bar(where: st.delta_generator.DeltaGenerator, study_id: int, constraints: Constraints | None) -> None:
    """The four report formats; each is built from a fresh read only when its button is clicked."""
    from engine.report.html import study_html
    from engine.report.source import load_report
    from engine.report.space import space_zip
    from engine.report.tables import csv_text

    stem = f"paretoscope-study-{study_id}"
    c1, c2, c3, c4 = where.columns(4)
    c1.download_button("HTML report", data=lambda: study_html(load_report(study_id), constraints),
                       file_name=f"{stem}.html", mime="text/html", on_click="ignore", key="download_html",
                       help="One file with the table, every chart, the Pareto frontier and this recommendation; "
                            "opens offline")
    c2.download_button("CSV", data=lambda: csv_text(load_report(study_id)), file_name=f"{stem}.csv",
                       mime="text/csv", on_click="ignore", key="download_csv", help="One row per cell")
    c3.download_button("JSON", data=lambda: json.dumps(load_report(study_id), indent=1), file_name=f"{stem}.json",
                       mime="application/json", on_click="ignore", key="download_json",
                       help="The results JSON with the raw latency samples")
    c4.download_button("Hugging Face Space (.zip)", data=lambda: space_zip(load_report(study_id), f"{stem}-space"),
                       file_name=f"{stem}-space.zip", mime="application/zip", on_click="ignore",
                       key="download_space", help="A read-only viewer of these results, ready to push as a Space")


common.start_page()
st.title("Results")
studies = common.studies(common.url())
if studies.empty:
    st.info("No studies yet: run the demo from Home, or submit one on the Benchmark page.")
    st.stop()

ids = list(studies["id"])
wanted = st.session_state.get("results_study")
study_id = st.selectbox("Study", ids, index=ids.index(wanted) if wanted in ids else 0,
                        format_func=lambda i: common.study_label(studies, i))
st.session_state["results_study"] = study_id
frame, full = common.results(common.url(), int(study_id))
study = full["study"]
st.caption(f"Model **{study['model']['name']}** ({study['model']['format']}) · threads "
           f"{study['settings'].get('threads')} · min {study['settings']['measure']['iterations']} iterations and "
           f"{study['settings']['measure']['min_seconds']} s per cell · "
           + " · ".join(f"{n} {status}" for status, n in sorted(study["progress"].items())))
common.show_state(studies[studies["id"] == study_id].iloc[0])
downloads = st.container()  # filled once the recommendation's constraints are known

st.dataframe(
    frame[["variant", "runtime", "batch_size", "status", "p50_ms", "p99_ms", "throughput_per_s", "speedup",
           "peak_host_mb", "model_size_mb", "cosine", "top1_agreement", "task_metric", "error", "notes"]],
    hide_index=True,
    column_config={
        "batch_size": st.column_config.NumberColumn("batch"),
        "p50_ms": st.column_config.NumberColumn("p50 ms", format="%.3f"),
        "p99_ms": st.column_config.NumberColumn("p99 ms", format="%.3f"),
        "throughput_per_s": st.column_config.NumberColumn("items/s", format="%.1f"),
        "speedup": st.column_config.NumberColumn("speedup vs baseline", format="%.2fx"),
        "peak_host_mb": st.column_config.NumberColumn("peak host MB", format="%.0f"),
        "model_size_mb": st.column_config.NumberColumn("size MB", format="%.2f"),
        "cosine": st.column_config.NumberColumn("fidelity (cosine)", format="%.5f"),
        "top1_agreement": st.column_config.NumberColumn("top-1 agreement", format="%.3f"),
        "task_metric": st.column_config.NumberColumn("task top-1", format="%.4f"),
        "error": st.column_config.TextColumn("error", width="medium"),
        "notes": st.column_config.TextColumn("notes", width="medium"),
    },
)

with st.expander("Delete this study"):
    st.caption("Removes its results, raw samples, reference outputs and logs; models and data files stay.")
    if st.checkbox(f"Yes, delete study #{study_id}", key="confirm_delete") and st.button("Delete", type="primary"):
        from engine.study import delete_study

        delete_study(int(study_id))
        st.session_state.pop("results_study", None)
        common.clear()
        st.rerun()

ok = frame[frame["status"] == "ok"]
if ok.empty:
    download_bar(downloads, int(study_id), None)
    st.info("No cell has finished successfully yet.")
    st.stop()

accuracy, accuracy_label = accuracy_column(frame)
st.subheader("Which variant should I ship?")
c1, c2, c3 = st.columns(3)
unit = "top-1 as a fraction, 0.01 = 1 point" if accuracy == "task_metric" else "of cosine"
drop = c1.number_input(f"Maximum accuracy drop ({unit})", min_value=0.0, value=0.01, step=0.005, format="%.4f")
budget = c2.number_input("Maximum p99 (ms, 0 = none)", min_value=0.0, value=0.0, step=1.0)
batches = sorted(ok["batch_size"].unique())
batch = c3.selectbox("Batch size", batches)
constraints = Constraints(max_accuracy_drop=drop, max_p99_ms=budget or None, batch_size=int(batch))
best = recommend(frame, constraints, accuracy)
download_bar(downloads, int(study_id), constraints)
if best is None:
    st.warning("No cell meets these constraints; loosen them.")
else:
    st.success(f"Ship **{best['variant']}** on **{best['runtime']}** (batch {best['batch_size']}): p50 "
               f"{best['p50_ms']:.3f} ms, p99 {best['p99_ms']:.3f} ms, {accuracy_label} {best[accuracy]:.4f}"
               + (f", {best['speedup']:.2f}× the baseline" if best["speedup"] == best["speedup"] else ""))
    row = next(r for r in full["results"] if r["cell"] == best["cell"])
    path = row.get("variant_path")
    if path and Path(path).is_file():
        st.download_button("Download this variant's model file", data=lambda: Path(path).read_bytes(),
                           file_name=f"{best['variant'].replace(':', '_')}-{Path(path).name}", on_click="ignore")
    elif best["runtime"] in ("torch", "torch-compile"):
        st.caption("This eager variant is rebuilt in memory from the original model; download the original "
                   "from the Models page and apply the same chain.")

at_batch = frame[frame["batch_size"] == batch]
# theme=None: the figures carry their own template, the same as in the HTML report and the Space
st.plotly_chart(charts.accuracy_vs_latency(at_batch, accuracy, accuracy_label, best), key="pareto", theme=None)
st.plotly_chart(charts.latency_bars(frame), key="latency", theme=None)
st.plotly_chart(charts.latency_distribution(frame, common.samples(common.url(), int(study_id))), key="distribution",
                theme=None)
c1, c2 = st.columns(2)
c1.plotly_chart(charts.memory_and_size(frame), key="memory", theme=None)
c2.plotly_chart(charts.throughput_vs_batch(frame), key="throughput", theme=None)

env = full["environment"]
if isinstance(env, dict):
    with st.expander("Environment"):
        st.json(env)

