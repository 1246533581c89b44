"""Compare two studies (two machines, before/after): per-cell ratios and environment differences."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.report import charts
from pages import common

common.ensure_worker()
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
keys = ["variant", "runtime", "batch_size"]
cols = ["p50_ms", "p99_ms", "throughput_per_s", "peak_host_mb", "cosine", "status"]
joined = frame_a[keys + cols].merge(frame_b[keys + cols], on=keys, suffixes=("_a", "_b"), how="outer")
joined["p50_ratio"] = joined["p50_ms_b"] / joined["p50_ms_a"]
joined["p99_ratio"] = joined["p99_ms_b"] / joined["p99_ms_a"]
joined["throughput_ratio"] = joined["throughput_per_s_b"] / joined["throughput_per_s_a"]
shown = [*keys, "status_a", "status_b", "p50_ms_a", "p50_ms_b", "p50_ratio", "p99_ratio", "throughput_ratio",
         "cosine_a", "cosine_b"]
st.dataframe(joined[shown], hide_index=True,
             column_config={c: st.column_config.NumberColumn(c, format="%.3f")
                            for c in ("p50_ms_a", "p50_ms_b", "p50_ratio", "p99_ratio", "throughput_ratio")})
both = joined.dropna(subset=["p50_ratio"])
if both.empty:
    st.info("The two studies have no measured cell in common.")
else:
    st.plotly_chart(charts.compare_ratios(both, f"#{a}", f"#{b}"), key="ratios")


def flat(env: object, prefix: str = "") -> dict[str, object]:
    if isinstance(env, dict):
        out: dict[str, object] = {}
        for k, v in env.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): env}


env_a, env_b = flat(full_a["environment"] or {}), flat(full_b["environment"] or {})
diff = [{"field": k, "A": str(env_a.get(k)), "B": str(env_b.get(k))}
        for k in sorted(set(env_a) | set(env_b)) if env_a.get(k) != env_b.get(k)]
st.subheader("Environment differences")
if diff:
    st.dataframe(pd.DataFrame(diff), hide_index=True)
else:
    st.caption("Same machine and software.")
