"""The project as pip installs it: the wheel carries the engine, storage, the report template and the migrations
(and nothing of the dashboard or the tests), and the installed copy runs on its own, outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a build reads; pages/, tests/, app.py and benchmarks/ go along so that the test sees them left out
SOURCES = ("pyproject.toml", "README.md", "requirements.txt", "app.py", "engine", "storage", "pages", "tests",
           "benchmarks")
PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input")


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the checkout: setuptools writes build/ and *.egg-info beside the
    sources, and a build/ left from an earlier build can carry deleted modules into the next wheel."""
    pytest.importorskip("setuptools", minversion="69", reason="building the wheel offline needs setuptools>=69")
    tmp = tmp_path_factory.mktemp("package")
    source = tmp / "source"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "results"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    _run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", ".", "-w", str(tmp / "dist")], source)
    (built,) = (tmp / "dist").glob("paretoscope-*.whl")
    return built


@pytest.fixture(scope="module")
def site(wheel: Path) -> Path:
    target = wheel.parent.parent / "site"
    _run([*PIP, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], wheel.parent)
    return target


def _installed_env(site: Path, data: Path) -> dict[str, str]:
    """A shell with only the installed copy on the path (the checkout's editable install comes after it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PARETOSCOPE_DATABASE_URL")}
    return {**env, "PYTHONPATH": str(site), "PARETOSCOPE_DATA_DIR": str(data)}


@pytest.mark.slow
def test_the_wheel_holds_the_engine_storage_template_and_migrations_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(info).decode()
    versions = {f"storage/migrations/versions/{p.name}" for p in (ROOT / "storage/migrations/versions").glob("*.py")}
    assert versions, "no migrations in the checkout"
    wanted = {"engine/__main__.py", "engine/report/templates/space_app.py", "storage/migrations/env.py",
              "storage/migrations/script.py.mako", *versions}
    assert wanted <= names, f"missing from the wheel: {sorted(wanted - names)}"
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"engine", "storage"}, sorted(tops)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert "[console_scripts]" in entry_points and "paretoscope = engine.__main__:main" in entry_points


@pytest.mark.slow
def test_the_installed_copy_runs_and_creates_its_database_outside_the_checkout(site: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _installed_env(site, tmp_path / "data")
    probe = (
        "import json, engine, storage.db as db\n"
        "from sqlalchemy import inspect, text\n"
        "with db.session() as s:\n"
        "    tables = inspect(s.connection()).get_table_names()\n"
        "    version = s.execute(text('SELECT version_num FROM alembic_version')).scalar_one()\n"
        "print(json.dumps({'engine': engine.__file__, 'migrations': str(db.MIGRATIONS), 'tables': tables,"
        " 'version': version}))\n"
    )
    found = json.loads(_run([sys.executable, "-c", probe], elsewhere, env).stdout)
    assert Path(found["engine"]).is_relative_to(site) and Path(found["migrations"]).is_relative_to(site)
    assert {"studies", "jobs", "results", "models"} <= set(found["tables"])
    newest = max(p.name for p in (site / "storage/migrations/versions").glob("*.py"))
    assert newest.startswith(found["version"]), (newest, found["version"])  # upgraded to the newest migration
    assert (tmp_path / "data" / "paretoscope.db").is_file()

    runtimes = _run([sys.executable, "-m", "engine", "runtimes"], elsewhere, env).stdout
    assert "onnxruntime" in runtimes and "available" in runtimes


def test_the_paretoscope_command_is_python_m_engine(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "paretoscope"
    if not script.is_file():
        pytest.skip(f"{script} is not installed: `make install` (pip install -e .) makes it")
    listed = _run([str(script), "runtimes"], tmp_path).stdout
    assert listed == _run([sys.executable, "-m", "engine", "runtimes"], tmp_path).stdout
