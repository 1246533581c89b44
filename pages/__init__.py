"""Dashboard pages. PAGES is the one page list: app.py navigates over it and the tests visit it."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent

# (file, title, icon); the first page is the default
PAGES: list[tuple[str, str, str]] = [
    ("home.py", "Home", ":material/home:"),
    ("models.py", "Models", ":material/deployed_code:"),
    ("benchmark.py", "Benchmark", ":material/speed:"),
    ("results.py", "Results", ":material/insights:"),
    ("compare.py", "Compare", ":material/compare_arrows:"),
    ("serving.py", "Serving", ":material/dns:"),
    ("system.py", "System", ":material/memory:"),
]
