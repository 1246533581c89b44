"""Write a bundle: the target's folder (new, empty or a previous bundle, whose files it replaces) or its zip."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from engine.deploy import fastapi_bundle, generative, generative_cells, hf_endpoint, triton
from engine.deploy.bundle import MANIFEST, TARGETS, DeployCell, load_deploy_cell
from engine.errors import UserError
from engine.safezip import zip_folder

Writer = Callable[[DeployCell, Path], list[str]]  # lays out the bundle in an empty folder; returns notes to print


WRITERS: dict[str, Writer] = {"fastapi": fastapi_bundle.write, "triton": triton.write, "hf-endpoint": hf_endpoint.write}


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise UserError(f"unknown deploy target '{target}'; use one of {', '.join(TARGETS)}")


FILES_KEY = "files"  # in bundle.json: the files the bundle wrote, so a redeploy replaces those and no other


def writer(deployed: DeployCell, target: str) -> Writer:
    """The target's writer; a generation cell's is the generative FastAPI bundle (the one target that streams)."""
    if not generative_cells.is_generation_cell(deployed.cell):
        return WRITERS[target]
    if target != "fastapi":
        raise UserError(f"{deployed.label} is a generation cell: its bundle is the streaming OpenAI-compatible "
                        "server and chat, --target fastapi")
    return generative.write


def _check_out(out: Path) -> list[str]:
    """An absent or empty folder, or a previous bundle (its bundle.json says so); returns the files that bundle
    wrote, which a new one replaces (none listed by a bundle older than the list: only its own files are replaced)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give --out a new or empty folder")
    if not out.is_dir() or not any(out.iterdir()):
        return []
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        previous = manifest.get("paretoscope_bundle")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous is None:
        raise UserError(f"{out} is not empty and holds no Paretoscope bundle; give --out a new or empty folder")
    files = manifest.get(FILES_KEY)
    return [str(f) for f in files] if isinstance(files, list) else []


def _replace(out: Path, staging: Path, previous: list[str]) -> None:
    """The staged bundle's files moved into `out`, then the previous bundle's files it does not write removed;
    whatever else `out` holds (a Hub repository's .git, the user's own files) stays."""
    root = out.resolve()
    written = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    for name in written:
        dest = out / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        (staging / name).replace(dest)
    for name in set(previous) - set(written):
        stale = out / name
        # a listed name can only be a file the bundle wrote inside `out`: never follow one out of it
        if root not in stale.resolve().parents or not (stale.is_file() or stale.is_symlink()):
            continue
        stale.unlink()
        for parent in stale.parents:
            if parent == out or any(parent.iterdir()):
                break
            parent.rmdir()


def write_bundle(deployed: DeployCell, target: str, out: Path) -> list[str]:
    """Lay the bundle out in `out` (new, empty, or a previous bundle, whose files it replaces, keeping any other);
    returns notes to show."""
    check_target(target)
    out = Path(out)
    previous = _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    try:
        notes = writer(deployed, target)(deployed, staging)
        _list_files(staging)
        if out.exists():
            _replace(out, staging, previous)
        else:
            staging.rename(out)
    except OSError as exc:
        raise UserError(f"cannot write the bundle to {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return notes


def _list_files(staging: Path) -> None:
    manifest_path = staging / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest[FILES_KEY] = sorted([p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()])
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def bundle_zip(study_id: int, cell: int | None, target: str) -> bytes:
    """The bundle of a stored study's cell (None: the recommended one) as zip bytes, for a download button."""
    check_target(target)
    deployed = load_deploy_cell(study_id, cell)
    with tempfile.TemporaryDirectory(prefix="paretoscope-bundle-") as tmp:
        folder = Path(tmp) / "bundle"
        folder.mkdir()
        writer(deployed, target)(deployed, folder)
        return zip_folder(folder, bundle_name(deployed, target))


def bundle_name(deployed: DeployCell, target: str) -> str:
    """paretoscope-study-3-cell-5-fastapi: the folder name inside a bundle's zip."""
    return f"paretoscope-study-{deployed.study_id}-cell-{deployed.cell.cell}-{target}"


