"""Result tables on the terminal (rich when present, plain text otherwise)."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def print_rows(rows: List[Dict], columns: Sequence[str], title: str = "") -> None:
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # Everything is Text, never markup: a path like "p[/x]" in a title or a cell is printed as it is (as
        # markup it raised after a successful install, turning its exit code into 1).
        t = Table(title=Text(title))
        for c in columns:
            t.add_column(Text(c))
        for r in rows:
            t.add_row(*[Text(_fmt(r.get(c, ""))) for c in columns])
        Console(width=160).print(t)
    except ImportError:  # pragma: no cover
        print(title)
        print(" | ".join(columns))
        for r in rows:
            print(" | ".join(_fmt(r.get(c, "")) for c in columns))


def print_kv(d: Dict, title: str = "") -> None:
    print_rows([{"key": k, "value": v} for k, v in d.items() if not isinstance(v, (list, dict))],
               ["key", "value"], title)
