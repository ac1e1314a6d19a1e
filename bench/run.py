"""`make bench`: run every benchmark, each against a reference measured in the same run, and write
bench/RESULTS.md and bench/results.json. `--quick` uses the tiny random model instead of the default assistant."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from bench import bench_decode, bench_memory, bench_vqa
from bench.common import machine, write_results

TINY = "configs/model/tiny-test.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny random model, fewer questions")
    parser.add_argument(
        "--model", default=None, help="model to measure (default: 'default', or tiny with --quick)"
    )
    parser.add_argument("--only", nargs="*", default=None, help="decode, vqa, memory, train")
    args = parser.parse_args(argv)
    spec = args.model or (TINY if args.quick else "default")
    questions = 32 if args.quick else 256
    benches: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "decode": lambda: bench_decode.run(spec, new_tokens=32 if args.quick else 128),
        "vqa": lambda: bench_vqa.run(spec, count=questions),
        "memory": lambda: bench_memory.run(spec),
    }
    try:
        from bench import bench_train

        benches["train"] = lambda: bench_train.run(quick=args.quick)
    except ImportError as exc:
        print(f"training benchmark unavailable: {exc}", file=sys.stderr)
    results: dict[str, Any] = {"machine": machine(), "model": spec, "sections": []}
    for name, bench in benches.items():
        if args.only and name not in args.only:
            continue
        start = time.time()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        sections = bench()
        results["sections"].extend(sections)
        for section in sections:
            print(section["title"], *section["rows"], sep="\n  ", file=sys.stderr)
        print(f"[bench] {name} took {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    command = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    write_results(results, [command.strip()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
