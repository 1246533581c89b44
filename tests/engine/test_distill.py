"""Knowledge distillation with real (short) training on tiny models: loss, determinism, caching, layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.artifacts import intake
from engine.data import Dataset, synthesize
from engine.errors import NotApplicable, UserError
from engine.optimizations import distill, parse_chain
from engine.optimizations.build import build_variant, not_applicable_reason
from engine.variants import BuildContext


def _inputs(model: Any, n: int, seed: int) -> dict[str, np.ndarray]:
    return synthesize(model.spec, n, seed=seed)


def _out(module: Any, feeds: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = module(*(torch.from_numpy(feeds[n]) for n in names))
    return (out[0] if isinstance(out, (tuple, list)) else out).numpy()


def _kl(teacher: np.ndarray, student: np.ndarray) -> float:
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    t, s = log_softmax(teacher.astype(np.float64)), log_softmax(student.astype(np.float64))
    return float((np.exp(t) * (t - s)).sum(axis=1).mean())


def _labelled(model: Any, teacher: Any, n: int = 256) -> Dataset:
    """A train split labelled by the teacher, so cross-entropy and distillation agree."""
    x = _inputs(model, n, seed=1)
    labels = _out(teacher, x, model.spec.names).argmax(1)
    return Dataset(splits={"train": x}, labels={"train": labels})


def _state(module: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@pytest.fixture
def mlp(mlp_pt2: Path) -> tuple[Any, Any]:
    model = intake(mlp_pt2)
    teacher = build_variant(model, parse_chain("baseline"), "torch", BuildContext(model.spec)).module
    return model, teacher


# --- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "named"), [
    ("distill:epochs=0", "epochs=0"),
    ("distill:lr=-0.1", "lr=-0.1"),
    ("distill:temperature=0", "temperature=0"),
    ("distill:alpha=1.5", "alpha=1.5"),
    ("distill:batch_size=0", "batch_size=0"),
    ("distill:layers=-1", "layers=-1"),
    ("distill:layerz=3", "layerz"),
    ("distill:epochs=two", "two"),
])
def test_bad_parameters_give_a_one_line_error_naming_the_value(text: str, named: str) -> None:
    with pytest.raises(UserError, match=named) as info:
        parse_chain(text)
    assert "\n" not in str(info.value)


def test_layers_need_a_transformer_and_say_so_before_building(mlp: tuple[Any, Any]) -> None:
    model, _ = mlp
    reason = not_applicable_reason("pt2", parse_chain("distill:layers=2"), "onnx", "cpu")
    assert reason is not None and "Hugging Face transformer" in reason
    assert not_applicable_reason("hf", parse_chain("prune-structured+distill:layers=2"), "onnx", "cpu") is None
    with pytest.raises(NotApplicable, match="Hugging Face transformer"):
        build_variant(model, parse_chain("distill:layers=2"), "torch", BuildContext(model.spec))


def test_evenly_spaced_layers_keep_the_first_and_the_last() -> None:
    assert distill.evenly_spaced(6, 3) == [0, 3, 5]
    assert distill.evenly_spaced(12, 4) == [0, 4, 7, 11]
    assert distill.evenly_spaced(4, 1) == [3]


# --- training ---------------------------------------------------------------------------------


def test_distillation_brings_a_pruned_student_back_to_its_teacher(mlp: tuple[Any, Any]) -> None:
    model, teacher = mlp
    data = Dataset(splits={"train": _inputs(model, 256, seed=1)})  # no labels: the teacher's logits alone
    pruned = build_variant(model, parse_chain("prune-structured"), "torch", BuildContext(model.spec)).module
    ctx = BuildContext(model.spec, dataset=data)
    student = build_variant(model, parse_chain("prune-structured+distill:epochs=8"), "torch", ctx)
    held_out = _inputs(model, 128, seed=99)
    reference = _out(teacher, held_out, model.spec.names)
    before = _kl(reference, _out(pruned, held_out, model.spec.names))
    after = _kl(reference, _out(student.module, held_out, model.spec.names))
    assert after < 0.5 * before, (before, after)
    note = next(n for n in student.notes if n.startswith("distill trained"))
    assert "on 256 samples of the train split (" in note and "seed 0" in note
    loss_before, loss_after = (float(v) for v in note.rpartition("loss against the teacher ")[2].split(" -> "))
    assert loss_after < 0.5 * loss_before
    assert student.train_s is not None and student.train_s > 0


def test_a_fixed_seed_gives_identical_weights_and_another_seed_does_not(
        mlp: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, teacher = mlp
    data = _labelled(model, teacher, 64)
    states = []
    for i, chain in enumerate(("prune-structured+distill:epochs=2", "prune-structured+distill:epochs=2",
                               "prune-structured+distill:epochs=2,seed=1")):
        monkeypatch.setenv("PARETOSCOPE_DATA_DIR", str(tmp_path / f"run{i}"))  # no cache between builds
        variant = build_variant(model, parse_chain(chain), "torch", BuildContext(model.spec, dataset=data))
        assert not variant.cached
        states.append(_state(variant.module))
    assert states[0].keys() == states[1].keys()
    assert all(np.array_equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(np.array_equal(states[0][k], states[2][k]) for k in states[0])


def test_a_distilled_variant_is_trained_once_for_every_target(
        mlp: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort
    import torch

    model, teacher = mlp
    data = _labelled(model, teacher, 64)
    calls = []
    train = distill._train
    monkeypatch.setattr(distill, "_train", lambda *a, **k: calls.append(1) or train(*a, **k))
    chain = parse_chain("prune-structured+distill:epochs=2")
    eager = build_variant(model, chain, "torch", BuildContext(model.spec, dataset=data))
    exported = build_variant(model, chain, "onnx", BuildContext(model.spec, dataset=data))
    script = build_variant(model, chain, "torchscript", BuildContext(model.spec, dataset=data))
    again = build_variant(model, chain, "torch", BuildContext(model.spec, dataset=data))
    assert len(calls) == 1
    assert again.cached and eager.train_s == exported.train_s == script.train_s == again.train_s
    assert again.notes == eager.notes
    feeds = _inputs(model, 6, seed=5)
    expected = _out(eager.module, feeds, model.spec.names)
    np.testing.assert_array_equal(_out(again.module, feeds, model.spec.names), expected)
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, feeds)[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_out(torch.jit.load(str(script.path)), feeds, model.spec.names), expected,
                               rtol=1e-5, atol=1e-6)
    # other training data is another variant
    other = Dataset(splits={"train": _inputs(model, 64, seed=7)})
    build_variant(model, chain, "torch", BuildContext(model.spec, dataset=other))
    assert len(calls) == 2


def test_distillation_keeps_the_zeros_of_unstructured_pruning(mlp_torchscript: Path) -> None:
    import torch

    model = intake(mlp_torchscript)
    ctx = BuildContext(model.spec)
    variant = build_variant(model, parse_chain("prune-unstructured:0.5+distill:epochs=2,max_samples=64"),
                            "torchscript", ctx)
    module = torch.jit.load(str(variant.path))
    weights = [p for n, p in module.named_parameters() if n.endswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == sum(w.numel() for w in weights) // 2
    assert "pruned (zero) weights stayed zero" in variant.notes[-1]
    assert "64 samples of synthesized inputs" in variant.notes[-1]


# --- transformers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A four-layer BERT encoder without a head (its output: the last hidden states)."""
    import torch
    import transformers

    from tests.conftest import zip_folder

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32)
    folder = tmp_path_factory.mktemp("encoder") / "bert-encoder"
    transformers.BertModel(config).eval().save_pretrained(str(folder), safe_serialization=True)
    return zip_folder(folder, folder.parent / "bert-encoder.zip")


def test_layers_keeps_evenly_spaced_layers_with_their_weights(encoder_zip: Path) -> None:
    model = intake(encoder_zip, seq_len=8)
    teacher = build_variant(model, parse_chain("baseline"), "torch", BuildContext(model.spec)).module
    ctx = BuildContext(model.spec)
    student = build_variant(model, parse_chain("distill:layers=2,epochs=1,max_samples=16,batch_size=8"), "torch", ctx)
    bert = student.module.model
    assert len(bert.encoder.layer) == 2 and bert.config.num_hidden_layers == 2
    assert "distill kept layers 0, 3 of 4" in student.notes
    # two small steps leave the copied weights close to the teacher's layers 0 and 3, not 1 and 2
    kept = [layer.attention.self.query.weight.detach() for layer in bert.encoder.layer]
    source = [layer.attention.self.query.weight.detach() for layer in teacher.model.encoder.layer]
    assert float((kept[0] - source[0]).abs().max()) < 2e-3 and float((kept[1] - source[3]).abs().max()) < 2e-3
    assert float((kept[1] - source[1]).abs().max()) > 1e-2
    feeds = _inputs(model, 4, seed=3)
    assert _out(student.module, feeds, model.spec.names).shape == (4, 8, 32)  # hidden states, MSE loss


def test_a_cell_records_training_time_and_notes(mlp: tuple[Any, Any], tmp_path: Path) -> None:
    from engine import job
    from engine.measure.latency import MeasureSettings
    from engine.plan import Cell, StudySettings

    model, teacher = mlp
    x = _inputs(model, 96, seed=1)
    data = tmp_path / "data.npz"
    np.savez(data, **{"train/input": x["input"], "train/labels": _out(teacher, x, model.spec.names).argmax(1),
                      "eval/input": _inputs(model, 32, seed=2)["input"],
                      "eval/labels": np.zeros(32, dtype=np.int64)})
    settings = StudySettings(measure=MeasureSettings(warmup=1, iterations=3, min_seconds=0.0, rounds=0), threads=1)
    job.compute_reference(tmp_path, model, str(data), settings, lambda phase, fraction: None)
    chain = parse_chain("prune-structured+distill:epochs=2")
    cell = Cell(0, chain.name, tuple(chain.to_json()), "torch", 4)
    phases: list[str] = []
    result = job.run_cell(tmp_path, model, cell, settings, str(data), lambda phase, fraction: phases.append(phase))
    assert result.train_s is not None and result.train_s > 0
    assert any(n.startswith("distill trained") and "96 samples of the train split and its labels" in n
               for n in result.notes)
    assert "distill epoch 2/2" in phases
    assert result.fidelity is not None and result.fidelity.cosine is not None


def test_a_cuda_cell_trains_on_the_cpu_with_a_note_when_the_model_cannot_move(
        mlp: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Here torch has no CUDA: moving fails as it would for a graph with CPU constants, and training goes on."""
    import torch

    from engine.optimizations.distill import training_device

    model, _ = mlp
    assert training_device("cpu") == "cpu"
    assert training_device("cuda") == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_device("cuda:1") == "cuda:1"
    data = Dataset(splits={"train": _inputs(model, 64, seed=1)})
    ctx = BuildContext(model.spec, "cuda", dataset=data)
    student = build_variant(model, parse_chain("prune-structured+distill:epochs=1"), "torch", ctx)
    assert any(n.startswith("distill: trained on the CPU, as the model does not run on cuda") for n in student.notes)
    trained = next(n for n in student.notes if n.startswith("distill trained"))
    assert " on cpu in " in trained
    assert all(p.device.type == "cpu" for p in student.module.parameters())
