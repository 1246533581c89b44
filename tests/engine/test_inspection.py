"""A user's model or data is opened only in a limited child: a hang or a memory blow-up is one line, exit 2."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.__main__ import main
from engine.errors import UserError
from engine.inspection import check_data, inspect_model
from engine.specs import InputSpec

FAST = ["--iterations", "3", "--min-seconds", "0.05", "--warmup", "1", "--threads", "1", "--timeout", "120",
        "--rounds", "0"]


class _Hang(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while True:
            x = x + 1.0
        return x


class _Greedy(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        held: list[torch.Tensor] = [x.sum().reshape([1])]
        while len(held) < 1_000_000:  # the result depends on every step: nothing is optimized away
            held.append(torch.ones([134217728]) + held[-1][0])  # 512 MiB a step, written
        return held[-1][:1] + x


def _script(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def _bench(model: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["bench", str(model), "--input-spec", "x:float32[B,4]", "--runtimes", "torchscript",
                 "--variants", "baseline", "--batch-sizes", "1", *FAST], out=io.StringIO())
    return code, capsys.readouterr().err.strip()


def test_a_model_that_never_returns_ends_the_cli_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PARETOSCOPE_INSPECT_TIMEOUT_S", "10")  # a hang times out however slow the start-up
    code, err = _bench(_script(_Hang(), tmp_path / "hang.pt"), capsys)
    assert code == 2
    assert err.startswith("error: inspecting hang.pt took longer than the inspection's limit of 10 s"), err
    assert "\n" not in err


def test_a_model_that_allocates_without_bound_hits_the_memory_limit(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PARETOSCOPE_INSPECT_MEMORY_MB", "3000")
    code, err = _bench(_script(_Greedy(), tmp_path / "greedy.pt"), capsys)
    assert code == 2
    assert err.startswith("error: inspecting greedy.pt passed the inspection's memory limit of 3000 MB"), err


def test_data_declaring_a_huge_array_is_refused_in_the_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An .npy header may declare any shape: it is checked against the bytes present before anything is allocated,
    in the child, not the caller."""
    monkeypatch.setenv("PARETOSCOPE_INSPECT_MEMORY_MB", "3000")
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 4), dtype=np.float32))
    header["shape"] = (10**9, 4)
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    member.write(b"\0" * 64)
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", member.getvalue())
    spec = InputSpec.parse("x:float32[B,4]")
    with pytest.raises(UserError, match=r"^huge\.npz: array 'x' is truncated: its header declares shape "
                                        r"\(1000000000, 4\) of float32 \(16,000,000,000 bytes\) but the file "
                                        r"holds 64; save it again") as refused:
        check_data(path, spec)
    assert "\n" not in str(refused.value)


def test_a_good_model_is_inspected_in_the_child_and_stored(mlp_onnx: Path, data_dir: Path) -> None:
    artifact = inspect_model(mlp_onnx)
    assert artifact.format == "onnx"
    assert artifact.path.is_relative_to(data_dir / "models") and artifact.path.is_file()


def test_ctrl_c_during_intake_stops_the_cli_and_its_child(tmp_path: Path, data_dir: Path) -> None:
    """Ctrl-C while a hanging model is inspected: the CLI exits 130 at once and its inspecting child is gone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    model = _script(_Hang(), tmp_path / "hang.pt")
    # started as a script's background job starts it: SIGINT ignored, which the CLI must undo (Python leaves an
    # inherited "ignore" in place and installs no KeyboardInterrupt of its own)
    ignore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PARETOSCOPE_DATA_DIR": str(data_dir), "PARETOSCOPE_INSPECT_TIMEOUT_S": "600",
           "PYTHONFAULTHANDLER": "1"}  # a hung CLI prints its stacks on SIGABRT, for the failure message
    cli = subprocess.Popen([sys.executable, "-m", "engine", "bench", str(model), "--input-spec", "x:float32[B,4]",
                            "--runtimes", "torchscript", "--variants", "baseline", *FAST], cwd=root, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore_sigint)
    children: list[psutil.Process] = []
    # the event waited for: the inspecting child is in the model's endless forward (it has used CPU time of its
    # own), so the CLI is waiting on it, however slowly a loaded machine started either of them
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and cli.poll() is None:
        children = [p for p in psutil.Process(cli.pid).children(recursive=True)
                    if "engine.executors.child" in " ".join(p.cmdline())]
        if children and sum(children[0].cpu_times()[:2]) > 5.0:
            break
        time.sleep(0.2)
    assert children, "the inspecting child never started"
    cli.send_signal(signal.SIGINT)
    try:
        _out, err = cli.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        cli.send_signal(signal.SIGABRT)
        raise AssertionError(f"the CLI ignored Ctrl-C; its stacks:\n{cli.communicate()[1][-4000:]}") from None
    assert cli.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted"
    _gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"the inspecting child outlived the CLI: {alive}"
