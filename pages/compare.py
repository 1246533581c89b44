"""Compare two studies (two machines, before/after): per-cell ratios and environment differences."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.report import charts, tables
from engine.report.machines import per_machine
from pages import common


def comparison_html(study_a: int, study_b: int) -> str:
    """Built only when its download button is clicked."""
    from engine.report.html import compare_html
    from engine.report.source import load_report

    return compare_html(load_report(study_a), load_report(study_b))


common.start_page()
st.title("Compare")
studies = common.studies(common.url())
if len(studies) < 2:
    st.info("Comparing needs two studies, e.g. the same model on two machines, or before and after a change.")
    st.stop()

ids = list(studies["id"])
c1, c2 = st.columns(2)
a = c1.selectbox("Study A", ids, index=1, format_func=lambda i: common.study_label(studies, i))
b = c2.selectbox("Study B", ids, index=0, format_func=lambda i: common.study_label(studies, i))
frame_a, full_a = common.results(common.url(), int(a))
frame_b, full_b = common.results(common.url(), int(b))
st.download_button("Comparison report (HTML)", data=lambda: comparison_html(int(a), int(b)),
                   file_name=f"paretoscope-compare-{a}-{b}.html", mime="text/html", on_click="ignore",
                   help="This page as one file that opens offline")
joined = tables.compare_frames(frame_a, frame_b)
# formatted as the HTML comparison is: each study's speedup over its own baseline with its 95% interval
columns = tables.compare_columns()
st.dataframe(tables.styled(joined, columns), hide_index=True,
             column_config={column: st.column_config.Column(label) for column, label, _ in columns})
both = joined.dropna(subset=["p50_ratio"])
if both.empty:
    st.info("The two studies have no measured cell in common.")
else:
    st.plotly_chart(charts.compare_ratios(both, f"#{a}", f"#{b}"), key="ratios", theme=None)

diff = tables.environment_diff(full_a["environment"], full_b["environment"])
st.subheader("Environment differences")
if diff:
    st.dataframe(pd.DataFrame(diff), hide_index=True)
else:
    st.caption("Same machine and software.")

# one study measured across machines (a Ray cluster): each variant on each machine
for study_id, full in ((a, full_a), (b, full_b)):
    machines = per_machine(full)
    if machines is not None:
        st.subheader(f"Study #{study_id} on each machine")
        st.dataframe(machines, hide_index=True)
