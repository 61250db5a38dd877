"""Plain-text (markdown) tables and the JSON results file of a benchmark run."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.measure import MB, BenchError

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table with columns padded to their widest cell."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    return "" if value is None else str(value)


def mb(nbytes: float) -> float:
    return nbytes / MB


def machine() -> dict[str, Any]:
    """Where the numbers were taken."""
    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "loadavg_1_5_15_at_end": os.getloadavg()}  # other work on the machine skews the times


def write_results(name: str, payload: dict[str, Any], text: str, results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``<name>.json`` (payload plus machine) and ``<name>.md`` (the printed tables); the JSON's path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n", encoding="utf-8")
    (results_dir / f"{name}.md").write_text(text + "\n", encoding="utf-8")
    return path


def say(message: str) -> None:
    """Progress of a benchmark, on stderr (the table goes to stdout)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def compile_quantjob() -> None:
    """Byte-compile quantjob's own modules where they are imported from (``__pycache__`` beside
    them), as ``pip install`` does for the wheel the images hold.

    An editable install never gets them written under ``PYTHONDONTWRITEBYTECODE=1`` (this VM sets
    it), and every measured process, each rank and the launcher, then compiles the ~60 modules it
    imports again (about 0.2 s each): a cost of the development checkout, not of quantjob."""
    import compileall

    import quantjob

    before = time.perf_counter()
    root = Path(quantjob.__file__).resolve().parent
    compileall.compile_dir(str(root), quiet=1)
    say(f"quantjob's modules byte-compiled ({time.perf_counter() - before:.1f} s)")


def run_bench(name: str, job: Callable[[Path], tuple[str, dict[str, Any]]], *, keep_logs: bool,
              results_dir: Path) -> int:
    """Run ``job(work_dir) -> (table text, JSON payload)``, print the table and write the results;
    quantjob is byte-compiled first (``compile_quantjob``)."""
    compile_quantjob()
    work = Path(tempfile.mkdtemp(prefix=f"quantjob-bench-{name}-"))
    try:
        text, payload = job(work)
    except BenchError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        print(f"bench: logs kept in {work}", file=sys.stderr)
        return 1
    if keep_logs:
        say(f"logs in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(text)
    path = write_results(name, payload, text, results_dir)
    say(f"results written to {path}")
    return 0
