"""The results JSON as tables: one row per cell for CSV and charts, and the comparison of two studies.

Pure pandas and the standard library: the Space bundle copies this module, so it imports nothing else
from Paretoscope.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from engine.results import CellResult, Fidelity, LatencySummary

if TYPE_CHECKING:
    from pandas.io.formats.style import Styler

# The columns of the pages' results frame, in its order: the charts read these names.
FRAME_COLUMNS = ["cell", "variant", "runtime", "batch_size", "status", "error", "p50_ms", "p90_ms", "p99_ms",
                 "mean_ms", "throughput_per_s", "speedup", "speedup_low", "speedup_high", "speedup_method", "load_s",
                 "first_run_ms", "peak_host_mb", "peak_device_mb", "model_size_mb", "cosine", "pooled_cosine",
                 "max_abs", "top1_agreement", "task_metric", "notes", "noisy", "noise_pct", "noise_message",
                 "baseline_cell"]

# Shown wherever a table has no value: never "None" or "nan".
MISSING = "–"

# A speedup as every table and sentence writes it; speedup_text adds its interval.
SPEEDUP_FORMAT = "%.2f×"

# What the results table shows, as the Results page does: column, heading, printf format (None: text).
SHOWN = [
    ("variant", "variant", None), ("runtime", "runtime", None), ("batch_size", "batch", "%d"),
    ("status", "status", None), ("p50_ms", "p50 ms", "%.3f"), ("p99_ms", "p99 ms", "%.3f"),
    ("throughput_per_s", "items/s", "%.1f"), ("speedup", "speedup vs baseline", SPEEDUP_FORMAT),
    ("peak_host_mb", "peak host MB", "%.0f"), ("model_size_mb", "size MB", "%.2f"),
    ("cosine", "fidelity (cosine)", "%.5f"), ("pooled_cosine", "pooled cosine", "%.5f"),
    ("top1_agreement", "top-1 agreement", "%.3f"),
    ("task_metric", "task top-1", "%.4f"), ("error", "error", None), ("notes", "notes", None),
]

# Row keys placed by name above, or not a per-cell field of their own.
_PLACED = {"cell", "variant", "runtime", "batch_size", "status", "error", "latency_ms", "throughput_per_s",
           "speedup_vs_baseline", "speedup_ci95", "speedup_method", "speedup_rounds", "load_s", "first_run_ms",
           "peak_host_mb", "peak_device_mb", "model_size_mb", "accuracy", "notes", "settings", "samples_ms"}


def _cell(value: Any) -> Any:
    """A JSON value as one CSV field: scalars as they are, lists and objects as compact JSON."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def missing(value: Any) -> bool:
    """None, NaN or pandas' NA: a value a table shows as MISSING."""
    if value is None or isinstance(value, (str, list, dict, tuple)):
        return value is None
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # an array-like: present
        return False


def flat_row(r: dict[str, Any], without: Collection[str] = ()) -> dict[str, Any]:
    """One result of the results JSON as a flat row: the FRAME_COLUMNS, then every other field.

    Notes listed in `without` (e.g. shared_notes, shown once for the study) are left out of `notes`.
    """
    c = CellResult.from_json(r)
    lat = c.latency_ms or LatencySummary()
    fid = c.fidelity or Fidelity()
    ci = lat.p50_ci95 or (None, None)
    speedup_ci = c.speedup_ci95 or (None, None)  # none in studies measured before speedup intervals
    noise: dict[str, Any] = c.noise if isinstance(c.noise, dict) else {}
    row = {
        "cell": c.cell, "variant": c.variant, "runtime": c.runtime, "batch_size": c.batch_size,
        "status": str(c.status), "error": c.error, "p50_ms": lat.p50, "p90_ms": lat.p90, "p99_ms": lat.p99,
        "mean_ms": lat.mean, "throughput_per_s": c.throughput_per_s,
        "speedup": c.speedup_vs_baseline, "speedup_low": speedup_ci[0], "speedup_high": speedup_ci[1],
        "speedup_method": c.speedup_method, "load_s": c.load_s, "first_run_ms": c.first_run_ms,
        "peak_host_mb": c.peak_host_mb, "peak_device_mb": c.peak_device_mb, "model_size_mb": c.model_size_mb,
        "cosine": fid.cosine, "pooled_cosine": fid.pooled_cosine, "max_abs": fid.max_abs,
        "top1_agreement": fid.top1_agreement, "task_metric": c.task.value if c.task else None,
        "notes": "; ".join(n for n in c.notes if n not in without),
        # None, not False, when the cell was measured before noise was recorded: unknown is not steady
        "noisy": bool(noise["noisy"]) if noise.get("noisy") is not None else None,
        "noise_pct": noise.get("spread_pct"),
        "noise_message": noise.get("message"),  # the cell's own verdict: its causes and what to do
        "p95_ms": lat.p95, "std_ms": lat.std, "min_ms": lat.min, "max_ms": lat.max,
        "p50_ci95_low": ci[0], "p50_ci95_high": ci[1], "iterations": lat.iterations,
        "speedup_rounds": c.speedup_rounds,
        "mean_abs": fid.mean_abs, "task_name": c.task.name if c.task else None,
        "samples": len(c.samples_ms) if c.samples_ms is not None else None,
        "settings": _cell(c.settings),
    }
    for key, value in r.items():
        if key not in _PLACED and key not in row:
            row[key] = _cell(value)
    return row


def results_table(report: dict[str, Any], without: Collection[str] = ()) -> pd.DataFrame:
    """Every cell of a results JSON, one row each, with every measured field (the CSV report).

    `without`: notes to leave out of each row's `notes`, e.g. `shared_notes(report)` shown once above the table.
    """
    rows = [flat_row(r, without) for r in report["results"]]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=FRAME_COLUMNS)
    return frame


def note_counts(report: dict[str, Any]) -> dict[str, int]:
    """Each note of the study and on how many cells it appears, in first-seen order."""
    counts: dict[str, int] = {}
    for r in report["results"]:
        for note in dict.fromkeys(r.get("notes") or []):  # a note twice on one cell is still one cell
            counts[note] = counts.get(note, 0) + 1
    return counts


def shared_notes(report: dict[str, Any]) -> list[str]:
    """Notes that appear on two or more cells (e.g. an exporter fallback), in first-seen order: shown once."""
    return [note for note, n in note_counts(report).items() if n >= 2]


def baseline_label(report_or_frame: dict[str, Any] | pd.DataFrame) -> str:
    """What "speedup vs baseline" divides by, e.g. "baseline on torch": the rows named by each result's
    `baseline_cell` (set where the speedups are computed), with the float type its runtime recorded, if any."""
    if isinstance(report_or_frame, pd.DataFrame):
        rows: list[Mapping[str, Any]] = [row for _, row in report_or_frame.iterrows()]
    else:
        rows = list(report_or_frame["results"])
    by_cell = {int(row["cell"]): row for row in rows}
    picked: dict[Any, str] = {}
    for row in rows:
        cell = row.get("baseline_cell")
        if cell is None or missing(cell) or int(cell) not in by_cell:
            continue
        base = by_cell[int(cell)]
        precision = _precision(base.get("settings"))
        picked[base["batch_size"]] = base["runtime"] + (f" ({precision})" if precision else "")
    if not picked:
        return "baseline (none measured)"
    where: dict[str, list[str]] = {}
    for batch, runtime in sorted(picked.items()):
        where.setdefault(runtime, []).append(f"b{batch}")
    if len(where) == 1:
        return f"baseline on {next(iter(where))}"
    return "baseline on " + "; ".join(f"{runtime} at {', '.join(batches)}" for runtime, batches in where.items())


# A runtime's recorded float type, as the short names the rest of the tool uses.
_PRECISIONS = {"float32": "fp32", "f32": "fp32", "float16": "fp16", "f16": "fp16", "half": "fp16",
               "bfloat16": "bf16", "bf16": "bf16"}


def _precision(settings: Any) -> str | None:
    """The float type a baseline ran in where its runtime recorded one (torch's dtype, OpenVINO's inference
    precision: bf16 on CPUs with AMX), else None: the original model's own types, not a guess."""
    if isinstance(settings, str):  # a frame holds settings as JSON text
        try:
            settings = json.loads(settings)
        except ValueError:
            settings = None
    if isinstance(settings, dict):
        for key in ("dtype", "inference_precision"):
            value = settings.get(key)
            if isinstance(value, str) and value:
                return _PRECISIONS.get(value.lower(), value)
    return None


def shown_columns(report_or_frame: dict[str, Any] | pd.DataFrame | None = None) -> list[tuple[str, str, str | None]]:
    """SHOWN with the speedup heading naming its baseline (baseline_label) when a study is given, and without
    the pooled cosine when no cell has one (it applies to encoders: hidden states and an attention mask)."""
    if report_or_frame is None:
        return list(SHOWN)
    heading = f"speedup vs {baseline_label(report_or_frame)}"
    pooled = (bool("pooled_cosine" in report_or_frame and report_or_frame["pooled_cosine"].notna().any())
              if isinstance(report_or_frame, pd.DataFrame)
              else any(((r.get("accuracy") or {}).get("fidelity") or {}).get("pooled_cosine") is not None
                       for r in report_or_frame["results"]))
    return [(c, heading if c == "speedup" else label, fmt) for c, label, fmt in SHOWN
            if c != "pooled_cosine" or pooled]


def _formatter(fmt: str | None) -> Callable[[Any], str]:
    if fmt is None:
        return lambda v: MISSING if missing(v) or v == "" else str(v)
    return lambda v: MISSING if missing(v) else fmt % v


def shown_text(row: Mapping[str, Any], column: str, fmt: str | None) -> str:
    """One cell of a shown table as text: a ROW_TEXT column from its whole row (a speedup with its interval),
    any other by its printf format; MISSING for a missing value."""
    if column in ROW_TEXT:
        return ROW_TEXT[column](row)
    return _formatter(fmt)(row.get(column))


def styled(frame: pd.DataFrame, columns: list[tuple[str, str, str | None]] | None = None) -> Styler:
    """The frame's shown columns formatted as the HTML report does, MISSING for missing values, statuses with
    their noise flag, speedups with their interval: for st.dataframe (give it column labels only: a column_config
    format would override). The values stay numbers, so the table still sorts by them."""
    columns = SHOWN if columns is None else columns
    frame = frame.reset_index(drop=True)  # one label per row: the per-row formats below address rows by it
    names = [c for c, _, _ in columns if c in frame.columns]
    formats = {c: _formatter(fmt) for c, _, fmt in columns if c in frame.columns}
    styler = with_status(frame)[names].style.format(formats)
    for column in (c for c in names if c in ROW_TEXT):
        for index, row in frame.iterrows():
            text = ROW_TEXT[column](row)
            styler.format(lambda _, text=text: text, subset=pd.IndexSlice[[index], [column]])
    return styler


def with_status(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with each status as a table shows it (status_text): "ok ⚠ noisy ±12%" for noisy cells."""
    if frame.empty or "status" not in frame:
        return frame
    shown = frame.copy()
    shown["status"] = [status_text(row) for _, row in frame.iterrows()]
    return shown


def noise_spread(row: Mapping[str, Any]) -> str | None:
    """A noisy cell's spread as "±12%"; None when not noisy, or when its spread rounds to nothing (then the
    flag came from the samples' variation or a busy machine, and "±0%" would read as steady)."""
    noisy = row.get("noisy")
    pct: Any = row.get("noise_pct")
    if missing(noisy) or not bool(noisy) or missing(pct) or round(float(pct)) < 1:
        return None
    return f"±{float(pct):.0f}%"


def noise_label(row: Mapping[str, Any]) -> str | None:
    """ "noisy ±12%" (or "noisy") for a cell flagged noisy, else None (steady, or measured before noise was
    recorded)."""
    noisy = row.get("noisy")
    if missing(noisy) or not bool(noisy):
        return None
    spread = noise_spread(row)
    return "noisy" if spread is None else f"noisy {spread}"


def status_text(row: Mapping[str, Any]) -> str:
    """A cell's status as a table shows it: "ok ⚠ noisy ±12%" when its timings are noisy."""
    label = noise_label(row)
    status = MISSING if missing(row.get("status")) else str(row.get("status"))
    return status if label is None else f"{status} ⚠ {label}"


# --- speedups and their 95% intervals ------------------------------------------------------------------------

# How a speedup's interval was measured (the results JSON's speedup_method), for a hover or a caption.
SPEEDUP_METHODS = {
    "interleaved": "timed in interleaved rounds with its baseline",
    "separate": "from p50s measured at different times (a conservative interval)",
    "baseline": "the baseline itself",
}


def speedup_interval(row: Mapping[str, Any], suffix: str = "") -> tuple[float, float] | None:
    """A cell's 95% speedup interval (low, high); None without one (no speedup, or measured before intervals were).
    `suffix` reads a comparison's columns (speedup_low_a, ...)."""
    low: Any = row.get(f"speedup_low{suffix}")
    high: Any = row.get(f"speedup_high{suffix}")
    if missing(low) or missing(high):
        return None
    return float(low), float(high)


def interval_text(interval: tuple[float, float]) -> str:
    """ "0.95–1.20": an interval inside a sentence."""
    return f"{interval[0]:.2f}–{interval[1]:.2f}"


def speedup_text(row: Mapping[str, Any], suffix: str = "") -> str:
    """A cell's speedup as every table shows it: "1.80× [1.60, 2.00]" with its 95% interval, "1.80×" without one,
    MISSING without a speedup. `suffix` reads a comparison's columns (speedup_a, speedup_low_a, ...)."""
    value: Any = row.get(f"speedup{suffix}")
    if missing(value):
        return MISSING
    text = SPEEDUP_FORMAT % float(value)
    interval = speedup_interval(row, suffix)
    return text if interval is None else f"{text} [{interval[0]:.2f}, {interval[1]:.2f}]"


def speedup_phrase(row: Mapping[str, Any], baseline: str = "baseline") -> str | None:
    """The speedup in a sentence, "1.80× [1.60, 2.00] the baseline on torch" (`baseline`: baseline_label's text);
    None without a speedup."""
    text = speedup_text(row)
    return None if text == MISSING else f"{text} the {baseline}"


# Columns whose shown text needs more of the row than their own value.
ROW_TEXT: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "speedup": speedup_text,
    "speedup_a": lambda row: speedup_text(row, "_a"),
    "speedup_b": lambda row: speedup_text(row, "_b"),
}


def samples_by_cell(report: dict[str, Any]) -> dict[int, np.ndarray]:
    """Raw latency samples (ms) per cell index, from a results JSON written with samples."""
    return {int(r["cell"]): np.asarray(r["samples_ms"], dtype=np.float64)
            for r in report["results"] if r.get("samples_ms")}


def csv_text(report: dict[str, Any]) -> str:
    return results_table(report).to_csv(index=False)


# --- comparing two studies ----------------------------------------------------------------------------

COMPARE_KEYS = ["variant", "runtime", "batch_size"]
_COMPARED = ["p50_ms", "p99_ms", "throughput_per_s", "peak_host_mb", "cosine", "status", "speedup", "speedup_low",
             "speedup_high"]
COMPARE_SHOWN = [*COMPARE_KEYS, "status_a", "status_b", "p50_ms_a", "p50_ms_b", "p50_ratio", "p99_ratio",
                 "throughput_ratio", "speedup_a", "speedup_b", "cosine_a", "cosine_b"]
_COMPARE_FORMATS = {"batch_size": "%d", "p50_ms_a": "%.3f", "p50_ms_b": "%.3f", "p50_ratio": "%.3f",
                    "p99_ratio": "%.3f", "throughput_ratio": "%.3f", "speedup_a": SPEEDUP_FORMAT,
                    "speedup_b": SPEEDUP_FORMAT, "cosine_a": "%.5f", "cosine_b": "%.5f"}


def compare_columns() -> list[tuple[str, str, str | None]]:
    """COMPARE_SHOWN as (column, heading, printf format) for styled() and the HTML comparison: each study's speedup
    over its own baseline with its interval, as the results table shows it."""
    return [(c, c, _COMPARE_FORMATS.get(c)) for c in COMPARE_SHOWN]


def compare_frames(frame_a: pd.DataFrame, frame_b: pd.DataFrame) -> pd.DataFrame:
    """Cells of two studies side by side (outer join on variant, runtime, batch) with B/A ratios."""
    cols = COMPARE_KEYS + _COMPARED
    joined = frame_a[cols].merge(frame_b[cols], on=COMPARE_KEYS, suffixes=("_a", "_b"), how="outer")
    joined["p50_ratio"] = joined["p50_ms_b"] / joined["p50_ms_a"]
    joined["p99_ratio"] = joined["p99_ms_b"] / joined["p99_ms_a"]
    joined["throughput_ratio"] = joined["throughput_per_s_b"] / joined["throughput_per_s_a"]
    return joined


def flat_dict(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested objects as dotted keys (`libraries.torch`); lists stay whole."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flat_dict(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def environment_diff(env_a: Any, env_b: Any) -> list[dict[str, str]]:
    """Fields whose values differ between two environments, as rows of field, A, B."""
    a, b = flat_dict(env_a or {}), flat_dict(env_b or {})
    return [{"field": k, "A": _text(a.get(k)), "B": _text(b.get(k))}
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _text(value: Any) -> str:
    """A value as table text; a field one side lacks shows as MISSING, not "None"."""
    return MISSING if missing(value) else str(value)


# Fields that only mean something on the machine that ran the study (a local file path).
LOCAL_FIELDS = ("variant_path",)


def shareable(report: dict[str, Any], samples: bool = True) -> dict[str, Any]:
    """A results JSON for other people: local file paths left out, raw samples kept or dropped."""
    drop = set(LOCAL_FIELDS) | (set() if samples else {"samples_ms"})
    return {**report, "results": [{k: v for k, v in r.items() if k not in drop} for r in report["results"]]}
