"""Results of one study: the table, latency charts, the Pareto frontier with a recommendation, memory, throughput."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from engine.report import charts, tables
from engine.report.pareto import Constraints
from engine.report.deploy_panel import deploy_panel
from engine.report.ship import ship_panel
from engine.report.why import why_panel
from pages import common
from engine.results import CellResult, Status


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
           + (f"padding {study['settings']['padding']:.0%} · " if study["settings"].get("padding") else "")
           + " · ".join(f"{n} {status}" for status, n in sorted(study["progress"].items())))
common.show_state(studies[studies["id"] == study_id].iloc[0])
owner = studies.set_index("id").loc[study_id, "created_by"]
allowed = common.may_change(owner)  # its creator or an admin reruns or deletes it on a shared server
downloads = st.container()  # filled once the recommendation's constraints are known

shared = tables.shared_notes(full)
if shared:
    counts = tables.note_counts(full)
    st.markdown("**Notes for the whole study**\n" + "\n".join(f"- {note} ({counts[note]} cells)" for note in shared))
# formatted as the HTML report is: a dash where a value does not apply, statuses with their noise flag
columns = tables.shown_columns(full)
st.dataframe(tables.styled(frame, columns), hide_index=True,
             column_config={column: st.column_config.Column(label) for column, label, _ in columns})

noisy = frame[frame["noisy"].fillna(False).astype(bool)] if "noisy" in frame else frame.iloc[:0]
if len(noisy):
    st.warning(f"{len(noisy)} cell(s) measured noisy (their own samples spread widely, or other processes were "
               "busy): rerun them on an idle machine, with the dashboard closed or on another machine.",
               icon=":material/warning:")
    if st.button(f"Rerun the {len(noisy)} noisy cell(s)", key="rerun_noisy", disabled=not allowed):
        from engine.study import rerun_noisy_cells

        queued = rerun_noisy_cells(int(study_id))
        common.clear()
        st.session_state["watch_study"] = int(study_id)
        st.toast(f"{queued} cell(s) queued again")
        st.switch_page("pages/benchmark.py")

with st.expander("Delete this study"):
    st.caption("Removes its results, raw samples, reference outputs and logs; models and data files stay.")
    if not allowed:
        st.caption(f"Only {owner or 'its creator'} or an admin may delete this study.")
    if (st.checkbox(f"Yes, delete study #{study_id}", key="confirm_delete", disabled=not allowed)
            and st.button("Delete", type="primary", disabled=not allowed)):
        from engine.errors import UserError
        from engine.study import delete_study

        try:
            delete_study(int(study_id), user=common.current_user())
        except UserError as exc:
            common.clear()
            st.warning(str(exc))
        else:
            st.session_state.pop("results_study", None)
            common.clear()
            st.rerun()

ok = frame[frame["status"] == Status.OK]
if ok.empty:
    download_bar(downloads, int(study_id), None)
    st.info("No cell has finished successfully yet.")
    st.stop()

if any(r.get("generation") for r in full["results"]):  # a generation study: its own charts first
    from engine.generation.charts import generation_figures

    for key, figure in generation_figures(full["results"]):
        st.plotly_chart(figure, key=key, theme=None)

baseline = tables.baseline_label(full)  # what the speedups divide by, e.g. "baseline on torch"
choice = ship_panel(frame, baseline)
download_bar(downloads, int(study_id), choice.constraints)
best = choice.best
if best is not None:
    row = next(r for r in full["results"] if r["cell"] == best["cell"])
    path = row.get("variant_path")
    if path and Path(path).is_file():
        st.download_button("Download this variant's model file", data=lambda: Path(path).read_bytes(),
                           file_name=f"{best['variant'].replace(':', '_')}-{Path(path).name}", on_click="ignore")
    elif best["runtime"] in ("torch", "torch-compile"):
        st.caption("This eager variant is rebuilt in memory from the original model; download the original "
                   "from the Models page and apply the same chain.")
    deploy_panel(int(study_id), int(best["cell"]))  # the recommended cell as a FastAPI, Triton or HF bundle

at_batch = frame[frame["batch_size"] == choice.constraints.batch_size]
# theme=None: the figures carry their own template, the same as in the HTML report and the Space
st.plotly_chart(charts.accuracy_vs_latency(at_batch, choice.accuracy, choice.accuracy_label, best, baseline),
                key="pareto", theme=None)
st.plotly_chart(charts.latency_bars(frame, baseline), key="latency", theme=None)
if charts.has_speedup_intervals(frame):  # older studies have point speedups only: the latency hover has them
    st.plotly_chart(charts.speedup_bars(frame, baseline), key="speedup", theme=None)
st.plotly_chart(charts.latency_distribution(frame, common.samples(common.url(), int(study_id))), key="distribution",
                theme=None)
st.plotly_chart(charts.memory_and_size(frame), key="memory", theme=None)  # full width: one bar per cell
st.plotly_chart(charts.throughput_vs_batch(frame), key="throughput", theme=None)

env = full["environment"]
st.subheader("Why? One cell explained")
measured = [CellResult.from_json(r) for r in full["results"] if r["status"] == Status.OK]
explained = st.selectbox("Cell", [r.cell for r in measured],
                         index=next((i for i, r in enumerate(measured) if best is not None and r.cell == best["cell"]),
                                    0),
                         format_func=lambda c: next(f"#{r.cell} {r.variant} · {r.runtime} · batch {r.batch_size}"
                                                    for r in measured if r.cell == c))
explained_row = next(r for r in measured if r.cell == explained)
why_panel(explained_row, env)
worst = [e["layer"] for e in (explained_row.diagnostics or {}).get("layer_errors") or []]
chain_steps = explained_row.variant.split("+")
if worst and any(step.split(":")[0] in ("int8-static", "int8-dynamic") for step in chain_steps):
    with st.form("float_rebuild"):
        keep = st.multiselect("Keep these layers in float", worst, default=worst[:3],
                              help="The same variant rebuilt with these layers left in float by its int8 step "
                                   "(its exclude=), measured as a new cell of this study on the same runtime")
        rebuild = st.form_submit_button("Rebuild with these layers in float", disabled=not allowed)
    if rebuild:
        from engine.errors import UserError
        from engine.study import rebuild_with_float_layers

        try:
            new_cell, name = rebuild_with_float_layers(int(study_id), explained_row.cell, keep,
                                                       user=common.current_user())
        except UserError as exc:
            st.warning(str(exc))
        else:
            common.clear()
            st.session_state["watch_study"] = int(study_id)
            st.toast(f"cell {new_cell} queued: {name}")
            st.switch_page("pages/benchmark.py")

if isinstance(env, dict):
    with st.expander("Environment"):
        st.json(env)

