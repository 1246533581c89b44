"""An import path with only streamlit, plotly, pandas and what they need: a stand-in for the Space's image."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

SPACE_PACKAGES = ("streamlit", "plotly", "pandas")


def _name(requirement: str) -> str:
    return re.split(r"[ ;<>=!~\[(]", requirement.strip(), maxsplit=1)[0]


def closure(roots: tuple[str, ...] = SPACE_PACKAGES) -> list[metadata.Distribution]:
    """The distributions the roots need, following required (not optional-extra) dependencies."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an environment marker excluded it here (e.g. a Windows-only package)
        seen[key] = dist
        for req in dist.requires or []:
            if "extra ==" in req or "extra==" in req:
                continue
            todo.append(_name(req))
    return list(seen.values())


def site_of_symlinks(target: Path, roots: tuple[str, ...] = SPACE_PACKAGES) -> list[str]:
    """Fill `target` with links to the closure's top-level packages and metadata; returns the linked names."""
    target.mkdir(parents=True, exist_ok=True)
    linked: list[str] = []
    for dist in closure(roots):
        base = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops):
            source = base / top
            if top.endswith(".pth") or top == "__pycache__" or not source.exists() or (target / top).exists():
                continue
            (target / top).symlink_to(source)
            linked.append(top)
    return linked
