"""Generation on ONNX Runtime through onnxruntime-genai, on the tiny random-weight Llama (head size 16: ONNX
Runtime's CPU GroupQueryAttention wants a multiple of 16): the model builder offline, the Generator's token clock,
greedy tokens and logits against torch fp32, the plan's rows, and one study through the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.engine.tiny_llama import save_tiny_llama

pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai (requirements.txt) is not installed")

NEW_TOKENS = 5


@pytest.fixture(scope="module")
def llama16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama16"), "tiny-llama-16", head_dim=16)


@pytest.fixture(scope="module")
def built(llama16: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The stored model and its fp32 and int4 builds, in one data folder for the module (the builder runs once
    per precision: about 2 s each here)."""
    from engine.artifacts import intake
    from engine.generation import ort_genai
    from engine.optimizations import parse_chain
    from tests.conftest import shared_data_dir

    with shared_data_dir(tmp_path_factory.mktemp("ogen-data")):
        model = intake(llama16)
        builds = {name: ort_genai.build(model, parse_chain(name), lambda phase, fraction: None)
                  for name in ("baseline", "int4-weight-only:group_size=32")}
        again = ort_genai.build(model, parse_chain("baseline"), lambda phase, fraction: None)
    return {"model": model, "builds": builds, "again": again}


def test_builder_runs_offline_and_caches(built: dict[str, Any]) -> None:
    fp32, int4 = built["builds"]["baseline"], built["builds"]["int4-weight-only:group_size=32"]
    for build in (fp32, int4):
        assert {"model.onnx", "genai_config.json", "variant.json"} <= {p.name for p in build.folder.iterdir()}
        assert not build.cached
    assert built["again"].cached and built["again"].folder == fp32.folder
    assert fp32.details["matmul_nbits"] == 0
    assert int4.details["bits"] == 4 and int4.details["block_size"] == 32 and int4.details["matmul_nbits"] > 0
    assert int4.size_bytes < fp32.size_bytes
    assert "int4" in int4.notes[0] and "accuracy_level 4" in int4.notes[0]


def test_genai_token_clock_and_greedy_tokens_match_torch(built: dict[str, Any]) -> None:
    import torch

    from engine.generation import ort_genai
    from engine.generation.cell import causal_lm
    from engine.measure.generation import summarize, timed_genai_generation
    from engine.modules import load_module

    model = built["model"]
    og_model = ort_genai.load(built["builds"]["baseline"].folder, threads=1)
    ids = np.random.default_rng(0).integers(1, 300, size=(2, 8))
    runs = [timed_genai_generation(og_model, ids, NEW_TOKENS) for _ in range(3)]
    timings = [timed for timed, _ in runs]
    assert all(len(t.token_ms) == NEW_TOKENS for t in timings)
    assert all(0 < t.ttft_ms < t.e2e_ms for t in timings)
    summary = summarize(timings, 2, 8)
    assert summary["decode_tokens_per_s"] == pytest.approx(2 * 1000 / summary["tpot_ms"]["p50"], rel=0.1)

    lm = causal_lm(load_module(model.path, "hf", model.spec))
    prompt = torch.from_numpy(ids)
    with torch.inference_mode():
        want = lm.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                           min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    # fp32 ONNX and fp32 torch differ by ~1e-7 in the logits: greedy decoding picks the same tokens
    assert (runs[0][1] == want.numpy()).all()


def test_genai_logits_perplexity_fp32_and_int4(built: dict[str, Any]) -> None:
    from engine.generation import fidelity, ort_genai
    from engine.generation.cell import causal_lm
    from engine.modules import load_module

    model = built["model"]
    windows = np.random.default_rng(1).integers(1, 300, size=(3, 64))
    lm = causal_lm(load_module(model.path, "hf", model.spec))
    ref_ppl, ref_argmax = fidelity.evaluate(lm, windows, "cpu")
    ppl32, argmax32 = ort_genai.evaluate(built["builds"]["baseline"].folder, windows, threads=1)
    ppl4, argmax4 = ort_genai.evaluate(built["builds"]["int4-weight-only:group_size=32"].folder, windows, threads=1)
    assert ppl32 == pytest.approx(ref_ppl, rel=1e-4)
    assert fidelity.agreement(argmax32, ref_argmax) == 1.0
    # int4 weights of a random model: a different model, but the same vocabulary's order of magnitude
    assert ppl4 != ppl32 and 0.5 * ref_ppl < ppl4 < 2 * ref_ppl
    assert 0.3 < fidelity.agreement(argmax4, ref_argmax) < 1.0


def test_plan_rows_for_onnxruntime(built: dict[str, Any], tmp_path: Path) -> None:
    from engine.artifacts import intake
    from engine.generation.plan import expand
    from engine.generation.settings import GenerationSettings
    from engine.optimizations import parse_chain

    chains = [parse_chain(c) for c in ("baseline", "int8-weight-only", "int4-weight-only", "int8-dynamic", "fp16")]
    cells, _ = expand(built["model"], chains, ["onnxruntime", "openvino"], [1],
                      GenerationSettings(prompt_lens=(8,), new_tokens=NEW_TOKENS))
    rows = {(c.variant, c.runtime): c for c in cells}
    for variant in ("baseline", "int8-weight-only", "int4-weight-only"):
        assert rows[(variant, "onnxruntime")].runnable, rows[(variant, "onnxruntime")].reason
    for variant in ("int8-dynamic", "fp16"):
        row = rows[(variant, "onnxruntime")]
        assert row.status == "n/a" and "model builder" in (row.reason or "") and variant in (row.reason or "")
    assert "optimum-intel" in (rows[("baseline", "openvino")].reason or "")

    narrow = intake(save_tiny_llama(tmp_path, "tiny-llama-8"))  # head size 8
    (cell,) = expand(narrow, [parse_chain("baseline")], ["onnxruntime"], [1],
                     GenerationSettings(prompt_lens=(8,), new_tokens=NEW_TOKENS))[0]
    assert cell.status == "n/a" and "multiple of 16" in (cell.reason or "") and "is 8" in (cell.reason or "")


@pytest.mark.slow
def test_generation_study_on_onnxruntime_through_the_cli(llama16: Path, tmp_path: Path) -> None:
    from engine.__main__ import main

    out_json = tmp_path / "gen.json"
    out = io.StringIO()
    code = main(["bench", str(llama16), "--scenario", "generate", "--prompt-lens", "8", "--new-tokens",
                 str(NEW_TOKENS), "--generations", "2", "--batch-sizes", "2", "--runtimes", "onnxruntime",
                 "--variants", "baseline,int4-weight-only:group_size=32", "--json", str(out_json)], out=out)
    assert code == 0, out.getvalue()
    rows = {(r["variant"], r["runtime"]): r for r in json.loads(out_json.read_text())["results"]}
    for variant in ("baseline", "int4-weight-only:group_size=32"):
        row = rows[(variant, "onnxruntime")]
        assert row["status"] == "ok", row["error"]
        assert row["settings"]["engine"] == "onnxruntime-genai"
        g = row["generation"]
        assert g["prompt_len"] == 8 and g["tokens_stamped"] == [NEW_TOKENS] * 2
        assert g["ttft_ms"]["p50"] < g["e2e_ms"]["p50"]
        assert g["decode_tokens_per_s"] == pytest.approx(2 * 1000 / g["tpot_ms"]["p50"], rel=0.1)
    ort32 = rows[("baseline", "onnxruntime")]["generation"]
    int4 = rows[("int4-weight-only:group_size=32", "onnxruntime")]["generation"]
    assert ort32["next_token_agreement"] == 1.0
    # the reference is torch fp32: ONNX Runtime's fp32 model gives the same perplexity
    assert ort32["perplexity"] == pytest.approx(ort32["reference_perplexity"], rel=1e-4)
    assert int4["perplexity"] != ort32["perplexity"] and int4["next_token_agreement"] < 1.0
    assert any("onnxruntime-genai" in note for note in rows[("baseline", "onnxruntime")]["notes"])
