"""Timing, tables and JSON results shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from melanoma.config import atomic_write_text

# The real data (../shared/data beside the checkout); benchmarks that need it skip without it.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def median_seconds(run: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `run` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        run()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": str(torch.__version__),
    }


def _cpu_name() -> str:
    """The CPU's model name (platform.processor() is empty on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def format_table(rows: list[dict[str, object]]) -> str:
    """A plain aligned Markdown table: what a terminal, a CI log and docs/benchmarks.md all show well."""
    columns = list(dict.fromkeys(column for row in rows for column in row))
    cells = [[_format(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines)


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None else str(value)


def write_result(out: Path, name: str, result: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    atomic_write_text(path, json.dumps({"machine": machine(), **result}, indent=2))
    return path
