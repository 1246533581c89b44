"""Building variants: ONNX export of every torch format, TorchScript and eager targets, and the build cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.artifacts import intake
from engine.errors import NotApplicable
from engine.optimizations import parse_chain
from engine.optimizations.build import build_variant
from engine.variants import BuildContext, Variant
from storage.paths import sub_dir


def _torch_outputs(model: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The original model's outputs, straight from torch."""
    import torch

    from engine.modules import load_module

    module = load_module(model.path, model.format, model.spec)
    with torch.inference_mode():
        out = module(*(torch.from_numpy(feeds[n]) for n in model.spec.names))
    return (out[0] if isinstance(out, (tuple, list)) else out).numpy()


def _ort(variant: Variant, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(variant.path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]  # type: ignore[no-any-return]


def _batch(model: Any, n: int) -> dict[str, np.ndarray]:
    from engine.data import synthesize

    return synthesize(model.spec, n, seed=n)


def _onnx_input_dims(path: Path) -> list[list[int | str]]:
    import onnx

    graph = onnx.load(str(path)).graph
    return [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]


# --- ONNX export ------------------------------------------------------------------------------


@pytest.mark.parametrize(("fixture", "exporter_note"), [
    ("mlp_torchscript", "TorchScript archives export with the legacy (TorchScript) exporter"),
    ("mlp_pt2", "exported to ONNX with the dynamo exporter (opset 18)"),
    ("cnn_pt2", "exported to ONNX with the dynamo exporter (opset 18)"),
])
def test_onnx_export_has_a_dynamic_batch_and_matches_torch(
        shared_build, request: pytest.FixtureRequest, fixture: str, exporter_note: str) -> None:
    model, variant = shared_build(request.getfixturevalue(fixture))
    assert variant.target == "onnx" and variant.path.suffix == ".onnx"
    assert exporter_note in variant.notes
    assert all(isinstance(dims[0], str) for dims in _onnx_input_dims(variant.path)), "batch axis is not dynamic"
    for n in (1, 7):
        feeds = _batch(model, n)
        out = _ort(variant, feeds)
        assert out.shape[0] == n
        np.testing.assert_allclose(out, _torch_outputs(model, feeds), atol=1e-5, rtol=1e-4)


def test_torchscript_export_notes_the_legacy_exporter_and_opset(shared_build, mlp_torchscript: Path) -> None:
    _, variant = shared_build(mlp_torchscript)
    assert variant.notes == ["TorchScript archives export with the legacy (TorchScript) exporter",
                             "exported to ONNX with the legacy exporter (opset 18)"]


def test_export_settings_are_honoured(shared_build, mlp_pt2: Path) -> None:
    import onnx

    model, legacy = shared_build(mlp_pt2, "onnx-export:exporter=legacy")
    assert legacy.notes == ["exported to ONNX with the legacy exporter (opset 18)"]
    feeds = _batch(model, 5)
    np.testing.assert_allclose(_ort(legacy, feeds), _torch_outputs(model, feeds), atol=1e-5, rtol=1e-4)
    _, opset17 = shared_build(mlp_pt2, "onnx-export:opset=17")
    opsets = {o.domain: o.version for o in onnx.load(str(opset17.path)).opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == 17


def test_hugging_face_exports_with_dynamo_with_dynamic_batch_and_sequence(shared_build, bert_hf_zip: Path) -> None:
    """HFWrapper takes `*tensors`: the dynamic shapes must be laid out for that one parameter, else every Hugging
    Face model fell back to the legacy exporter."""
    import onnx

    from engine.measure.accuracy import fidelity

    model, variant = shared_build(bert_hf_zip)
    assert variant.notes == ["exported to ONNX with the dynamo exporter (opset 18)"]
    assert _onnx_input_dims(variant.path) == [["batch", "sequence"]] * 3  # named as the legacy exporter names them
    assert sorted(p.name for p in variant.path.parent.iterdir()) == ["model.onnx", "variant.json"]  # one file
    # the exporter's per-node debugging notes (Python stacks with this machine's paths) are not shipped
    assert not any(node.metadata_props for node in onnx.load(str(variant.path)).graph.node)
    for n, seq in ((1, 64), (3, 9)):
        feeds = {k: v[:, :seq] for k, v in _batch(model, n).items()}
        out = _ort(variant, feeds)
        ref = _torch_outputs(model, feeds)
        assert out.shape == ref.shape == (n, 3)
        assert fidelity(ref, out)["cosine"] > 0.99999
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-4)


def _data_dependent() -> Any:
    """A module whose branch depends on its input's values: torch.export refuses it, the legacy tracer records the
    branch it took."""
    import torch

    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x - 1

    return DataDependent().eval()


def test_dynamo_failure_falls_back_to_legacy_with_one_short_note(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.optimizations.export import OnnxExportConfig, to_onnx
    from engine.specs import InputSpec

    spec = InputSpec.parse("x:float32[B,4]")
    notes: list[str] = []
    to_onnx(_data_dependent(), spec, tmp_path / "m.onnx", OnnxExportConfig(), notes)
    assert len(notes) == 1
    note = notes[0]
    assert note.startswith("exported to ONNX with the legacy exporter (opset 18): dynamo failed (")
    assert "GuardOnDataDependentSymNode: Could not guard on data-dependent expression" in note  # the root cause
    assert len(note) < 200 and "\n" not in note and "\x1b" not in note
    assert (tmp_path / "m.onnx").is_file()
    # the whole traceback is in the cell's log (its stderr), not in the note
    err = capsys.readouterr().err
    assert "the dynamo exporter failed; exporting with the legacy exporter instead:" in err
    assert "Traceback (most recent call last)" in err and "TorchExportError" in err
    # the same model fails the same way in every cell of a study: one note, shown once above the results
    again: list[str] = []
    to_onnx(_data_dependent(), spec, tmp_path / "again.onnx", OnnxExportConfig(), again)
    assert again == notes
    with pytest.raises(Exception, match="export"):  # exporter=dynamo must not fall back
        to_onnx(_data_dependent(), spec, tmp_path / "d.onnx", OnnxExportConfig(exporter="dynamo"), [])


def test_fallback_note_names_the_root_cause_in_one_bounded_line() -> None:
    from engine.optimizations.export import NOTE_ERROR_CHARS, fallback_note

    try:
        try:
            raise ValueError(f"\x1b[31mshape of <Tensor at 0x7f3a9c2d1e80> {'is wrong ' * 40}\x1b[0m\nsecond line")
        except ValueError as inner:
            raise RuntimeError("Failed to export the model with torch.export. This is step 1/3") from inner
    except RuntimeError as exc:
        note = fallback_note(exc, 17)
    head = "exported to ONNX with the legacy exporter (opset 17): dynamo failed ("
    assert note.startswith(head + "ValueError: shape of <Tensor at 0x…> is wrong is wrong") and note.endswith("…)")
    assert len(note) == len(head) + NOTE_ERROR_CHARS + 1
    assert "second line" not in note and "step 1/3" not in note
    assert fallback_note(RuntimeError(), 18).endswith("dynamo failed (RuntimeError)")


# --- TorchScript and eager targets ------------------------------------------------------------


def test_torchscript_target_from_pt2(shared_build, mlp_pt2: Path) -> None:
    import torch

    model, variant = shared_build(mlp_pt2, "baseline", "torchscript")
    assert variant.notes == ["converted to TorchScript with torch.jit.trace"]
    module = torch.jit.load(str(variant.path))
    for n in (1, 6):
        feeds = _batch(model, n)
        with torch.inference_mode():
            out = module(torch.from_numpy(feeds["input"])).numpy()
        np.testing.assert_allclose(out, _torch_outputs(model, feeds), atol=1e-6)


def test_torchscript_target_from_hugging_face(bert_hf_zip: Path) -> None:
    import torch

    model = intake(bert_hf_zip, seq_len=16)
    variant = build_variant(model, parse_chain("baseline"), "torchscript", BuildContext(model.spec))
    assert variant.path is not None and variant.path.suffix == ".pt"
    module = torch.jit.load(str(variant.path))
    feeds = _batch(model, 3)
    with torch.inference_mode():
        out = module(*(torch.from_numpy(feeds[n]) for n in model.spec.names))
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert out.shape == (3, 3)
    np.testing.assert_allclose(out.numpy(), _torch_outputs(model, feeds), atol=1e-5)


def test_int8_dynamic_torch_quantizes_hugging_face_linears(bert_hf_zip: Path) -> None:
    import torch

    from engine.measure.accuracy import fidelity

    model = intake(bert_hf_zip, seq_len=16)
    base = build_variant(model, parse_chain("baseline"), "torch", BuildContext(model.spec))
    ctx = BuildContext(model.spec)
    quantized = build_variant(model, parse_chain("int8-dynamic"), "torch", ctx)
    assert quantized.path is None and quantized.module is not None
    dynamic_linear = torch.ao.nn.quantized.dynamic.Linear
    assert any(isinstance(m, dynamic_linear) for m in quantized.module.modules())
    assert not any(isinstance(m, dynamic_linear) for m in base.module.modules())
    assert any("Linear layers (torch)" in n for n in ctx.notes)
    assert quantized.size_bytes < base.size_bytes
    feeds = _batch(model, 8)
    with torch.inference_mode():
        ref, out = ([m.module(*(torch.from_numpy(feeds[n]) for n in model.spec.names)).numpy()]
                    for m in (base, quantized))
    assert fidelity(ref, out)["cosine"] > 0.99


def test_torch_target_keeps_the_module_and_the_uploaded_file(mlp_pt2: Path) -> None:
    model = intake(mlp_pt2)
    variant = build_variant(model, parse_chain("baseline"), "torch", BuildContext(model.spec))
    assert variant.path == model.path and variant.module is not None
    assert variant.input_names == model.spec.names and variant.size_bytes > 0
    with pytest.raises(NotApplicable, match=r"no nn\.Linear"):
        build_variant(model, parse_chain("int8-dynamic"), "torch", BuildContext(model.spec))


def test_uploaded_files_are_used_as_they_are(mlp_onnx: Path, mlp_torchscript: Path) -> None:
    for path, target in ((mlp_onnx, "onnx"), (mlp_torchscript, "torchscript")):
        model = intake(path)
        variant = build_variant(model, parse_chain("baseline"), target, BuildContext(model.spec))
        assert variant.path == model.path and variant.size_bytes == model.size_bytes
        assert not variant.cached and variant.notes == []


def test_torchscript_archives_are_not_rewritten_by_torch_passes(mlp_torchscript: Path) -> None:
    model = intake(mlp_torchscript)
    with pytest.raises(NotApplicable, match="TorchScript"):
        build_variant(model, parse_chain("int8-dynamic"), "torchscript", BuildContext(model.spec))


# --- the build cache --------------------------------------------------------------------------


def _variant_folders() -> list[Path]:
    return sorted(p for p in sub_dir("variants").iterdir())


def test_a_second_build_is_cached_and_prefix_steps_are_reused(mlp_torchscript: Path) -> None:
    model = intake(mlp_torchscript)
    first_ctx = BuildContext(model.spec)
    first = build_variant(model, parse_chain("int8-dynamic"), "onnx", first_ctx)
    assert not first.cached
    assert len(_variant_folders()) == 2  # the export and the quantized file, each cached
    assert first.path is not None and first.size_bytes == first.path.stat().st_size
    stamp = first.path.stat().st_mtime_ns

    again_ctx = BuildContext(model.spec)
    again = build_variant(model, parse_chain("int8-dynamic"), "onnx", again_ctx)
    assert again.cached and again.path == first.path and again.path.stat().st_mtime_ns == stamp
    assert again.notes == first.notes == again_ctx.notes
    assert "exported to ONNX with the legacy exporter (opset 18)" in again.notes

    prefix = build_variant(model, parse_chain("baseline"), "onnx", BuildContext(model.spec))
    assert prefix.cached and prefix.path is not None and prefix.path.parent in _variant_folders()

    other = build_variant(model, parse_chain("int8-dynamic:per_channel=false"), "onnx", BuildContext(model.spec))
    assert not other.cached and other.path != first.path
    assert len(_variant_folders()) == 3  # the export was not built again
    assert other.notes[:2] == first.notes[:2]


def test_the_cache_key_separates_targets_and_chains(mlp_pt2: Path) -> None:
    model = intake(mlp_pt2)
    onnx_variant = build_variant(model, parse_chain("baseline"), "onnx", BuildContext(model.spec))
    script = build_variant(model, parse_chain("baseline"), "torchscript", BuildContext(model.spec))
    assert onnx_variant.path != script.path and not script.cached
    explicit = build_variant(model, parse_chain("onnx-export"), "onnx", BuildContext(model.spec))
    assert explicit.path != onnx_variant.path  # a different chain name is a different variant
    assert build_variant(model, parse_chain("baseline"), "torchscript", BuildContext(model.spec)).cached


def test_calibration_data_is_part_of_the_cache_key(mlp_onnx: Path) -> None:
    model = intake(mlp_onnx)
    chain = parse_chain("int8-static:samples=16")
    synthetic = build_variant(model, chain, "onnx", BuildContext(model.spec))
    assert build_variant(model, chain, "onnx", BuildContext(model.spec)).cached
    rng = np.random.default_rng(1)
    data = {"x": rng.standard_normal((20, 16)).astype(np.float32) * 4}
    ctx = BuildContext(model.spec, calibration_data=lambda n: {k: v[:n] for k, v in data.items()},
                       calibration_source="the calib split")
    given = build_variant(model, chain, "onnx", ctx)
    assert not given.cached and given.path != synthetic.path
    assert "from the calib split" in given.notes[-1]
    # a chain that calibrates nothing does not depend on the data
    plain = build_variant(model, parse_chain("int8-dynamic"), "onnx", BuildContext(model.spec))
    reused = build_variant(model, parse_chain("int8-dynamic"), "onnx", BuildContext(
        model.spec, calibration_data=lambda n: {k: v[:n] for k, v in data.items()}))
    assert reused.cached and reused.path == plain.path


def test_builds_leave_no_staging_or_intermediate_files(mlp_onnx: Path) -> None:
    model = intake(mlp_onnx)
    build_variant(model, parse_chain("int8-static:samples=8"), "onnx", BuildContext(model.spec))
    build_variant(model, parse_chain("int8-dynamic"), "onnx", BuildContext(model.spec))
    folders = _variant_folders()
    assert len(folders) == 2 and not any(p.name.startswith(".") for p in folders)
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "variant.json"]
