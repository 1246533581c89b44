"""The generation scenario on a tiny random-weight Llama with a byte-level BPE tokenizer trained in the fixture:
intake, the plan's rows with reasons, the token clock, and one study through the CLI (reference + two cells)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from engine.errors import UserError
from tests.engine.tiny_llama import save_tiny_llama, write_zip

NEW_TOKENS = 4


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (hidden 32, GQA 4/2 heads) saved with safetensors and its tokenizer, zipped."""
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def llama_artifact(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import os

    from engine.artifacts import intake

    saved = os.environ.get("PARETOSCOPE_DATA_DIR")
    os.environ["PARETOSCOPE_DATA_DIR"] = str(tmp_path_factory.mktemp("gen-data"))
    try:
        return intake(tiny_llama)
    finally:
        if saved is not None:
            os.environ["PARETOSCOPE_DATA_DIR"] = saved


def test_intake_recognises_a_generative_model(llama_artifact: Any) -> None:
    assert llama_artifact.format == "hf"
    assert llama_artifact.info["task"] == "text-generation"
    assert llama_artifact.info["tokenizer"] is True
    assert llama_artifact.info["architecture"] == "LlamaForCausalLM"


def test_intake_refuses_remote_code_and_pickles(tiny_llama: Path, tmp_path: Path) -> None:
    from engine.artifacts import intake

    with zipfile.ZipFile(tiny_llama) as archive:
        files = {Path(n).name: archive.read(n) for n in archive.namelist()}
    custom = tmp_path / "custom"
    custom.mkdir()
    config = json.loads(files["config.json"])
    config.update(model_type="my-llama", auto_map={"AutoModelForCausalLM": "modeling_my.MyLlama"})
    (custom / "config.json").write_text(json.dumps(config))
    (custom / "modeling_my.py").write_text("import os\n")
    (custom / "model.safetensors").write_bytes(files["model.safetensors"])
    with pytest.raises(UserError) as refused:
        intake(write_zip(custom, tmp_path / "custom.zip"))
    assert "never runs" in str(refused.value) and "\n" not in str(refused.value)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_bytes(files["config.json"])
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(UserError) as refused:
        intake(write_zip(pickled, tmp_path / "pickled.zip"))
    assert "pickled" in str(refused.value) and "\n" not in str(refused.value)


def test_plan_rows_say_why(llama_artifact: Any) -> None:
    from engine.generation.plan import expand
    from engine.generation.settings import GenerationSettings
    from engine.optimizations import parse_chain

    chains = [parse_chain(c) for c in ("baseline", "fp16", "int8-weight-only", "distill:layers=1")]
    cells, settings = expand(llama_artifact, chains, ["torch", "onnxruntime"], [1, 2],
                             GenerationSettings(prompt_lens=(8, 61), new_tokens=NEW_TOKENS))
    rows = {(c.variant, c.runtime): c for c in cells if not c.runnable}
    assert "CUDA" in (rows[("fp16", "torch")].reason or "")
    assert rows[("fp16", "torch")].status == "unavailable"
    assert "onnxruntime-genai" in (rows[("baseline", "onnxruntime")].reason or "")
    # a Llama's layer list is found (test_distill_decoder.py): distill's torch cells run where the prompt fits
    assert any(c.runnable and c.variant == "distill:layers=1" and c.runtime == "torch" for c in cells)
    assert "max_position_embeddings" in (rows[("distill:layers=1", "torch")].reason or "")
    runnable = [c for c in cells if c.runnable]
    assert {settings.prompt_len_of(c.index) for c in runnable} == {8}  # 61 + 4 > 64 positions: a row saying so
    too_long = [c for c in cells if c.variant == "baseline" and c.runtime == "torch" and not c.runnable]
    assert too_long and all("max_position_embeddings" in (c.reason or "") for c in too_long)


def test_weight_only_int8_generates_close_to_fp32_and_int4_says_it_needs_cuda(llama_artifact: Any) -> None:
    import torch

    from engine.generation.cell import causal_lm
    from engine.generation.plan import chain_reason
    from engine.modules import load_module
    from engine.optimizations import parse_chain
    from engine.optimizations.build import build_variant
    from engine.variants import BuildContext

    assert chain_reason(llama_artifact, parse_chain("int8-weight-only"), "torch") is None  # torchao: requirements
    status, reason = chain_reason(llama_artifact, parse_chain("int4-weight-only"), "torch") or ("", "")
    assert status == "unavailable" and "CUDA" in reason
    ctx = BuildContext(llama_artifact.spec)
    quantized = causal_lm(build_variant(llama_artifact, parse_chain("int8-weight-only"), "torch", ctx).module)
    assert any("int8-weight-only quantized" in note for note in ctx.notes)
    fp32 = causal_lm(load_module(llama_artifact.path, "hf", llama_artifact.spec))
    ids = torch.randint(1, 300, (2, 8))
    with torch.inference_mode():
        want, got = fp32(ids).logits, quantized(ids).logits
        tokens = quantized.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4,
                                    do_sample=False)
    assert float((got - want).norm() / want.norm()) < 0.05 and tokens.shape == (2, 12)


def test_token_clock_counts_new_tokens(llama_artifact: Any) -> None:
    import torch

    from engine.generation.cell import causal_lm
    from engine.measure.generation import summarize, timed_generation
    from engine.modules import load_module

    lm = causal_lm(load_module(llama_artifact.path, "hf", llama_artifact.spec))
    ids = torch.randint(1, 300, (2, 8))
    forwards: list[int] = []
    hook = lm.register_forward_hook(lambda module, args, out: forwards.append(1))
    timings = [timed_generation(lm, ids, torch.ones_like(ids), 6, 0, "cpu") for _ in range(3)]
    hook.remove()
    assert all(len(t.token_ms) == 6 for t in timings)
    # one forward pass per new token (the prompt's prefill makes the first): no pass the clock does not see
    assert len(forwards) == 3 * 6
    assert all(0 < t.ttft_ms < t.e2e_ms for t in timings)
    # stamps in order, all inside the generation: the last one is the last token's, before generate() returns
    assert all(list(t.token_ms) == sorted(t.token_ms) and t.token_ms[-1] <= t.e2e_ms for t in timings)
    summary = summarize(timings, 2, 8)
    assert len([g for t in timings for g in t.gaps_ms]) == 3 * 5
    assert summary["decode_tokens_per_s"] == pytest.approx(2 * 1000 / summary["tpot_ms"]["p50"], rel=0.1)


@pytest.mark.slow
def test_generation_study_through_the_cli(tiny_llama: Path, tmp_path: Path) -> None:
    from engine.__main__ import main

    out_json = tmp_path / "gen.json"
    out = io.StringIO()
    code = main(["bench", str(tiny_llama), "--scenario", "generate", "--prompt-lens", "8", "--new-tokens",
                 str(NEW_TOKENS), "--generations", "2", "--batch-sizes", "2", "--runtimes", "torch",
                 "--variants", "baseline,int8-dynamic,fp16,distill:layers=1,epochs=1,max_samples=8", "--json",
                 str(out_json)], out=out)
    assert code == 0, out.getvalue()
    rows = {r["variant"]: r for r in json.loads(out_json.read_text())["results"]}
    assert rows["fp16"]["status"] == "unavailable" and "CUDA" in rows["fp16"]["error"]
    for variant in ("baseline", "int8-dynamic"):
        row = rows[variant]
        assert row["status"] == "ok", row["error"]
        g = row["generation"]
        assert g["prompt_len"] == 8 and g["tokens_stamped"] == [NEW_TOKENS] * 2
        assert g["ttft_ms"]["p50"] < g["e2e_ms"]["p50"]
        assert g["decode_tokens_per_s"] == pytest.approx(2 * 1000 / g["tpot_ms"]["p50"], rel=0.1)
        assert g["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 8 * 4  # 2 (k, v) x layers x kv heads x head dim x fp32
        assert g["perplexity"] > 1 and g["reference_perplexity"] > 1
        assert 0 <= g["next_token_agreement"] <= 1
    assert rows["baseline"]["generation"]["next_token_agreement"] == 1.0
    # a decoder distilled to one of its two layers generates with a one-layer KV cache (test_distill_decoder.py)
    distilled = next(r for name, r in rows.items() if name.startswith("distill"))
    assert distilled["status"] == "ok", distilled["error"]
    assert distilled["generation"]["perplexity"] > 1 and distilled["generation"]["tokens_stamped"] == [NEW_TOKENS] * 2
    assert distilled["generation"]["kv_cache_bytes_per_token"] == 2 * 1 * 2 * 8 * 4
    # the stored fidelity is the agreement (no cosine for generated tokens), read back from the database
    assert rows["int8-dynamic"]["accuracy"]["fidelity"]["top1_agreement"] == (
        rows["int8-dynamic"]["generation"]["next_token_agreement"])
    assert rows["int8-dynamic"]["generation"]["reference_perplexity"] == rows["baseline"]["generation"]["perplexity"]
    assert "decode tok/s" in out.getvalue()
    # the HTML report draws the generation charts and lists every generating cell
    study_id = json.loads(out_json.read_text())["study"]["id"]
    report = tmp_path / "gen.html"
    assert main(["report", str(study_id), "--format", "html", "--out", str(report)], out=io.StringIO()) == 0
    html = report.read_text(encoding="utf-8")
    assert "<h2>Generation</h2>" in html and 'id="chart-gen-ttft"' in html and 'id="chart-gen-perplexity"' in html
    table = html[html.index('id="generation"'):html.index("</table>", html.index('id="generation"'))]
    assert table.count("<tr") == 1 + 3  # the header and the three cells that generated


def test_generation_charts_and_frontier() -> None:
    from engine.generation.charts import frontier, generation_figures, generation_frame

    def row(cell: int, variant: str, batch: int, decode: float, increase: float) -> dict[str, Any]:
        g = {"prompt_len": 32, "ttft_ms": {"p50": 5.0}, "tpot_ms": {"p50": batch * 1000 / decode},
             "decode_tokens_per_s": decode, "perplexity": 10 * (1 + increase), "perplexity_increase": increase,
             "next_token_agreement": 1 - increase}
        return {"cell": cell, "variant": variant, "runtime": "torch", "batch_size": batch, "status": "ok",
                "generation": g}

    results = [row(0, "baseline", 1, 100.0, 0.0), row(1, "int8-dynamic", 1, 150.0, 0.02),
               row(2, "slow-and-worse", 1, 90.0, 0.05),
               {"cell": 3, "variant": "fp16", "runtime": "torch", "batch_size": 1, "status": "unavailable"}]
    frame = generation_frame(results)
    assert list(frame["cell"]) == [0, 1, 2]
    assert list(frontier(frame)["cell"]) == [1, 0]
    assert [key for key, _ in generation_figures(results)] == ["gen-ttft", "gen-decode", "gen-perplexity"]


def test_evaluation_windows_never_repeat_the_text() -> None:
    import numpy as np

    from engine.generation import fidelity
    from engine.generation.prompts import TokenSource

    class Words:  # a tokenizer double: one id per word
        def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
            return {"input_ids": [i % 50 for i, _ in enumerate(text.split())]}

    short = TokenSource(Words(), 50, (0, 50), " ".join(["w"] * 300))
    windows = fidelity.eval_windows(short, None)
    assert windows.shape == (2, 128)  # 300 tokens hold two windows of 128, not eight repeating them
    assert np.array_equal(windows.ravel(), short.ids[:256])
    tiny = fidelity.eval_windows(TokenSource(Words(), 50, (0, 50), "a b c"), None)
    assert tiny.shape == (1, 3)


def test_without_a_tokenizer_there_is_no_perplexity(tiny_llama: Path, tmp_path: Path) -> None:
    import shutil

    from engine.artifacts import intake
    from engine.generation.cell import compute_reference
    from engine.generation.intake import TOKENIZER_FILES
    from engine.plan import StudySettings

    folder = tmp_path / "bare"
    shutil.copytree(tiny_llama.parent / "tiny-llama", folder)
    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    model = intake(write_zip(folder, tmp_path / "bare.zip"))
    record = compute_reference(tmp_path / "study", model, StudySettings(threads=1), lambda phase, fraction: None)
    assert record["perplexity"] is None  # random ids: their likelihood says nothing about the model
