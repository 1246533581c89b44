"""What an AppTest run shows, element by element in page order. It imports only streamlit, so the Space probe loads
this file where nothing else exists (tests/report/spaces.py)."""

from __future__ import annotations

from typing import Any

from streamlit.testing.v1.element_tree import Block

# the kinds of element the ship panel draws after its heading (engine/report/ship.py)
PANEL_KINDS = ("number_input", "selectbox", "success", "warning")


def shown_elements(at: Any) -> list[list[Any]]:
    """Each element of the main area as [kind, its texts...], JSON-ready so that a probe can print it."""
    out: list[list[Any]] = []
    for node in at.main:
        if isinstance(node, Block):  # columns and containers: their elements follow in page order
            continue
        kind = node.type
        if kind in ("success", "warning", "info", "error"):
            out.append([kind, node.value, node.icon])
        elif kind in ("title", "header", "subheader", "markdown", "caption"):
            out.append([kind, node.value])
        elif kind == "number_input":
            out.append([kind, node.label, node.value])
        elif kind == "selectbox":
            out.append([kind, node.label, list(node.options), str(node.value)])
        else:
            out.append([kind])
    return out


def panel(elements: list[list[Any]], title: str) -> list[list[Any]]:
    """The ship panel among shown_elements: its heading, then its inputs and recommendation up to the first element
    of another kind."""
    start = elements.index(["subheader", title])
    end = start + 1
    while end < len(elements) and elements[end][0] in PANEL_KINDS:
        end += 1
    return elements[start:end]
