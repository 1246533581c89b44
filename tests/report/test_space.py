"""The Hugging Face Space bundle: front matter, Dockerfile, slim requirements, a viewer that runs without
Paretoscope or any heavy package, the zip, and --push without a network."""

from __future__ import annotations

import ast
import base64
import io
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from engine.__main__ import main
from engine import results
from engine.report import charts, ship, space, tables
from tests.conftest import results_frame
from tests.report.conftest import HOSTILE_STUDY, Seeded
from tests.report.spaces import run_viewer
from tests.report.studies import measured

HEAVY = ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "onnxscript", "openvino", "tensorrt", "transformers",
         "safetensors", "scikit-learn", "sqlalchemy", "psycopg", "nvidia-ml-py", "huggingface_hub")
COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
FRONT_MATTER_KEYS = {"title", "emoji", "colorFrom", "colorTo", "sdk", "app_port", "short_description"}


def front_matter(readme: str) -> dict[str, Any]:
    assert readme.startswith("---\n")
    block, _, _ = readme[4:].partition("\n---\n")
    data = yaml.safe_load(block)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def bundle(seeded: Seeded, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("space") / "my space"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PARETOSCOPE_DATA_DIR", str(seeded.folder))
        stdout = io.StringIO()
        assert main(["report", str(seeded.study_a), "--format", "space", "--out", str(folder)], out=stdout) == 0
    assert str(folder) in stdout.getvalue()
    return folder


def test_readme_front_matter_is_valid_yaml_with_the_spaces_keys(bundle: Path) -> None:
    meta = front_matter((bundle / "README.md").read_text(encoding="utf-8"))
    assert FRONT_MATTER_KEYS <= set(meta)
    assert meta["sdk"] == "docker" and meta["app_port"] == 8501
    assert meta["colorFrom"] in COLORS and meta["colorTo"] in COLORS
    assert HOSTILE_STUDY in meta["title"]  # quoted, so YAML gives it back verbatim
    assert isinstance(meta["short_description"], str) and 0 < len(meta["short_description"]) <= 60
    body = (bundle / "README.md").read_text(encoding="utf-8").split("\n---\n", 1)[1]
    assert "<script>" not in body and "<b>" not in body


@pytest.mark.parametrize("name", [
    'x: y\n---\nsdk: gradio', '"double" \'single\' \\back\\slash', "# not a comment", "[list], {map}, &anchor *alias",
    "tab\tand\u2028line separator\x00nul", "ünïcödé 🚀 " * 20, "", "- dash", "yes", "12",
])
def test_front_matter_survives_any_name(report_a: dict, name: str) -> None:
    report = {**report_a, "study": {**report_a["study"], "name": name,
                                    "model": {**report_a["study"]["model"], "name": name}}}
    meta = front_matter(space.readme(report))
    assert set(meta) == FRONT_MATTER_KEYS | {"pinned"}
    assert meta["sdk"] == "docker" and meta["app_port"] == 8501
    assert isinstance(meta["title"], str) and meta["title"].startswith("Paretoscope:")
    assert isinstance(meta["short_description"], str) and len(meta["short_description"]) <= 60


def test_dockerfile_and_requirements(bundle: Path) -> None:
    docker = (bundle / "Dockerfile").read_text()
    assert docker.startswith(f"FROM python:{sys.version_info.major}.{sys.version_info.minor}-slim")
    assert "--uid 1000" in docker and "\nUSER user\n" in docker
    assert '"--server.address=0.0.0.0"' in docker and '"--server.port=8501"' in docker
    names = [line.split(">")[0].split("=")[0].split("<")[0].strip()
             for line in (bundle / "requirements.txt").read_text().splitlines() if line.strip()]
    assert sorted(names) == ["pandas", "plotly", "streamlit"]
    assert not set(names) & set(HEAVY)


def test_bundle_code_imports_nothing_from_paretoscope(bundle: Path) -> None:
    allowed = set(sys.stdlib_module_names) | {"streamlit", "plotly", "pandas", "numpy", "viewer"}
    sources = sorted(bundle.rglob("*.py"))
    assert {p.relative_to(bundle).as_posix() for p in sources} == {
        "app.py", "viewer/__init__.py", "viewer/charts.py", "viewer/pareto.py", "viewer/results.py", "viewer/ship.py",
        "viewer/tables.py"}
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                assert name.split(".")[0] in allowed, (path, name)
    # one source: the copies are engine/report's modules with only their imports changed
    original = Path(space.__file__).with_name("charts.py").read_text()
    assert (bundle / "viewer" / "charts.py").read_text() == _bundled(original)
    data = json.loads((bundle / "data" / "results.json").read_text())
    assert all(r["samples_ms"] and "variant_path" not in r for r in data["results"])
    assert (bundle / "data" / "results.csv").read_text().count("\n") == 1 + len(data["results"])


def _bundled(source: str) -> str:
    """A module's source with only its imports of the report and of the results record pointed at `viewer`."""
    return source.replace("from engine.report.", "from viewer.").replace("from engine.results ", "from viewer.results ")


def test_the_results_record_is_bundled_as_it_is(bundle: Path) -> None:
    assert (bundle / "viewer" / "results.py").read_text(encoding="utf-8") == Path(results.__file__).read_text(
        encoding="utf-8")


def test_the_spaces_ship_panel_is_the_modules_file(bundle: Path) -> None:
    # one panel: the viewer draws engine/report/ship.py, copied with only its imports changed, and has none of its own
    original = Path(ship.__file__).read_text(encoding="utf-8")
    copied = (bundle / "viewer" / "ship.py").read_text(encoding="utf-8")
    assert copied == _bundled(original) == space.viewer_source("ship")
    app = (bundle / "app.py").read_text(encoding="utf-8")
    assert "ship_panel(" in app and ship.TITLE not in app and "number_input" not in app


def test_zip_holds_the_folder(bundle: Path) -> None:
    archive = bundle.with_name(bundle.name + ".zip")
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    with zipfile.ZipFile(archive) as zf:
        assert set(zf.namelist()) == {f"{bundle.name}/{f}" for f in files}
        assert zf.read(f"{bundle.name}/app.py") == (bundle / "app.py").read_bytes()


def values(data: Any) -> list[Any]:
    """A Plotly trace array: a list, or {"dtype", "bdata"} (base64) as Plotly 6+ writes numpy arrays."""
    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"])).tolist()
    return list(data)


def test_viewer_runs_where_only_streamlit_plotly_and_pandas_exist(bundle: Path, seeded: Seeded, data_dir: Path,
                                                                  tmp_path: Path) -> None:
    result = run_viewer(bundle, tmp_path)
    assert {"torch", "onnxruntime", "openvino", "engine", "storage"} <= set(result["missing"])
    assert not result["exception"], result["exception"]
    assert not {"torch", "onnxruntime", "engine", "storage", "sqlalchemy"} & set(result["loaded"])
    assert result["rows"] == 4 and any("Ship" in s for s in result["success"])
    titles = [c["layout"]["title"]["text"] for c in result["charts"]]
    frame = results_frame(seeded.study_a)
    drawn = 5 + charts.has_speedup_intervals(frame)  # the speedup chart where the study measured intervals
    assert len(titles) == drawn and any("against latency" in t for t in titles)
    # the charts' own template, not Streamlit's theme (whose placeholder colours turn black outside Streamlit)
    assert result["themes"] == [""] * drawn
    assert all(c["layout"]["template"]["layout"]["colorway"] == list(charts.COLORWAY) for c in result["charts"])
    assert tables.MISSING in result["shown"] and not {"None", "nan", "NaN", "<NA>"} & set(result["shown"])
    bars = next(c for c in result["charts"] if "Latency per cell" in c["layout"]["title"]["text"])
    p50 = dict(zip(values(bars["data"][0]["x"]), values(bars["data"][0]["y"]), strict=True))
    for _, row in frame.iterrows():
        assert p50[f"{row['variant']} · {row['runtime']} · b{row['batch_size']}"] == pytest.approx(row["p50_ms"])
    assert not result["filtered_exception"] and any("No measured cell" in i for i in result["filtered_info"])


def unescaped(markdown: str) -> str:
    """The text of the viewer's Markdown, whose names and numbers are escaped to show as written."""
    return re.sub(r"\\(.)", r"\1", markdown)


def test_viewer_shows_speedup_intervals_and_a_tie_on_speed(tmp_path: Path) -> None:
    bundle = tmp_path / "space"
    space.write_space(measured(), bundle)
    result = run_viewer(bundle, tmp_path)
    assert not result["exception"], result["exception"]
    assert {"2.00× [1.80, 2.20]", "1.80× [1.60, 2.00]", "1.25×"} <= set(result["shown"])  # older cell: no interval
    success = [unescaped(s) for s in result["success"]]
    assert any("Ship **fp16** on **onnxruntime**" in s and "1.80× [1.60, 2.00] the baseline on torch" in s
               for s in success), success
    warnings = [unescaped(w) for w in result["warning"]]
    assert any("tied on speed with int8-dynamic · onnxruntime (2.00× [1.80, 2.20]) — the intervals overlap; "
               "picked the more accurate" in w for w in warnings), warnings
    speedup = next(c for c in result["charts"] if "Speedup per cell" in c["layout"]["title"]["text"])
    assert "speedup 2.00× [1.80, 2.20] vs baseline on torch" in " ".join(speedup["data"][0]["customdata"])


def test_an_unrelated_folder_is_never_replaced(seeded: Seeded, data_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["report", str(seeded.study_a), "--format", "space", "--out", str(tmp_path)], out=io.StringIO()) == 2
    assert "not an earlier Space bundle" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


# --- push: never a network call in tests --------------------------------------------------------------------


def push(seeded: Seeded, tmp_path: Path, repo: str = "alice/bench") -> tuple[int, str]:
    out = io.StringIO()
    code = main(["report", str(seeded.study_a), "--format", "space", "--out", str(tmp_path / "space"), "--push",
                 repo], out=out)
    return code, out.getvalue()


def test_push_without_a_token_says_what_is_missing(seeded: Seeded, data_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", None)  # reaching the client would be a bug
    code, _ = push(seeded, tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "token" in err and "HF_TOKEN" in err
    assert (tmp_path / "space" / "Dockerfile").is_file()  # the folder is there to push by hand


def test_push_without_huggingface_hub_says_what_is_missing(seeded: Seeded, data_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    code, _ = push(seeded, tmp_path)
    assert code == 2 and "pip install huggingface_hub" in capsys.readouterr().err


def test_bad_space_id_is_refused_before_writing(seeded: Seeded, data_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = push(seeded, tmp_path, repo="not a repo")
    assert code == 2 and "OWNER/NAME" in capsys.readouterr().err
    assert not (tmp_path / "space").exists()


def test_push_uploads_the_folder_as_a_docker_space(seeded: Seeded, data_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    class FakeApi:
        def __init__(self, token: str) -> None:
            calls.append(("init", (token,), {}))

        def create_repo(self, *args: Any, **kwargs: Any) -> None:
            calls.append(("create_repo", args, kwargs))

        def upload_folder(self, *args: Any, **kwargs: Any) -> None:
            calls.append(("upload_folder", args, kwargs))

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    code, out = push(seeded, tmp_path)
    assert code == 0 and "https://huggingface.co/spaces/alice/bench" in out
    assert calls[0] == ("init", ("hf_test",), {})
    assert calls[1][1] == ("alice/bench",) and calls[1][2]["repo_type"] == "space"
    assert calls[1][2]["space_sdk"] == "docker"
    upload = calls[2][2]
    assert upload["repo_id"] == "alice/bench" and upload["repo_type"] == "space"
    assert Path(upload["folder_path"]) == tmp_path / "space"


def test_a_failed_upload_is_one_line(seeded: Seeded, data_dir: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub

    class Offline:
        def __init__(self, token: str) -> None:
            pass

        def create_repo(self, *args: Any, **kwargs: Any) -> None:
            raise ConnectionError("no route to host\nsecond line")

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    code, _ = push(seeded, tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "alice/bench failed: no route to host second line" in err
