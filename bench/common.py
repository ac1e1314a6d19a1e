"""Benchmark plumbing: alternate candidate and reference runs, take medians, describe the machine, write
bench/RESULTS.md and bench/results.json. Every figure is reported as a ratio against a reference measured in
the same run."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent


def status_mb(field: str, pid: int | str = "self") -> float:
    """A memory field of /proc/PID/status (VmRSS, VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


@dataclass
class Comparison:
    """Median seconds of a candidate and a reference, measured alternately."""

    name: str
    candidate: list[float] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)

    @property
    def candidate_s(self) -> float:
        return statistics.median(self.candidate)

    @property
    def reference_s(self) -> float:
        return statistics.median(self.reference)

    @property
    def speedup(self) -> float:
        """How many times faster the candidate is (reference time / candidate time)."""
        return self.reference_s / self.candidate_s


def alternate(
    name: str,
    candidate: Callable[[], Any],
    reference: Callable[[], Any],
    repeats: int = 3,
    warmup: int = 1,
    between: Callable[[], Any] | None = None,
) -> Comparison:
    """Time `candidate` and `reference` in alternation (ABAB...), after `warmup` untimed runs of each; `between`
    runs untimed after each pair (a measurement to be taken under the same conditions as the timed runs)."""
    for _ in range(warmup):
        candidate()
        reference()
    result = Comparison(name)
    for _ in range(repeats):
        for fn, bucket in ((candidate, result.candidate), (reference, result.reference)):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
        if between is not None:
            between()
    return result


def timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Median seconds over `repeats` runs and the last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def machine() -> dict[str, Any]:
    """CPU, cores, memory and library versions of this run."""
    import torch
    import transformers

    cpu = platform.processor()
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH_DIR
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": commit,
        "load_average": os.getloadavg()[0],
    }


def write_results(results: dict[str, Any], commands: list[str]) -> None:
    """bench/results.json (everything) and bench/RESULTS.md (a table per section)."""
    (BENCH_DIR / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    info = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores, {info['memory_gb']} GB), "
        f"Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, "
        f"commit {info['commit']}, load average at start {info['load_average']:.1f}.",
        "",
        "Every figure is a ratio against a reference measured in the same run (alternating runs, median of "
        "the repeats).",
        "",
        "Commands:",
        "",
        *[f"    {c}" for c in commands],
        "",
    ]
    for section in results["sections"]:
        lines += [f"## {section['title']}", "", section.get("note", ""), ""]
        header = list(section["rows"][0].keys())
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in section["rows"]:
            lines.append("| " + " | ".join(_fmt(row[h]) for h in header) + " |")
        lines.append("")
    (BENCH_DIR / "RESULTS.md").write_text("\n".join(lines))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
