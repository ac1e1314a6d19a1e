"""`make stress`: run every slow reliability script of issue 7 one after another, each in its own process, and
print one summary line per script (results in runs/stress/*.json). Exit code 1 when any script fails.

    python -m tests.stress.run            # full size: `mllm.load("default")` under load, 5 SIGKILLs
    python -m tests.stress.run --quick    # the tiny model and reduced sizes, a few minutes
    python -m tests.stress.run --only api_load gradio_load
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from tests.stress.common import REPO, RESULTS, child_env

SCRIPTS = ("api_load", "gradio_load", "train_kill")


def summary(name: str, result: dict) -> str:
    """One line of numbers per script."""
    if name == "train_kill":
        kills = result["events"]
        return (
            f"{sum(e['killed'] for e in kills)}/{len(kills)} SIGKILLs over {result['steps']} steps, every "
            f"resume from the newest complete checkpoint: {all(e['ok'] for e in kills)}, final weights max "
            f"|diff| {result['max_abs_weight_diff']:.1e}"
        )
    refused = result.get("refused") or {}
    return (
        f"{result['clients']} clients, {result['answered']}/{result['requests']} answered"
        + (f" ({', '.join(f'{n} x {c}' for c, n in refused.items())} refusals retried)" if refused else "")
        + f", {len(result['conversations_mismatched'])} mismatched conversations, {len(result['failures'])} "
        f"failures, {result['concurrent_s']} s; RSS idle {result['rss_idle_mb']} MB, peak {result['rss_peak_mb']}"
        f" MB, after {result['rss_after_mb']} MB ({result['rss_after_vs_idle']:+.1%})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, reduced sizes")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    args = parser.parse_args(argv)
    failed = []
    for name in args.only:
        start = time.monotonic()
        command = [sys.executable, "-m", f"tests.stress.{name}", *(["--quick"] if args.quick else [])]
        print(f"== {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        code = subprocess.run(command, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL).returncode
        path = RESULTS / f"{name}{'_quick' if args.quick else ''}.json"
        elapsed = time.monotonic() - start
        if not path.is_file() or path.stat().st_mtime < time.time() - elapsed - 1:
            print(f"{name}: FAILED (exit {code}, no result written)", flush=True)
            failed.append(name)
            continue
        result = json.loads(path.read_text())
        status = "ok" if result["ok"] and code == 0 else "FAILED"
        print(f"{name}: {status} in {elapsed:.0f} s: {summary(name, result)}", flush=True)
        if status != "ok":
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
