"""Read the tables of an HTML report back (standard library parser): what a reader of the file sees."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Cell:
    column: str | None
    text: str
    value: str | None  # data-value: the full number behind the shown text


@dataclass
class Row:
    cell: int | None
    classes: str
    cells: list[Cell] = field(default_factory=list)

    def by_column(self) -> dict[str, Cell]:
        return {c.column: c for c in self.cells if c.column}

    def texts(self) -> list[str]:
        return [c.text for c in self.cells]


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[Row]] = {}
        self.scripts: list[dict[str, str | None]] = []
        self.tags: set[str] = set()
        self._table: str | None = None
        self._row: Row | None = None
        self._cell: Cell | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "script":
            self.scripts.append(a)
        elif tag == "table":
            self._table = a.get("id") or f"table-{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            cell = a.get("data-cell")
            self._row = Row(int(cell) if cell else None, a.get("class") or "")
        elif tag in ("td", "th") and self._row is not None:
            self._cell = Cell(a.get("data-col"), "", a.get("data-value"))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.cells.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.text += data


def parse(html: str) -> _Parser:
    parser = _Parser()
    parser.feed(html)
    return parser
