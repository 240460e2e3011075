"""Benchmark runner: times ours and the peer alternately, writes JSON and a markdown table.

A benchmark module ``bench/cases/<name>.py`` defines ``cases() -> list[Case]``. Each case holds two
zero-argument callables doing the same work. The runner warms both up, then alternates them
``repeats`` times (ours, peer, ours, peer, ...) so that drift of the machine hits both alike, and
reports medians. ``ratio = peer_s / ours_s``: above 1 means latentsurgeon is faster (for an
overhead benchmark whose peer is the bare model, it is the relative throughput).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentsurgeon._io import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
TABLE = ROOT.parent / "docs" / "benchmarks.md"


@dataclass
class Case:
    name: str
    ours: Callable[[], Any]
    peer: Callable[[], Any]
    peer_name: str
    description: str = ""
    goal: str = ""
    agreement: Callable[[Any, Any], Any] | None = None  # compares ours() and peer() outputs


def available() -> list[str]:
    return sorted(p.stem for p in (ROOT / "cases").glob("*.py") if not p.stem.startswith("_"))


def time_case(case: Case, repeats: int = 7, warmup: int = 1) -> dict[str, Any]:
    for _ in range(warmup):
        case.ours()
        case.peer()
    ours_t, peer_t = [], []
    ours_out = peer_out = None
    for repeat in range(repeats):
        # Alternate which one goes first, so that drift and allocator state hit both alike.
        order = ("ours", "peer") if repeat % 2 == 0 else ("peer", "ours")
        for who in order:
            start = time.perf_counter()
            if who == "ours":
                ours_out = case.ours()
                ours_t.append(time.perf_counter() - start)
            else:
                peer_out = case.peer()
                peer_t.append(time.perf_counter() - start)
    ours_s, peer_s = statistics.median(ours_t), statistics.median(peer_t)
    agreement = case.agreement(ours_out, peer_out) if case.agreement else None
    return {
        "name": case.name,
        "ours_s": ours_s,
        "peer": case.peer_name,
        "peer_s": peer_s,
        "ratio": peer_s / ours_s if ours_s > 0 else float("inf"),
        "agreement": agreement,
        "description": case.description,
        "goal": case.goal,
        "repeats": repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads "
                   f"{_torch_threads()}",
    }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def write_result(result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{result['name']}.json"
    return write_json_atomic(path, result, durable=False)


NOTES = ROOT / "NOTES.md"


def goal_met(result: dict[str, Any]) -> str:
    """``yes``/``no`` for a goal that starts with ``>= number`` (a ratio goal), else ``-``."""
    match = re.match(r"\s*>=\s*([0-9.]+)", str(result.get("goal", "")))
    if not match:
        return "-"
    return "yes" if result["ratio"] >= float(match.group(1)) else "**no**"


def _agreement_text(agreement: Any) -> str:
    if isinstance(agreement, float):
        return f"{agreement:.3g}"
    if isinstance(agreement, dict):
        return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in agreement.items())
    return "" if agreement is None else str(agreement)


def write_table() -> Path:
    """Regenerate ``docs/benchmarks.md`` from ``bench/results/*.json`` and ``bench/NOTES.md``."""
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    lines = [
        "# Benchmarks",
        "",
        "Measured side by side in one process run (`python -m bench NAME`), alternating ours and the",
        "peer run by run; medians over the repeats. `ratio = peer_s / ours_s`: above 1,",
        "latentsurgeon is faster; for overhead benchmarks whose peer is the bare model, it is our",
        "relative throughput. `met` compares the ratio with a `>= x` goal. This file is regenerated",
        "from `bench/results/*.json` and `bench/NOTES.md` (`python -m bench all --write`).",
        "",
        "| benchmark | peer | ours (s) | peer (s) | ratio | goal | met | agreement |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['peer']} | {r['ours_s']:.4f} | {r['peer_s']:.4f} | "
                     f"{r['ratio']:.2f} | {r.get('goal', '')} | {goal_met(r)} | "
                     f"{_agreement_text(r.get('agreement'))} |")
    lines.append("")
    for r in rows:
        if r.get("description"):
            lines.append(f"- **{r['name']}**: {r['description']} ({r.get('machine', '')}, "
                         f"{r.get('repeats', '?')} repeats)")
    if NOTES.exists():
        lines += ["", NOTES.read_text().rstrip()]
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(TABLE, "\n".join(lines) + "\n")
    return TABLE


def describe(name: str) -> str:
    """The first line of a benchmark module's docstring."""
    module = importlib.import_module(f"bench.cases.{name}")
    return (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""


def run(name: str, repeats: int = 7, *, write: bool = False) -> list[dict[str, Any]]:
    """Time every case of ``bench/cases/<name>.py``; with ``write``, record the results
    (``bench/results/<case>.json``) and regenerate ``docs/benchmarks.md``."""
    if name not in available():
        raise SystemExit(f"Unknown benchmark {name!r}; available: {', '.join(available())}")
    module = importlib.import_module(f"bench.cases.{name}")
    results = []
    for case in module.cases():
        result = time_case(case, repeats=repeats)
        if write:
            write_result(result)
        results.append(result)
    if write:
        write_table()
    return results
