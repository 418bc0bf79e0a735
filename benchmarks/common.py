"""What the model benchmarks share: the command-line options and the JSON output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def preset_parser(doc: str, name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path(f"benchmarks/results/{name}.json"))
    return parser


def write_rows(rows: list[dict[str, Any]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")
