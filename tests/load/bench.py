"""``make bench``: every benchmark, one table, one JSON file.

Each ``tests/load/bench_*.py`` module has ``run() -> dict``: a flat mapping of
metric name to value (numbers, or short strings), optionally nested one level
by scenario. Results are printed as a table and saved as
``bench-results/bench-<UTC time>.json`` with the machine's description, so runs
can be compared. ``python -m tests.load.bench NAME…`` runs only those modules.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

LOAD_DIR = Path(__file__).resolve().parent
RESULTS_DIR = LOAD_DIR.parent.parent / "bench-results"


def flatten(result: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(flatten(value, f"{name}."))
        else:
            rows.append((name, value))
    return rows


def render(results: dict[str, dict[str, Any]]) -> str:
    rows = [("BENCHMARK", "METRIC", "VALUE")]
    for bench, result in results.items():
        for metric, value in flatten(result):
            shown = f"{value:,.2f}" if isinstance(value, float) else str(value)
            rows.append((bench, metric, shown))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2].rjust(widths[2])}" for row in rows
    )


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem.removeprefix("bench_") for p in LOAD_DIR.glob("bench_*.py"))
    results: dict[str, dict[str, Any]] = {}
    failed = False
    for name in names:
        module = importlib.import_module(f"tests.load.bench_{name}")
        print(f"== {name}", flush=True)
        started = time.monotonic()
        try:
            results[name] = module.run()
        except Exception as error:  # one failing benchmark must not hide the others
            traceback.print_exc()
            results[name] = {"error": f"{type(error).__name__}: {error}"}
            failed = True
        results[name]["wall_seconds"] = round(time.monotonic() - started, 1)
    print()
    print(render(results))
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = RESULTS_DIR / f"bench-{stamp}.json"
    machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()}
    out.write_text(json.dumps({"time": stamp, "machine": machine, "results": results}, indent=2))
    print(f"\nsaved {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
