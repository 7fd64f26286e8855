"""Writing a benchmark's figures: one JSON file under ``benchmarks/results/``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["write_results"]


def write_results(path: Path, results: dict[str, Any], *, indent: int = 1) -> None:
    """Write `results` as JSON to `path` (creating its folder) and say where.

    Parameters
    ----------
    path : Path
        The results file.
    results : dict
        JSON-serialisable figures; numpy scalars are written as floats.
    indent : int, default 1
        JSON indentation.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=indent, ensure_ascii=False, default=float)
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path}")
