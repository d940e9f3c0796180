"""python -m bench [NAME ...] [--quick] [--out DIR] [--markdown FILE]: run benchmarks, print tables, write JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import inference, prepare, quality, training
from bench.common import format_table, write_result
from melanoma.config import atomic_write_text

BENCHMARKS = {"prepare": prepare.run, "training": training.run, "inference": inference.run, "quality": quality.run}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split(":")[1].strip())
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], help="default: all, in this order")
    parser.add_argument("--quick", action="store_true", help="small sizes, a couple of repeats (CI, < 3 minutes)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="where the JSON results go")
    parser.add_argument("--markdown", type=Path, help="then write every result in --out as Markdown (docs)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for MFU (else a known-GPU table)")
    args = parser.parse_args()
    command = "python -m bench " + " ".join(sys.argv[1:])
    for name in args.names or list(BENCHMARKS):
        started = time.perf_counter()
        options = {"peak_tflops": args.peak_tflops} if name == "training" else {}
        result = BENCHMARKS[name](quick=args.quick, **options)
        seconds = time.perf_counter() - started
        result |= {"seconds": round(seconds), "command": command.strip(), "finished": time.strftime("%Y-%m-%d %H:%M")}
        if result["rows"]:
            print(f"\n{result['title']}\n{format_table(result['rows'])}")
        print(f"({result['note']}; {seconds:.0f} s; {write_result(args.out, name, result)})", flush=True)
    if args.markdown:
        atomic_write_text(args.markdown, markdown(args.out))
        print(f"wrote {args.markdown}")


def markdown(results: Path) -> str:
    """Every saved result as a section: its table, its note, and the machine, date and command that gave it."""
    intro = ("Written by `python -m bench --markdown docs/benchmarks.md` from the JSON results in bench/results; each"
             " section names the run that produced it. Ratios are measured within one run.")  # fmt: skip
    lines = ["# Benchmarks", "", intro, ""]
    for name in BENCHMARKS:
        path = results / f"{name}.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        machine = result["machine"]
        lines += [f"## {result['title']}", ""]
        lines += [format_table(result["rows"]) if result["rows"] else "(no rows)", "", result["note"] + ".", ""]
        lines += [f"`{result['command']}` on {machine['processor']}, {machine['cpu_cores']} cores"
                  f"{', ' + machine['gpu'] if machine['gpu'] else ''}, torch {machine['torch']}, "
                  f"{result['finished']}, {result['seconds']} s.", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
