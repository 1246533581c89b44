"""Pruning on tiny real models: structured (graphs and transformer encoders) and unstructured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.artifacts import intake
from engine.errors import NotApplicable, UserError
from engine.optimizations import parse_chain
from engine.optimizations.build import build_variant, not_applicable_reason
from engine.variants import BuildContext

ROOT = Path(__file__).resolve().parents[2]


def _export(module: Any, path: Path, example: Any) -> Path:
    import torch

    program = torch.export.export(module.eval(), (example,),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    torch.export.save(program, str(path))
    return path


def _params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def _out(module: Any, feeds: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = module(*(torch.from_numpy(feeds[n]) for n in names))
    return (out[0] if isinstance(out, (tuple, list)) else out).numpy()


def _feeds(model: Any, n: int) -> dict[str, np.ndarray]:
    from engine.data import synthesize

    return synthesize(model.spec, n, seed=11)


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]  # type: ignore[no-any-return]


# --- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "named"), [
    ("prune-structured:1.5", "ratio=1.5"),
    ("prune-structured:0", "ratio=0"),
    ("prune-structured:ratio=-0.1", "ratio=-0.1"),
    ("prune-structured:half", "half"),
    ("prune-structured:heads=2", "heads"),
    ("prune-unstructured:1", "amount=1"),
    ("prune-unstructured:bogus=1", "bogus"),
])
def test_bad_parameters_give_a_one_line_error_naming_the_value(text: str, named: str) -> None:
    with pytest.raises(UserError, match=named) as info:
        parse_chain(text)
    assert "\n" not in str(info.value)


def test_canonical_names_and_chains() -> None:
    assert parse_chain("prune-structured:0.5").name == "prune-structured"
    assert parse_chain("prune-structured:0.3").name == "prune-structured:ratio=0.3"
    chain = parse_chain("prune-structured:0.5+distill+int8-static")
    assert [s.id for s in chain.stage("torch")] == ["prune-structured", "distill"]
    with pytest.raises(UserError, match="first"):
        parse_chain("int8-static+prune-structured")


def test_declared_capabilities_need_no_heavy_imports() -> None:
    code = (
        "import sys\n"
        "from engine.optimizations import parse_chain\n"
        "from engine.optimizations.build import not_applicable_reason\n"
        "print(not_applicable_reason('torchscript', parse_chain('prune-structured:0.5'), 'torchscript', 'cpu'))\n"
        "print(not_applicable_reason('onnx', parse_chain('prune-unstructured'), 'onnx', 'cpu'))\n"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    torchscript, onnx, heavy = out.stdout.strip().splitlines()
    assert "TorchScript archive" in torchscript and ".pt2" in torchscript
    assert "torch-level pass and needs a torch model; this model is ONNX" in onnx
    assert heavy == "[]"


@pytest.mark.parametrize(("fmt", "chain"), [
    ("pt2", "prune-structured"), ("hf", "prune-structured"), ("torchscript", "prune-unstructured"),
    ("pt2", "prune-unstructured+int8-dynamic"),
])
def test_supported_formats_have_no_reason(fmt: str, chain: str) -> None:
    target = "torchscript" if fmt == "torchscript" else "torch"
    assert not_applicable_reason(fmt, parse_chain(chain), target, "cpu") is None


# --- structured pruning of torch.export graphs ------------------------------------------------


def test_an_mlp_loses_half_its_hidden_neurons(shared_build, mlp_pt2: Path) -> None:
    model, base = shared_build(mlp_pt2, "baseline", "torch")
    _, pruned = shared_build(mlp_pt2, "prune-structured:0.5", "torch")
    assert _params(base.module) == 16 * 32 + 32 + 32 * 4 + 4
    assert _params(pruned.module) == 16 * 16 + 16 + 16 * 4 + 4
    assert any("parameters 676 -> 340" in n for n in pruned.notes), pruned.notes
    assert _out(pruned.module, _feeds(model, 3), model.spec.names).shape == (3, 4)


def test_dead_neurons_are_the_ones_removed_and_outputs_do_not_change(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    with torch.no_grad():  # half the hidden neurons never fire: removing them must change nothing
        mlp[0].weight[::2] = 0.0
        mlp[0].bias[::2] = 0.0
    model = intake(_export(mlp, tmp_path / "dead.pt2", torch.randn(2, 8)))
    base = build_variant(model, parse_chain("baseline"), "torch", BuildContext(model.spec))
    pruned = build_variant(model, parse_chain("prune-structured:0.5"), "torch", BuildContext(model.spec))
    feeds = _feeds(model, 16)
    np.testing.assert_allclose(_out(pruned.module, feeds, model.spec.names),
                               _out(base.module, feeds, model.spec.names), rtol=1e-6, atol=1e-6)
    assert _params(pruned.module) == 8 * 6 + 6 + 6 * 3 + 3


class _ResidualNet:
    """A CNN with a residual block, batch norm, a depthwise conv, a squeeze-excite gate and a baked view."""

    @staticmethod
    def build() -> Any:
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
                self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                           nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
                self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
                self.squeeze, self.excite = nn.Linear(16, 4), nn.Linear(4, 16)
                self.head = nn.Linear(16 * 4 * 4, 10)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                x = self.stem(x)
                x = torch.relu(x + self.block(x))  # the residual add couples both convs' channels
                x = self.depthwise(x)
                gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean((2, 3))))))
                x = x * gate[:, :, None, None]
                x = torch.nn.functional.max_pool2d(x, 2)
                return self.head(x.reshape(-1, 16 * 4 * 4))  # a baked 256 that must become 128

        torch.manual_seed(0)
        net = Net()
        with torch.no_grad():  # non-trivial batch-norm statistics
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
        return net.eval()


@pytest.fixture(scope="module")
def residual_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    return _export(_ResidualNet.build(), tmp_path_factory.mktemp("residual") / "residual.pt2",
                   torch.randn(2, 3, 8, 8))


def test_a_residual_cnn_is_pruned_consistently_and_exports_to_onnx_and_torchscript(
        shared_build, residual_pt2: Path) -> None:
    import torch

    model, base = shared_build(residual_pt2, "baseline", "torch")
    _, pruned = shared_build(residual_pt2, "prune-structured:0.5", "torch")
    shapes = {n: tuple(p.shape) for n, p in pruned.module.named_parameters()}
    # stem and both block convs share one group (residual add), the depthwise conv and gate follow it
    assert shapes["stem.0.weight"] == (8, 3, 3, 3)
    assert shapes["block.0.weight"] == (8, 8, 3, 3) and shapes["block.3.weight"] == (8, 8, 3, 3)
    assert shapes["depthwise.weight"] == (8, 1, 3, 3)
    assert shapes["squeeze.weight"] == (2, 8) and shapes["excite.weight"] == (8, 2)
    assert shapes["head.weight"] == (10, 8 * 4 * 4)
    assert _params(pruned.module) < 0.4 * _params(base.module)
    feeds = _feeds(model, 5)
    expected = _out(pruned.module, feeds, model.spec.names)
    assert expected.shape == (5, 10)

    _, onnx_variant = shared_build(residual_pt2, "prune-structured:0.5", "onnx")
    assert onnx_variant.path.suffix == ".onnx"
    for n in (1, 5):
        part = {k: v[:n] for k, v in feeds.items()}
        np.testing.assert_allclose(_ort(onnx_variant.path, part), expected[:n], rtol=1e-4, atol=1e-5)
    _, script = shared_build(residual_pt2, "prune-structured:0.5", "torchscript")
    np.testing.assert_allclose(_out(torch.jit.load(str(script.path)), feeds, model.spec.names), expected,
                               rtol=1e-5, atol=1e-6)


def test_groups_that_reach_ops_it_cannot_rewrite_are_left_whole(tmp_path: Path) -> None:
    import torch

    class TwoBranches(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.out_a = torch.nn.Linear(6, 8), torch.nn.Linear(8, 2)
            self.b, self.out_b = torch.nn.Linear(6, 8), torch.nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            soft = torch.softmax(self.a(x), dim=-1)  # normalizes over the channels: removing one changes all
            return self.out_a(soft) + self.out_b(torch.relu(self.b(x)))

    torch.manual_seed(0)
    model = intake(_export(TwoBranches(), tmp_path / "two.pt2", torch.randn(2, 6)))
    pruned = build_variant(model, parse_chain("prune-structured"), "torch", BuildContext(model.spec))
    shapes = {n: tuple(p.shape) for n, p in pruned.module.named_parameters()}
    assert shapes["a.weight"] == (8, 6) and shapes["out_a.weight"] == (2, 8)
    assert shapes["b.weight"] == (4, 6) and shapes["out_b.weight"] == (2, 4)
    assert ("prune-structured left 1 channel group(s) whole, where channels meet what it cannot rewrite: "
            "softmax over the channels") in pruned.notes


def test_pruning_a_graph_with_nothing_prunable_is_not_applicable(tmp_path: Path) -> None:
    import torch

    class Softmaxed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.out = torch.nn.Linear(6, 8), torch.nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.softmax(self.a(x), dim=-1))

    model = intake(_export(Softmaxed(), tmp_path / "soft.pt2", torch.randn(2, 6)))
    with pytest.raises(NotApplicable, match=r"no channel group it can remove safely: softmax over the channels"):
        build_variant(model, parse_chain("prune-structured"), "torch", BuildContext(model.spec))


# --- structured pruning of transformer encoders -----------------------------------------------


def test_a_bert_loses_half_its_heads_and_ffn_neurons_and_still_exports(shared_build, bert_hf_zip: Path) -> None:
    model, base = shared_build(bert_hf_zip, "baseline", "torch")
    _, pruned = shared_build(bert_hf_zip, "prune-structured:0.5", "torch")
    layer = pruned.module.model.bert.encoder.layer[0]
    assert layer.attention.self.num_attention_heads == 1 and layer.attention.self.query.out_features == 16
    assert layer.attention.output.dense.in_features == 16
    assert layer.intermediate.dense.out_features == 32 and layer.output.dense.in_features == 32
    assert any("attention heads of 2 layer(s) (4 -> 2)" in n and "feed-forward neurons of 2 layer(s) (128 -> 64)"
               in n for n in pruned.notes), pruned.notes
    assert _params(pruned.module) < _params(base.module)
    feeds = _feeds(model, 3)
    expected = _out(pruned.module, feeds, model.spec.names)
    _, onnx_variant = shared_build(bert_hf_zip, "prune-structured:0.5", "onnx")
    np.testing.assert_allclose(_ort(onnx_variant.path, feeds), expected, rtol=1e-4, atol=1e-5)


# --- unstructured pruning ---------------------------------------------------------------------


def test_unstructured_pruning_reaches_its_sparsity_and_says_dense_runtimes_gain_nothing(
        shared_build, cnn_pt2: Path) -> None:
    from engine.optimizations.prune import linear_and_conv_weights

    _, base = shared_build(cnn_pt2, "baseline", "torch")
    _, sparse = shared_build(cnn_pt2, "prune-unstructured:0.75", "torch")
    weights = dict(linear_and_conv_weights(sparse.module))
    assert set(weights) == {"0.weight", "5.weight"}
    zeros = sum(int((w == 0).sum()) for w in weights.values()) / sum(w.numel() for w in weights.values())
    assert zeros == pytest.approx(0.75, abs=0.01)
    assert [tuple(p.shape) for p in sparse.module.parameters()] == [tuple(p.shape) for p in base.module.parameters()]
    assert any("zeroed 75.0%" in n and "no speedup" in n for n in sparse.notes), sparse.notes


def test_unstructured_pruning_of_a_torchscript_archive(mlp_torchscript: Path) -> None:
    import torch

    model = intake(mlp_torchscript)
    variant = build_variant(model, parse_chain("prune-unstructured:0.5"), "torchscript", BuildContext(model.spec))
    module = torch.jit.load(str(variant.path))
    zeros = sum(int((p == 0).sum()) for n, p in module.named_parameters() if n.endswith("weight"))
    assert zeros == 16 * 32 // 2 + 32 * 4 // 2
    with pytest.raises(NotApplicable, match="TorchScript archive"):
        build_variant(model, parse_chain("prune-structured"), "torchscript", BuildContext(model.spec))
