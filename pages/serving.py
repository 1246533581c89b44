"""Serving results of a study's cell: p50 and p99 latency against throughput per load level, one line per
`serve-bench` run (with and without dynamic batching side by side), and the levels' table."""

from __future__ import annotations

import streamlit as st

from engine.report import serving, tables
from pages import common

common.start_page()
st.title("Serving")
studies = common.studies(common.url())
if studies.empty:
    st.info("No studies yet: run the demo from Home, or submit one on the Benchmark page.")
    st.stop()

ids = list(studies["id"])
wanted = st.session_state.get("results_study")  # the study the Results page showed last
study_id = st.selectbox("Study", ids, index=ids.index(wanted) if wanted in ids else 0,
                        format_func=lambda i: common.study_label(studies, i))
_, full = common.results(common.url(), int(study_id))
served = serving.served_cells(full)
if not served:
    st.info(f"Study #{study_id} has no serving results: measure a cell's server under load with "
            f"`python -m engine serve-bench {study_id}` (add `--max-batch 8` for a run with dynamic batching).")
    st.stop()

cell = st.selectbox("Cell", served, format_func=lambda c: serving.cell_label(full, c))
levels = serving.serving_frame(full)
levels = levels[levels["cell"] == cell]
st.caption("Each point is a load level (c=N: N requests kept in flight; N/s open: Poisson arrivals, latency from each "
           "request's intended start). Solid: p50, dashed: p99. Compare batching by running serve-bench twice, "
           "with and without `--max-batch`.")
st.plotly_chart(serving.latency_vs_throughput(levels, f"Serving {serving.cell_label(full, int(cell))}"),
                key="serving", theme=None)
unstable = levels[levels["stable"] == "no"]
if len(unstable):
    st.warning(f"{len(unstable)} level(s) not stable: their last 3 windows' throughput or p99 differ by more than "
               "10%; run them longer (--duration) on a quieter machine.", icon=":material/warning:")
columns = serving.table_columns(levels)
if columns is serving.GENERATION_COLUMNS:
    st.caption("A generation cell's server: each request streams the cell's new tokens after a prompt of its length. "
               "TTFT: send to the first token; TPOT: the time per output token after it; goodput: requests/s that met "
               "the run's --ttft-ms and --tpot-ms targets (none given: not computed).")
st.dataframe(tables.styled(levels, columns), hide_index=True,
             column_config={column: st.column_config.Column(label) for column, label, _ in columns})
