"""Source files Paretoscope copies into what it hands out (a deployment bundle, a Hugging Face Space): they run
where Paretoscope is not installed, so they may import only the standard library and what that place installs."""

from __future__ import annotations

import ast
import sys
from collections.abc import Collection


def foreign_imports(source: str, importable: Collection[str]) -> list[str]:
    """The top-level packages `source` imports that are neither `importable` nor the standard library, in order."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots = [node.module.split(".")[0]]
        else:
            continue
        found += [root for root in roots if root not in importable and root not in sys.stdlib_module_names
                  and root != "__future__" and root not in found]
    return found
