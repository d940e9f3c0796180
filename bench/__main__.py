"""python -m bench [prepare|training ...] [--quick] [--out DIR]: run benchmarks, print tables, write JSON."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench import prepare, training
from bench.common import print_table, write_result

BENCHMARKS = {"prepare": prepare.run, "training": training.run}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split(":")[1].strip())
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], help="default: all")
    parser.add_argument("--quick", action="store_true", help="small sizes, a couple of repeats (CI, < 3 minutes)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="where the JSON results go")
    args = parser.parse_args()
    for name in args.names or list(BENCHMARKS):
        started = time.perf_counter()
        result = BENCHMARKS[name](quick=args.quick)
        print_table(result["title"], result["rows"])
        print(f"({result['note']}; {time.perf_counter() - started:.0f} s; {write_result(args.out, name, result)})")


if __name__ == "__main__":
    main()
