"""Benchmark of `invoke matrix`: makespan of a 4-cell matrix on a simulated 4-GPU + CPU Ray cluster
against the same 4 cells built one after another by `invoke build`'s run_build, and Ray's
scheduling overhead per task.

    .venv/bin/python bench/matrix_bench.py [--optimize-s 8] [--compile-s 2] [--out DIR] [--keep]

Cells: tiny and tiny.en x hailo8 and hailo8l (the four cells the native DFC 3.x test double can
build). The stages run natively with the double, whose optimize and compile take the given delays
(HAILO_DOUBLE_DELAY_S) so the schedule, not the double's speed, decides the makespan. Every cell
starts from its variant's export (random-init Whisper, made once, not timed, copied with its stage
record), in both runs. The cluster: a CPU head with 4 CPUs and four nodes with 1 CPU + 1 simulated
A100 each, plus one L4 node the gate must never give an optimize to (all on this machine:
ray.cluster_utils.Cluster, so the CPU work of all "nodes" shares this machine's cores).

Figures:
  sequential_s   the four cells one after another with run_build (today's `invoke build`, CPU mode)
  matrix_s       run_matrix over the four cells on the cluster
  ideal_s        a lower bound for the matrix: max(longest cell chain, optimize GPU-seconds / 4 GPUs),
                 from the stage times the matrix run measured
  dispatch gap   per task: its body's start minus the last upstream task's end (Ray scheduling,
                 worker hand-off; tasks waiting for a free GPU excluded)
  empty task     mean round trip of a chain of no-op tasks (Ray's floor per task on this machine)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
DFC_DOUBLE = REPO / "tests" / "dfc_double"
CELLS = (("tiny", "hailo8"), ("tiny", "hailo8l"), ("tiny.en", "hailo8"), ("tiny.en", "hailo8l"))
GPUS = 4


def seed_exports(work: Path, base) -> dict:
    """{variant: build dir holding its export and export record} (not timed)."""
    from build_bench import make_random_model

    from pipeline.host.build import run_cell_stage
    from pipeline.host.build_options import BuildOptions
    from pipeline.host.preflight import Preflight

    pre = Preflight(gpu_device_ids=(), gpu={"mode": "cpu"}, wheel_version=None, wheel_is_test_double=False,
                    warnings=())
    seeds = {}
    for variant in dict.fromkeys(v for v, _ in CELLS):
        model = make_random_model(variant, work / "models" / variant)
        seeds[variant] = (model, work / "seeds" / variant)
        run_cell_stage(BuildOptions(**{**base.__dict__, "variant": variant, "model": str(model),
                                       "out": seeds[variant][1]}), "export", pre)
    return seeds


def fresh_store(store: Path, seeds: dict) -> Path:
    for variant, arch in CELLS:
        cell = store / f"{variant}-{arch}"
        shutil.copytree(seeds[variant][1] / "export", cell / "export")
        (cell / ".stages").mkdir(parents=True)
        shutil.copy2(seeds[variant][1] / ".stages" / "export.json", cell / ".stages" / "export.json")
    return store


def run_sequential(store: Path, base, seeds: dict) -> float:
    from rich.console import Console

    from pipeline.host.build import run_build
    from pipeline.host.build_options import BuildOptions
    from pipeline.host.doctor import Probes

    probes = Probes(available_memory_bytes=lambda: 64 << 30)  # the shared machine's free memory is not measured here
    started = time.monotonic()
    for variant, arch in CELLS:
        options = BuildOptions(**{**base.__dict__, "variant": variant, "arch": arch, "cpu": True,
                                  "model": str(seeds[variant][0]), "out": store / f"{variant}-{arch}"})
        result = run_build(options, console=Console(file=io.StringIO()), doctor_probes=probes)
        assert result.ran, "the sequential cells must really build"
    return time.monotonic() - started


def critical_path(stages: dict) -> float:
    from pipeline.host.matrix_plan import stage_upstream

    finish: dict[str, float] = {}

    def done(stage: str) -> float:
        if stage not in finish:
            ups = stage_upstream(stage, tuple(stages))
            finish[stage] = max((done(u) for u in ups), default=0.0) + stages[stage]["seconds"]
        return finish[stage]

    return max(done(s) for s in stages)


def dispatch_gaps(cells: dict) -> list[float]:
    from pipeline.host.matrix_plan import needs_gpu, stage_upstream

    gaps = []
    for cell in cells.values():
        rows = cell["stages"]
        for stage, row in rows.items():
            ups = stage_upstream(stage, tuple(rows))
            if ups and not needs_gpu(stage):  # GPU tasks may wait for a GPU: not scheduling overhead
                gaps.append(row["started_at"] - max(rows[u]["finished_at"] for u in ups))
    return gaps


def empty_task_s(ray, n: int = 50) -> float:
    @ray.remote(num_cpus=1)
    def step(previous):
        return previous + 1

    ray.get(step.remote(0))  # a warm worker
    started = time.monotonic()
    ref = 0
    for _ in range(n):
        ref = step.remote(ref)
    assert ray.get(ref) == n
    return (time.monotonic() - started) / n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimize-s", type=float, default=8.0, help="the double's optimize time per model")
    parser.add_argument("--compile-s", type=float, default=2.0, help="the double's compile time per model")
    parser.add_argument("--out", type=Path, help="scratch folder (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)

    import ray
    from ray.cluster_utils import Cluster
    from rich.console import Console

    from build_bench import make_speech
    from pipeline.host.build_options import BuildOptions
    from pipeline.host.matrix import MatrixOptions, run_matrix
    from pipeline.host.matrix_plan import Cell

    work = Path(args.out or tempfile.mkdtemp(prefix="matrix-bench-")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    delays = f"optimize={args.optimize_s:g},compile={args.compile_s:g}"
    base = BuildOptions(seconds=1, seq_len=8, calib_dir=make_speech(work / "speech", 60), profile="quick",
                        no_docker=True, vendor_dir=work / "vendor", stream_logs=False,
                        stage_env={"PYTHONPATH": str(DFC_DOUBLE), "HAILO_DOUBLE_DELAY_S": delays})
    sys.path.insert(0, str(DFC_DOUBLE))  # run_build's doctor checks the DFC is importable here
    cluster = None
    try:
        print(f"seeding exports into {work} ...", flush=True)
        seeds = seed_exports(work, base)
        print("sequential run_build of 4 cells ...", flush=True)
        sequential = run_sequential(fresh_store(work / "sequential", seeds), base, seeds)

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
        for card in ["A100"] * GPUS + ["L4"]:
            cluster.add_node(num_cpus=1, num_gpus=1, resources={f"accelerator_type:{card}": 1},
                             labels={"ray.io/accelerator-type": card})
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        empty = empty_task_s(ray)
        print("matrix of 4 cells ...", flush=True)
        options = MatrixOptions(cells=tuple(Cell(v, a) for v, a in CELLS), store=fresh_store(work / "matrix", seeds),
                                build=base, model_dirs={v: m for v, (m, _) in seeds.items()}, hang_probe=False)
        started = time.monotonic()
        result = run_matrix(options, console=Console(file=io.StringIO()))
        matrix_s = time.monotonic() - started
    finally:
        if cluster is not None:
            ray.shutdown()
            cluster.shutdown()
    summary = json.loads(result.json_path.read_text())
    cells = summary["cells"]
    assert not result.failed_cells, result.failed_cells
    optimize_rows = [r for c in cells.values() for s, r in c["stages"].items() if s.endswith("-optimize")]
    assert {r["accelerator_type"] for r in optimize_rows} == {"A100"}, "an optimize left the A100s"
    ideal = max(max(critical_path(c["stages"]) for c in cells.values()),
                sum(r["seconds"] for r in optimize_rows) / GPUS)
    gaps = sorted(dispatch_gaps(cells))
    tasks = sum(len(c["stages"]) for c in cells.values())
    print(json.dumps({
        "cells": [f"{v}-{a}" for v, a in CELLS], "double_delays": delays, "gpus": GPUS, "tasks": tasks,
        "sequential_s": round(sequential, 1), "matrix_s": round(matrix_s, 1), "ideal_s": round(ideal, 1),
        "speedup_vs_sequential": round(sequential / matrix_s, 2), "matrix_over_ideal": round(matrix_s / ideal, 2),
        "dispatch_gap_median_s": round(statistics.median(gaps), 3), "dispatch_gap_p90_s": round(gaps[int(0.9 * (len(gaps) - 1))], 3),
        "empty_task_round_trip_s": round(empty, 4), "cpu_cores": os.cpu_count(),
    }, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
