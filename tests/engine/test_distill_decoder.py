"""distill:layers=K on decoder-only models (a tiny random-weight Llama with GQA and a tokenizer, a tiny GPT-2 without
one): K layers renumbered for the KV cache, cached generation equal to uncached, training on the prompt text, the
build cache's replay. The generation study through the CLI has a distilled cell (test_generation.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from engine.optimizations import parse_chain
from engine.optimizations.build import build_variant
from engine.variants import BuildContext
from tests.engine.tiny_llama import save_tiny_llama, write_zip

CHAIN = "distill:layers=2,epochs=4,max_samples=16,batch_size=8,lr=0.003,temperature=1"


@pytest.fixture(scope="module")
def llama_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama3"), layers=3, initializer_range=0.2)


@pytest.fixture(scope="module")
def gpt2_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer GPT-2 (hidden 32, 4 heads), random weights, no tokenizer files."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("gpt2")
    config = GPT2Config(vocab_size=128, n_positions=128, bos_token_id=0, eos_token_id=0, n_embd=32, n_layer=3,
                        n_head=4, initializer_range=0.2,
                        architectures=["GPT2LMHeadModel"])
    torch.manual_seed(0)
    GPT2LMHeadModel(config).eval().save_pretrained(root / "tiny-gpt2", safe_serialization=True)
    return write_zip(root / "tiny-gpt2", root / "tiny-gpt2.zip")


def _intake(archive: Path) -> Any:
    from engine.artifacts import intake

    return intake(archive)


def _loss(notes: list[str]) -> tuple[float, float]:
    found = next(re.search(r"loss against the teacher (\S+) -> (\S+?);?$", n) for n in notes if "loss against" in n)
    assert found is not None
    return float(found.group(1)), float(found.group(2))


def _check_decoder(model: Any, layers_path: str, attention: str, count_attr: str, source: str) -> None:
    import torch

    from engine.generation.cell import causal_lm
    from engine.optimizations import surgery

    variant = build_variant(model, parse_chain(CHAIN), "torch", BuildContext(model.spec))
    assert not variant.cached
    student = variant.module
    layers = surgery.get(student, layers_path)
    assert len(layers) == 2
    assert [getattr(layer, attention).layer_idx for layer in layers] == [0, 1]
    lm = causal_lm(student)
    assert getattr(lm.config, count_attr) == 2
    assert any("kept decoder layers 0, 2 of 3" in n for n in variant.notes), variant.notes
    assert any(source in n for n in variant.notes), variant.notes
    before, after = _loss(variant.notes)
    assert after < before
    # renumbering is right when the KV cache (kept by layer_idx, sized from the config) changes nothing
    ids = torch.arange(1, 9).reshape(1, 8)
    with torch.no_grad():
        cached = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             use_cache=True, pad_token_id=0)
        uncached = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                               use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)
    # the build cache's replay (edits on a fresh original + the saved weights) rebuilds the same model
    again = build_variant(model, parse_chain(CHAIN), "torch", BuildContext(model.spec))
    assert again.cached
    args = [ids if n == "input_ids" else torch.ones_like(ids) if n == "attention_mask" else torch.zeros_like(ids)
            for n in model.spec.names]
    with torch.no_grad():
        assert torch.equal(student(*args), again.module(*args))
    assert [getattr(layer, attention).layer_idx for layer in surgery.get(again.module, layers_path)] == [0, 1]


def test_a_llama_keeps_k_renumbered_layers_trained_on_the_prompt_text(llama_zip: Path) -> None:
    model = _intake(llama_zip)
    _check_decoder(model, "model.model.layers", "self_attn", "num_hidden_layers",
                   "windows of the bundled prompt text through the model's tokenizer")


def test_a_gpt2_without_a_tokenizer_trains_on_synthesized_ids_and_says_so(gpt2_zip: Path) -> None:
    model = _intake(gpt2_zip)
    # GPT-2's forward takes token_type_ids but adds them through its word embeddings: not an input of the spec
    assert model.spec.names == ["input_ids", "attention_mask"]
    _check_decoder(model, "model.transformer.h", "attn", "n_layer", "synthesized ids (the folder has no tokenizer")


def test_a_decoder_whose_layers_are_not_found_gets_a_one_line_reason(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from engine.optimizations.decoders import plan_reason

    save_file({"backbone.blocks.0.mixer.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    reason = plan_reason(tmp_path)
    assert reason is not None and "model.layers" in reason and "\n" not in reason
    save_file({"transformer.h.0.attn.c_attn.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert plan_reason(tmp_path) is None


def test_only_decoders_with_a_causal_lm_head_are_causal_lms() -> None:
    from engine.optimizations.decoders import is_causal_lm

    def named(name: str) -> object:
        return type(name, (), {})()

    assert is_causal_lm(named("LlamaForCausalLM")) and is_causal_lm(named("GPT2LMHeadModel"))
    # transformers maps these to causal LM too; they are masked, multimodal or encoder heads
    for name in ("BertLMHeadModel", "XLNetLMHeadModel", "Gemma3ForConditionalGeneration"):
        assert not is_causal_lm(named(name)), name


def test_a_config_with_per_layer_fields_the_pass_does_not_cut_is_refused(llama_zip: Path) -> None:
    from engine.errors import NotApplicable
    from engine.modules import load_module
    from engine.optimizations.decoders import find_decoder

    model = _intake(llama_zip)
    wrapper = load_module(model.path, model.format, model.spec)
    count = find_decoder(wrapper).count
    wrapper.model.config.no_rope_layers = [1] * count
    with pytest.raises(NotApplicable, match="no_rope_layers per layer") as err:
        find_decoder(wrapper)
    assert "\n" not in str(err.value)


def test_a_qwen2_with_sliding_window_layers_keeps_each_kept_layers_attention_type(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Qwen2 reads config.layer_types[i] in its forward (mask and sliding window) and its KV cache is built from it:
    the kept layers keep their own types, and a sliding-window layer's cache still agrees with no cache."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from engine.generation.cell import causal_lm

    root = tmp_path_factory.mktemp("qwen2")
    types = ["full_attention", "full_attention", "sliding_attention"]
    config = Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         use_sliding_window=True, sliding_window=4, layer_types=types, initializer_range=0.2,
                         bos_token_id=0, eos_token_id=0, architectures=["Qwen2ForCausalLM"])
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).eval().save_pretrained(root / "tiny-qwen2", safe_serialization=True)
    model = _intake(write_zip(root / "tiny-qwen2", root / "tiny-qwen2.zip"))
    _check_decoder(model, "model.model.layers", "self_attn", "num_hidden_layers", "synthesized ids")
    again = build_variant(model, parse_chain(CHAIN), "torch", BuildContext(model.spec))
    assert causal_lm(again.module).config.layer_types == ["full_attention", "sliding_attention"]
