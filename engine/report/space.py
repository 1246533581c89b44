"""A study as a Hugging Face Space (Docker SDK): a read-only Streamlit viewer, its results data, and a zip.

The Space holds only its own folder, so the viewer's chart, Pareto, table and ship-panel code is copied from this
package's modules (one source), with their imports checked: nothing from Paretoscope, nothing heavy.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import unicodedata
from html import escape
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.safezip import zip_folder
from engine.standalone import foreign_imports
from engine.results import Status

HERE = Path(__file__).resolve().parent
VIEWER_MODULES = ("results", "pareto", "charts", "tables", "ship")
# where each bundled module's source lives: the report's modules, and the typed results record they read
_SOURCES = {"results": HERE.parent / "results.py"}
APP_TEMPLATE = HERE / "templates" / "space_app.py"
# The Space installs these and nothing else; its code may import them and the standard library.
REQUIREMENTS = ("streamlit", "plotly", "pandas")
_IMPORTABLE = {"streamlit", "plotly", "pandas", "numpy", "viewer"}
PORT = 8501
EMOJI = "📊"
COLOR_FROM, COLOR_TO = "indigo", "blue"  # from the Hub's list: red yellow green blue indigo purple pink gray
SHORT_DESCRIPTION_MAX = 60  # the Hub rejects longer ones


def _check_imports(source: str, name: str) -> None:
    """Fail loudly if bundled code would need anything the Space does not install."""
    foreign = foreign_imports(source, _IMPORTABLE)
    if foreign:
        raise RuntimeError(f"{name} imports {foreign[0]}, which the Space does not have")


def viewer_source(module: str) -> str:
    """engine/report/<module>.py (or engine/results.py) with its `engine.report` and `engine.results` imports
    pointed at the bundle's `viewer` package."""
    source = _SOURCES.get(module, HERE / f"{module}.py").read_text(encoding="utf-8")
    source = re.sub(r"^(\s*from\s+)engine\.results\b", r"\1viewer.results", source, flags=re.MULTILINE)
    source = re.sub(r"^(\s*from\s+)engine\.report\b", r"\1viewer", source, flags=re.MULTILINE)
    _check_imports(source, f"viewer/{module}.py")
    return source


def _plain(text: Any) -> str:
    """One line of visible text: control, format and line-separator characters become spaces."""
    chars = [" " if unicodedata.category(c)[0] in "CZ" and c != " " else c for c in str(text)]
    return " ".join("".join(chars).split())


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def yaml_string(text: Any) -> str:
    """A YAML double-quoted scalar holding the text verbatim (after _plain: no control characters)."""
    return '"' + _plain(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _markdown(text: Any) -> str:
    """User text inside Markdown: its punctuation shown literally, angle brackets and ampersands as entities."""
    return escape(re.sub(r"([\\`*_{}\[\]()#+\-.!|~])", r"\\\1", _plain(text)), quote=False)


def front_matter(report: dict[str, Any]) -> dict[str, Any]:
    study = report["study"]
    return {
        "title": _clip(_plain(f"Paretoscope: {study['name']}"), 60),
        "emoji": EMOJI, "colorFrom": COLOR_FROM, "colorTo": COLOR_TO, "sdk": "docker", "app_port": PORT,
        "pinned": False,
        "short_description": _clip(_plain(f"Speed vs accuracy of {study['model']['name']}"), SHORT_DESCRIPTION_MAX),
    }


def readme(report: dict[str, Any]) -> str:
    lines = ["---"]
    for key, value in front_matter(report).items():
        if isinstance(value, bool):
            lines.append(f"{key}: {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"{key}: {value}")
        else:
            lines.append(f"{key}: {yaml_string(value)}")
    study = report["study"]
    ok = sum(r["status"] == Status.OK for r in report["results"])
    lines += [
        "---", "",
        f"# {_markdown(study['name'])}", "",
        f"Benchmark results of the model {_markdown(study['model']['name'])}: {len(report['results'])} cells "
        f"(variant × runtime × batch size), {ok} measured, made with Paretoscope. This Space only shows them: "
        "a table with filters (speedups with their 95% intervals where measured), the Pareto frontier of speed "
        "against accuracy with a recommendation, and the latency, speedup, memory and throughput charts.", "",
        "- `data/results.json`: the results JSON with the raw latency samples of every cell",
        "- `data/results.csv`: one row per cell with every measured field (a speedup's interval as `speedup_low` "
        "and `speedup_high`)",
        "- `app.py` and `viewer/`: the Streamlit viewer (streamlit, plotly and pandas only)", "",
        "Run it locally: `pip install -r requirements.txt && streamlit run app.py`.", "",
    ]
    return "\n".join(lines)


def dockerfile() -> str:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"""FROM python:{python}-slim

# Spaces run the container as uid 1000
RUN useradd --create-home --uid 1000 user
USER user
ENV HOME=/home/user PATH=/home/user/.local/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /home/user/app

COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --user -r requirements.txt
COPY --chown=user . .

EXPOSE {PORT}
CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port={PORT}", "--server.headless=true", \\
     "--browser.gatherUsageStats=false", "--client.toolbarMode=viewer"]
"""


def requirements() -> str:
    """The three packages, at least at the versions this report was made and tested with."""
    lines = []
    for name in REQUIREMENTS:
        try:
            major, minor = metadata.version(name).split(".")[:2]
            lines.append(f"{name}>={major}.{int(minor)},<{int(major) + 1}")
        except (metadata.PackageNotFoundError, ValueError):
            lines.append(name)
    return "\n".join(lines) + "\n"


def _files(report: dict[str, Any]) -> dict[str, str]:
    from engine.report import tables

    data = tables.shareable(report)
    app = APP_TEMPLATE.read_text(encoding="utf-8")
    _check_imports(app, "app.py")
    files = {
        "README.md": readme(report), "Dockerfile": dockerfile(), "requirements.txt": requirements(), "app.py": app,
        "viewer/__init__.py": '"""Copies of Paretoscope\'s report code (engine/report, engine/results.py)."""\n',
        "data/results.json": json.dumps(data, indent=1),
        "data/results.csv": tables.csv_text(data),
    }
    for module in VIEWER_MODULES:
        files[f"viewer/{module}.py"] = viewer_source(module)
    return files


def _looks_like_space(folder: Path) -> bool:
    return (folder / "Dockerfile").is_file() and (folder / "data" / "results.json").is_file()


def write_space(report: dict[str, Any], folder: Path) -> Path:
    """Write the Space folder and a zip of it beside it (FOLDER.zip); returns the zip's path.

    An existing folder is replaced only when it is an earlier Space bundle: never someone's other files.
    """
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise UserError(f"{folder} is a file; give a folder path for the Space")
        if any(folder.iterdir()):
            if not _looks_like_space(folder):
                raise UserError(f"{folder} exists and is not an earlier Space bundle; choose a new folder")
            shutil.rmtree(folder)
    files = _files(report)
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    archive = folder.with_name(folder.name + ".zip")
    archive.write_bytes(zip_folder(folder, folder.name))
    return archive




def space_zip(report: dict[str, Any], name: str) -> bytes:
    """The zipped Space folder, for a download button."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        write_space(report, folder)
        return (Path(tmp) / f"{name}.zip").read_bytes()


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def check_repo_id(repo_id: str) -> None:
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise UserError(f"--push '{repo_id}' is not a Space id; write it as OWNER/NAME, e.g. alice/my-benchmark")


def push_space(folder: Path, repo_id: str) -> str:
    """Create (or update) the Space REPO_ID from the folder; returns its URL."""
    check_repo_id(repo_id)
    try:
        from huggingface_hub import HfApi, errors, get_token
    except ImportError:
        raise UserError("--push needs the huggingface_hub package: pip install huggingface_hub") from None
    token = get_token()
    if not token:
        raise UserError("--push needs a Hugging Face token with write access: run `hf auth login` or set HF_TOKEN")
    # the transport's base error (connection refused, timeouts) where this version exposes it
    failures = (getattr(errors, "HTTPError", errors.HfHubHTTPError), OSError)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="space", space_sdk="docker", exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="space",
                          commit_message="Paretoscope results")
    except failures as exc:
        message = " ".join(str(exc).split())
        raise UserError(f"uploading to the Space {repo_id} failed: {message}") from exc
    return f"https://huggingface.co/spaces/{repo_id}"
