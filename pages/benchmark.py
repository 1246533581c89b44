"""Benchmark: build a study (variants, runtimes, batch sizes, settings), preview its cells, submit, watch it run."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from engine import shared
from engine.artifacts import Artifact
from engine.errors import UserError
from engine.generation.settings import is_generative
from engine.optimizations import REGISTRY
from engine.plan import default_threads, runtimes_for
from engine.results import FAILED, FINAL, SKIPPED
from engine.runtimes import availability
from engine.specs import ATTENTION_MASK, TOKEN_IDS
from engine.study import StudyRequest, cell_fraction, eta_s
from pages import common
from storage import blobs, queue, views
from storage.db import session

PRESETS = ["baseline", "int8-dynamic", "int8-static", "int8-static:method=entropy", "fp16"]

common.start_page()
st.title("Benchmark")
# A study's choices can come from the URL (?variants=baseline,int8-dynamic&runtimes=onnxruntime&batch_sizes=1),
# so a setup can be shared as a link.
params = st.query_params


def from_url(name: str, default: list[str]) -> list[str]:
    raw = params.get(name)
    return [v for v in raw.split(",") if v] if raw else default


def number_from_url(name: str, default: float) -> float:
    try:
        return float(params.get(name, default))
    except ValueError:
        return default


# Every 2 s: often enough to follow a cell, cheap beside the cell being measured on the same cores.
@st.fragment(run_every=2.0)
def watch(study_id: int) -> None:
    """Live per-cell progress; once the study ends (or is deleted) the page reruns without this polling fragment."""
    with session(write=False) as s:
        jobs = views.live_jobs(s, study_id)
        study = queue.get_study(s, study_id)
        finished = study is not None and study.finished_at is not None
    if study is None:
        st.session_state.pop("watch_study", None)
        st.toast(f"Study #{study_id} was deleted.")
        st.rerun(scope="app")
    # n/a and unavailable cells are rows, not work: they count neither as done nor as left to do
    runnable = jobs[~jobs["status"].isin(SKIPPED)]
    done = int(runnable["status"].isin(FINAL).sum())
    failed = int(runnable["status"].isin(FAILED).sum())
    total = len(runnable)
    now = datetime.now(UTC)
    started = runnable["started_at"].dropna()
    elapsed = (now - started.min()).total_seconds() if len(started) else 0.0
    fractions = [cell_fraction(st_, p, f) for st_, p, f in
                 zip(runnable["status"], runnable["phase"], runnable["fraction"], strict=True)]
    # ETA from the first cell that was built and measured: the mean time a finished cell took, for the rest
    ran = runnable[runnable["finished_at"].notna() & runnable["started_at"].notna()]
    took = list((ran["finished_at"] - ran["started_at"]).dt.total_seconds()) if len(ran) else []
    left_s = eta_s(took, total - sum(fractions))
    eta = f"{left_s:.0f} s" if left_s else "after the first cell"
    text = (f"{done} of {total} cells done" + (f" ({failed} failed)" if failed else "")
            + f" · elapsed {elapsed:.0f} s · ETA {eta}")
    st.progress(sum(fractions) / total if total else 1.0, text=text)
    view = jobs.assign(
        progress=[cell_fraction(st_, p, f) for st_, p, f in
                  zip(jobs["status"], jobs["phase"], jobs["fraction"], strict=True)],
        elapsed_s=[f"{((f if pd.notna(f) else now) - s_).total_seconds():.1f}" if pd.notna(s_) else "–"
                   for s_, f in zip(jobs["started_at"], jobs["finished_at"], strict=True)],
        phase=jobs["phase"].fillna("–"), error_message=jobs["error_message"].fillna("–"),
    )
    st.dataframe(view[["cell", "variant", "runtime", "batch_size", "status", "phase", "progress", "elapsed_s",
                       "attempts", "error_message"]], hide_index=True,
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1),
                                "elapsed_s": st.column_config.TextColumn("elapsed s"),
                                "error_message": st.column_config.TextColumn("error / reason", width="large")})
    if finished:
        st.session_state.pop("watch_study", None)
        st.session_state["results_study"] = study_id  # the Results page opens on it
        st.session_state["finished_study"] = study_id  # said once here
        common.clear()
        st.rerun(scope="app")


# A submitted study replaces the form with its live view, and its end with the outcome: a short page, so what
# a person is waiting for is in view (after "Submit" the browser was scrolled to the bottom of a long form).
watching = st.session_state.get("watch_study")
if watching is not None:
    st.subheader(f"Study #{watching} is running")
    c1, c2, c3 = st.columns([1, 1, 3])
    with session(write=False) as s:
        watched = queue.get_study(s, int(watching))
        owner = watched.created_by if watched is not None else None
    if c1.button("Cancel study", type="secondary", disabled=not common.may_change(owner),
                 help=None if common.may_change(owner) else f"only {owner} or an admin may cancel it"):
        with session() as s:
            queue.cancel_study(s, int(watching))
        shared.audit("cancel-study", common.current_user(), study_id=int(watching))
        common.clear()
    if c2.button("Set up another study", key="leave_watch"):
        st.session_state.pop("watch_study", None)
        st.rerun()
    c3.page_link("pages/results.py", label="Results so far", icon=":material/insights:")
    watch(int(watching))
    st.stop()
if st.session_state.get("finished_study") is not None:
    ended = common.studies(common.url())
    ended = ended[ended["id"] == st.session_state.pop("finished_study")]  # said once
    if len(ended):
        common.show_state(ended.iloc[0])
    c1, c2 = st.columns([1, 4])
    c1.page_link("pages/results.py", label="See its results", icon=":material/insights:")
    c2.button("Set up another study", key="after_finish")  # a rerun: the form comes back
    st.stop()

models = common.models(common.url())
if models.empty:
    st.info("Upload a model on the Models page first (or run the demo from Home).")
    st.stop()

ids = list(models["id"])
wanted_model = int(params["model"]) if params.get("model", "").isdigit() else st.session_state.get("model_id")
default = ids.index(wanted_model) if wanted_model in ids else 0
model_id = st.selectbox("Model", ids, index=default,
                        format_func=lambda i: f"#{i} {models.set_index('id').loc[i, 'name']}")
artifact_json = common.model_artifact(common.url(), int(model_id))
if artifact_json is None:
    st.stop()
artifact = Artifact.from_json(artifact_json)
st.caption(f"{artifact.format} · inputs {artifact.spec.label()}")

left, right = st.columns(2)
with left:
    options = PRESETS + sorted(set(REGISTRY) - {"onnx-export"} - set(PRESETS))
    url_variants = from_url("variants", ["baseline", "int8-dynamic", "int8-static", "fp16"])
    options += [v for v in url_variants if v not in options]
    chosen = st.multiselect("Variants", options, default=url_variants)
    custom = st.text_input("Chain builder", placeholder="int8-static:method=percentile,per_channel=false",
                           help="Optimization ids joined with '+', parameters after ':' "
                                f"(known: {', '.join(sorted(REGISTRY))}); e.g. int8-static:max_drop=0.01 keeps "
                                "the layers int8 hurts most in float until the cosine to fp32 is at least 0.99")
with right:
    runtimes = availability()
    usable = [r["id"] for r in runtimes if r["available"]]
    # pills wrap onto new lines: every runtime's whole name stays visible however many are picked
    picked = st.pills("Runtimes", usable, selection_mode="multi",
                      default=[r for r in from_url("runtimes", runtimes_for(artifact.format, usable))
                               if r in usable]) or []
    for r in runtimes:
        if not r["available"]:
            st.caption(f"~~{r['id']}~~ unavailable: {r['reason']}")

# every bound is also checked where the study is stored: a crafted request cannot pass them either
bounds = shared.limits() or shared.Limits(timeout_s=86_400.0, iterations=1_000_000, min_seconds=3_600.0)


def bounded(value: float, high: float) -> float:
    return min(max(value, 0.0), high)


c1, c2, c3, c4, c5, c6 = st.columns(6)
batches_text = c1.text_input("Batch sizes", value=",".join(from_url("batch_sizes", ["1", "8"])))
threads = c2.number_input("Threads", min_value=1, max_value=bounds.threads,
                          value=min(default_threads(), bounds.threads))
iterations = c3.number_input("Min iterations", min_value=1, max_value=bounds.iterations,
                             value=int(bounded(max(1, int(number_from_url("iterations", 50))), bounds.iterations)))
min_seconds = c4.number_input("Min seconds", min_value=0.0, max_value=float(bounds.min_seconds),
                              value=bounded(number_from_url("min_seconds", 2.0), bounds.min_seconds), step=0.5)
timeout = c5.number_input("Time limit per cell (s)", min_value=10, max_value=int(bounds.timeout_s),
                          value=int(min(600, bounds.timeout_s)), step=30)
rounds = c6.number_input(
    "Rounds vs baseline", min_value=0, max_value=100, value=int(bounded(number_from_url("rounds", 10), 100)),
    help="Each cell and its baseline are timed alternately in this many rounds, so the speedup and its 95% "
         "interval cancel the machine's drift. 0: off (speedups from separate timings); else at least 6.")

datasets = common.datasets(common.url())
dataset_choice = st.selectbox("Data (.npz, from the Models page)", [None, *list(datasets["id"])],
                              format_func=lambda i: "none: synthesized inputs" if i is None
                              else str(datasets.set_index("id").loc[i, "name"]))
padding = 0.0
if any(t.role in (ATTENTION_MASK, TOKEN_IDS) for t in artifact.spec.inputs):
    padding = st.number_input(
        "Padding (fraction of each sequence)", min_value=0.0, max_value=0.95,
        value=min(max(number_from_url("padding", 0.0), 0.0), 0.95), step=0.05, format="%.2f",
        disabled=dataset_choice is not None,
        help="For padded batches: the last round(padding × sequence length) positions of each synthesized "
             "sequence get attention mask 0 and the pad id. 0: every token attended. A data file's inputs are "
             "used as they are.")
scenario, prompt_lens_text, new_tokens, generations = "latency", "32,256", 64, 10
if is_generative(artifact.info):  # a decoder-only model: the generation scenario and its fields
    g1, g2, g3, g4 = st.columns(4)
    scenario = g1.selectbox("Scenario", ["generate", "latency"],
                            help="generate: greedy generation timed token by token (TTFT, TPOT, tokens/s) with "
                                 "perplexity against fp32; latency: one forward call, like any model")
    prompt_lens_text = g2.text_input("Prompt lengths", value="32,256", disabled=scenario != "generate")
    new_tokens = int(g3.number_input("New tokens", min_value=2, max_value=4096, value=64,
                                     disabled=scenario != "generate"))
    generations = int(g4.number_input("Timed generations", min_value=1, max_value=1000, value=10,
                                      disabled=scenario != "generate"))
name = st.text_input("Study name", value=f"{models.set_index('id').loc[model_id, 'name']}")
with st.expander("Runtime settings"):
    options_text = st.text_area(
        "One RUNTIME.KEY=VALUE per line", key="runtime_options",
        placeholder="onnxruntime.graph_optimization_level=basic\ntorch-cuda.cuda_graph=true",
        help="Settings a runtime takes; each result records what it applied. Unknown keys are refused.")
    for r in runtimes:
        if r["id"] in picked and r["options"]:
            st.caption(f"**{r['id']}**: " + "; ".join(f"`{k}` {v}" for k, v in r["options"].items()))

data_path = None if dataset_choice is None else str(
    blobs.path_of(str(datasets.set_index("id").loc[dataset_choice, "sha256"])))
request = StudyRequest(
    artifact, variants=[*chosen, *([custom] if custom.strip() else [])], runtimes=picked, batch_sizes=batches_text,
    iterations=int(iterations), min_seconds=float(min_seconds), rounds=int(rounds), threads=int(threads),
    timeout_s=float(timeout), runtime_options=options_text.splitlines(),
    padding=float(padding), data_path=data_path, name=name or None,
    model_name=str(models.set_index("id").loc[model_id, "name"]), created_by=common.current_user(),
    scenario=scenario, prompt_lens=prompt_lens_text, new_tokens=new_tokens, generations=generations)
try:
    planned = request.validate(check_files=False)  # the data file is read (in a child) on submit
except UserError as exc:
    st.error(f"error: {exc}")
    st.stop()

cells = planned.cells
st.markdown(f"**{len(cells)} cells**: {planned.runnable} will run, {len(cells) - planned.runnable} cannot (listed "
            "with the reason).")
blocked = [c for c in cells if not c.runnable]
if blocked:
    st.dataframe(pd.DataFrame([{"variant": c.variant, "runtime": c.runtime, "batch": c.batch_size,
                                "status": c.status, "reason": c.reason} for c in blocked]), hide_index=True)

if st.button("Submit study", type="primary", disabled=planned.runnable == 0):
    try:
        study_id, _ = request.submit()
    except UserError as exc:  # the data file, or a shared server's cap on open studies
        st.error(f"error: {exc}")
        st.stop()
    common.clear()
    st.session_state["watch_study"] = study_id
    st.session_state.pop("finished_study", None)
    st.rerun()
