"""`invoke matrix`: many variant x arch builds at once on a Ray cluster.

Each cell (`pipeline.host.matrix_plan.Cell`) is the build `invoke build` would make, in
`<store>/<variant>-<arch>`; each of its stages is one Ray task that runs `build.run_cell_stage`:
the same launcher, images, cache keys and outputs, so a cell built here equals one built alone
and a rerun skips what is up to date. A task waits for its upstream stages (the stage cache's
table) through their Ray results, which are a few hundred bytes: the artifacts themselves move
through the store, a folder every node mounts at the same path (NFS, or the local disk of a
one-host cluster), never through Ray's object store.

Resources: optimize asks for one GPU and, through the `ray.io/accelerator-type` label, only the
card types the GPU gate supports for the cell's DFC image; every other stage asks for one CPU and
no GPU. A cell whose arch has no supported card in the cluster is refused before anything runs.

Faults: a failed stage fails its cell's downstream stages only; a task whose node dies is rerun
elsewhere by Ray (`max_retries`; stage outputs are renamed into place and records written after
them, so a half-done attempt leaves nothing that looks finished). The driver holds each cell's
build lock; stopped and rerun, it resumes from the records in the store.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional

from pipeline.errors import ToolchainError
from pipeline.files import write_json_atomic
from pipeline.host.build import run_cell_stage
from pipeline.host.build_lock import BuildLock
from pipeline.host.build_options import BuildOptions
from pipeline.host.preflight import Preflight
from pipeline.host.stage_cache import StageCache, resolve_force
from pipeline.host.matrix_plan import (ACCELERATOR_LABEL, ACCELERATOR_RESOURCE_PREFIX, MODELS, Cell, GpuPlacement,
                                       NodeInfo, cell_stages, dfc_image_for, needs_gpu, plan_gpus,
                                       stage_upstream)
from pipeline.host.matrix_summary import MatrixSummary, StageRun, summarize, write_summary

CONNECT_TIMEOUT_S = 10.0  # a head that does not answer a TCP connect in this time is unreachable
STORE_CHECK_TIMEOUT_S = 120.0  # every node answers the store check (worker start-up included)
WHERE_DIR = ".matrix"  # <cell>/.matrix/<stage>.json: the node running (or that ran) each stage


@dataclass(frozen=True)
class MatrixOptions:
    """A matrix build, made once by the entry point (tasks.py) and passed down."""

    cells: tuple[Cell, ...]
    store: Path  # every cell's build directory lives here; every node must see it at this path
    build: BuildOptions = field(default_factory=BuildOptions)  # the per-cell options (variant/arch/out set per cell)
    models: tuple[str, ...] = MODELS
    address: Optional[str] = None  # None: start Ray on this machine; "auto", "HOST:PORT" or "ray://HOST:PORT"
    model_dirs: Mapping[str, Path] = field(default_factory=dict)  # variant -> local checkpoint (else the hub id)
    max_retries: int = 2  # reruns of a task whose node or worker died (not of a stage that failed)
    hang_probe: bool = True  # the GPU hang probe before each optimize (off: simulated GPUs)

    def __post_init__(self):
        object.__setattr__(self, "store", Path(self.store).absolute())
        object.__setattr__(self, "cells", tuple(self.cells))
        cell_stages(self.models)  # unknown model names fail here
        if self.build.decoder != "hailo":
            raise ToolchainError(f"invoke matrix builds Hailo decoders only (decoder {self.build.decoder!r} given).",
                                 "Build host-decoder cells with `invoke build --decoder cpu`.")

    @classmethod
    def from_flags(cls, environ: Mapping[str, str], *, variants: str, archs: str, models: str, store: str,
                   model_dir=None, seconds=None, seq_len=None, calib=None, calib_download=False, profile="full",
                   model_script=None, cpu=False, no_docker=False, vendor="vendor", max_retries=2,
                   no_hang_probe=False, force=None, address=None) -> "MatrixOptions":
        """MatrixOptions from `invoke matrix`'s flags as typed (the Hugging Face token from `environ`)."""
        from pipeline.host.build_options import hub_token_env, parse_number
        from pipeline.host.matrix_plan import make_cells

        pairs = [item.partition("=") for item in model_dir or ()]
        if any(not sep for _, sep, _ in pairs):
            raise ToolchainError(f"--model-dir {model_dir!r} is not VARIANT=FOLDER.",
                                 "Pass e.g. --model-dir tiny=/models/tiny.")
        build = BuildOptions(
            seconds=parse_number("--seconds", seconds) if seconds is not None else None,
            seq_len=parse_number("--seq-len", seq_len, int) if seq_len is not None else None,
            calib_dir=Path(calib) if calib else None, calib_download=calib_download, profile=profile,
            model_script=Path(model_script) if model_script else None, cpu=cpu, no_docker=no_docker,
            vendor_dir=Path(vendor), force=tuple(force or ()), export_env=hub_token_env(environ))
        return cls(cells=make_cells(variants, archs), store=Path(store), build=build,
                   models=tuple(m.strip() for m in models.split(",") if m.strip()), address=address,
                   model_dirs={variant: Path(folder) for variant, _, folder in pairs},
                   max_retries=parse_number("--max-retries", max_retries, int), hang_probe=not no_hang_probe)

    def cell_options(self, cell: Cell) -> BuildOptions:
        """The BuildOptions of one cell: what `invoke build --out <store>/<cell>` would get."""
        b = self.build
        model = self.model_dirs.get(cell.variant)
        return replace(
            b, variant=cell.variant, arch=cell.arch, out=self.store / cell.name, stream_logs=False,
            model=str(Path(model).absolute()) if model else None,
            calib_dir=Path(b.calib_dir).absolute() if b.calib_dir else None,
            vendor_dir=Path(b.vendor_dir).absolute(),
            model_script=Path(b.model_script).absolute() if b.model_script else None,
        )


@dataclass(frozen=True)
class MatrixResult:
    summary: MatrixSummary
    json_path: Path
    markdown_path: Path

    @property
    def failed_cells(self) -> tuple[str, ...]:
        return tuple(name for name, cell in self.summary.cells.items() if cell["status"] != "built")


# --- before any work -----------------------------------------------------------------------------


def check_local_inputs(options: MatrixOptions) -> None:
    """What the driver can check alone: the store, the inputs, every cell's spec."""
    store = options.store
    if not store.is_dir():
        raise ToolchainError(f"Store {store} is not a folder.",
                             "Create it (on a disk every node mounts at this same path) or pass another --store.")
    if not os.access(store, os.W_OK):
        raise ToolchainError(f"Store {store} is not writable.", "Pass a --store folder you can write to.")
    if not options.cells:
        raise ToolchainError("The matrix has no cells.", "Pass --variants and --archs.")
    for cell in options.cells:
        cell.spec(options.build.seconds, options.build.seq_len)  # unknown names, bad seconds/seq_len
    b = options.build
    if b.calib_dir is None and not b.calib_download:
        raise ToolchainError("No calibration audio given.", "Pass --calib DIR (on the store's disk) or --calib-download.")
    if b.calib_dir is not None and not Path(b.calib_dir).is_dir():
        raise ToolchainError(f"Calibration audio {b.calib_dir} is not a folder.", "Pass --calib with a folder of speech.")
    for variant, path in options.model_dirs.items():
        if not Path(path).is_dir():
            raise ToolchainError(f"Model folder {path} for {variant} is not a folder.", "Pass an existing checkpoint folder.")


def _head_endpoint(address: str) -> Optional[tuple[str, int]]:
    """'ray://h:10001' / 'h:6379' -> (h, port); None for 'auto' and other forms Ray resolves itself."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host, int(port)


def connect(address: Optional[str]) -> bool:
    """Connect this process to Ray; True when this call connected (disconnect after), False when
    the caller was already connected."""
    import ray

    fix = ("Start the cluster (`ray up docker/ray-cluster.yaml`, or `ray start --head` on one host) and pass the "
           "head's address (HOST:6379, or ray://HOST:10001 from outside the cluster), or omit --address.")
    endpoint = _head_endpoint(address) if address else None
    if endpoint is not None:  # Ray itself would retry for a minute before saying so
        try:
            socket.create_connection(endpoint, timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise ToolchainError(f"Cannot reach the Ray cluster at {address}: {err}.", fix) from None
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        return True
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ToolchainError(f"Cannot connect to the Ray cluster at {address}: {err}", fix) from None
    return True


def cluster_nodes() -> list[NodeInfo]:
    """The live nodes, with their GPU count and Ray's accelerator type (label, else resource)."""
    import ray

    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources, labels = node.get("Resources", {}), node.get("Labels") or {}
        kind = labels.get(ACCELERATOR_LABEL) or next(
            (k[len(ACCELERATOR_RESOURCE_PREFIX):] for k in resources if k.startswith(ACCELERATOR_RESOURCE_PREFIX)), None)
        nodes.append(NodeInfo(node["NodeID"], node.get("NodeManagerAddress", "?"), resources.get("CPU", 0.0),
                              resources.get("GPU", 0.0), kind))
    return nodes


def _sees_marker(marker: str) -> tuple[bool, bool]:
    """On a node: (the driver's marker file is there, the store is writable)."""
    path = Path(marker)
    return path.is_file(), os.access(path.parent, os.W_OK)


def check_store_visible(store: Path, nodes: list[NodeInfo]) -> None:
    """Every node must read what the driver wrote into the store, at the same path."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = store / f".matrix-probe-{uuid.uuid4().hex}"
    marker.write_text("written by the matrix driver\n")
    try:
        probe = ray.remote(num_cpus=0)(_sees_marker)
        refs = {n.address + " (" + n.node_id[:8] + ")": probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote(str(marker))
            for n in nodes}
        try:
            answers = dict(zip(refs, ray.get(list(refs.values()), timeout=STORE_CHECK_TIMEOUT_S)))
        except ray.exceptions.GetTimeoutError:
            raise ToolchainError(f"Not every node answered the store check within {STORE_CHECK_TIMEOUT_S:.0f} s.",
                                 "Check the nodes with `ray status`; a node whose workers cannot start (e.g. "
                                 "without this toolchain installed) never answers.") from None
    finally:
        marker.unlink()
    problem = store_problem(store, answers)
    if problem is not None:
        raise problem


def store_problem(store: Path, answers: Mapping[str, tuple[bool, bool]]) -> Optional[ToolchainError]:
    """The error for nodes that did not see the driver's marker or cannot write; None when all can."""
    blind = [node for node, (seen, _) in answers.items() if not seen]
    read_only = [node for node, (seen, writable) in answers.items() if seen and not writable]
    if not blind and not read_only:
        return None
    parts = ([f"not visible from node(s) {', '.join(blind)}"] if blind else []) + \
        ([f"read-only on node(s) {', '.join(read_only)}"] if read_only else [])
    return ToolchainError(
        f"Store {store} is {'; '.join(parts)}.",
        "Mount one shared folder (e.g. NFS) at the same path on every node and pass it as --store.",
    )


# --- one stage on a node -------------------------------------------------------------------------


def run_stage_task(options: BuildOptions, stage: str, placement: Mapping[str, Any], hang_probe: bool,
                   *upstream: Any) -> dict:
    """Body of a Ray task: one stage of one cell, on whatever node Ray chose."""
    import ray
    from rich.console import Console

    from pipeline.host.vendor import find_dfc_wheel

    started = time.time()
    gpu_ids = tuple(str(i) for i in ray.get_gpu_ids())
    context = ray.get_runtime_context()
    where = {"stage": stage, "node_id": context.get_node_id(), "node_address": ray.util.get_node_ip_address(),
             "gpu_ids": list(gpu_ids), "pid": os.getpid(), "started_at": started}
    # Which node runs what, readable in the store while the matrix runs (a retry overwrites it).
    write_json_atomic(Path(options.build_dir) / WHERE_DIR / f"{stage}.json", where)
    try:
        wheel = find_dfc_wheel(options.spec.arch.dfc, options.vendor_dir)
    except ToolchainError:
        wheel = None  # natively, the installed DFC counts
    gpu = {"mode": "gpu" if gpu_ids else "cpu", "scheduler": "ray", **placement}
    pre = Preflight(gpu_device_ids=gpu_ids, gpu=gpu if needs_gpu(stage) else {"mode": "matrix", "scheduler": "ray"},
                    wheel_version=wheel.version if wheel else None,
                    wheel_is_test_double=bool(wheel and wheel.is_test_double), warnings=())
    outcome = run_cell_stage(options, stage, pre, console=Console(file=io.StringIO()),
                             probe_gpu=hang_probe and bool(gpu_ids))
    return StageRun(stage=stage, status=outcome.status, node_id=where["node_id"],
                    node_address=where["node_address"], gpu_ids=gpu_ids,
                    accelerator_type=None,
                    started_at=started, finished_at=time.time(),
                    stage_duration_s=outcome.record.duration_s if outcome.record else 0.0).to_json()


def _task_options(stage: str, placement: Optional[GpuPlacement], max_retries: int, cell: Cell) -> dict:
    options: dict[str, Any] = {"num_cpus": 1, "num_gpus": 0, "max_retries": max_retries,
                               "retry_exceptions": False, "name": f"{cell.name}:{stage}"}
    if needs_gpu(stage) and placement is not None:
        options.update(num_gpus=1, label_selector=placement.label_selector)
    return options


# --- the matrix ----------------------------------------------------------------------------------


def _ui(console):
    from rich.console import Console

    return console or Console(highlight=False)


def run_matrix(options: MatrixOptions, *, console=None) -> MatrixResult:
    """Build every cell; see the module docstring. Writes <store>/matrix-summary.{json,md}."""
    import ray

    ui = _ui(console)
    started = time.time()
    check_local_inputs(options)
    connected_here = connect(options.address)
    try:
        nodes = cluster_nodes()
        refused, placements = {}, {}
        if not options.build.cpu:
            for arch in dict.fromkeys(c.arch for c in options.cells):
                placements[arch] = plan_gpus(arch, nodes, dfc_image_for(arch, options.build.vendor_dir))
            refused = {c.name: str(placements[c.arch].refusal()) for c in options.cells
                       if not placements[c.arch].allowed_types}
            if len(refused) == len(options.cells):
                raise ToolchainError("No cell of the matrix can optimize on this cluster:\n"
                                     + "\n".join(f"  - {cell}: {why}" for cell, why in refused.items()),
                                     "Add GPU nodes the gate supports, or pass --cpu.")
        check_store_visible(options.store, nodes)
        runnable = [c for c in options.cells if c.name not in refused]
        for name, why in refused.items():
            ui.print(f"[red]✗[/] {name}: refused before any work: {why}")
        stages = cell_stages(options.models)
        with contextlib.ExitStack() as locks:
            forced = resolve_force(options.build.force)
            for cell in runnable:
                locks.enter_context(BuildLock(options.store / cell.name, warn=lambda m: ui.print(f"[yellow]warning:[/] {m}")))
                StageCache(options.store / cell.name).invalidate(forced)  # --force, as `invoke build` does
            runs, errors = _run_cells(options, runnable, stages, placements, nodes, ui)
        summary = summarize(options.cells, stages, runs, errors, refused, options.store,
                            started_at=started, finished_at=time.time())
        json_path, md_path = write_summary(summary, options.store)
    finally:
        if connected_here:
            ray.shutdown()
    ui.print(f"Matrix summary: {md_path}")
    return MatrixResult(summary, json_path, md_path)


def _run_cells(options: MatrixOptions, cells: list[Cell], stages: tuple[str, ...],
               placements: Mapping[str, GpuPlacement], nodes: list[NodeInfo], ui) -> tuple[dict, dict]:
    """Submit every cell's stage graph, then collect as tasks finish. Returns (runs, errors):
    {(cell, stage): StageRun json} and {(cell, stage): error text} for the stages that failed."""
    import ray

    card_of = {n.node_id: n.accelerator_type for n in nodes}
    remote = ray.remote(run_stage_task)
    pending: dict[Any, tuple[str, str]] = {}
    for cell in cells:
        cell_options = options.cell_options(cell)
        placement = placements.get(cell.arch)
        described = {"allowed_accelerator_types": list(placement.allowed_types)} if placement else {}
        refs: dict[str, Any] = {}
        for stage in stages:
            upstream = [refs[s] for s in stage_upstream(stage, stages)]
            task = remote.options(**_task_options(stage, placement, options.max_retries, cell))
            refs[stage] = task.remote(cell_options, stage, described, options.hang_probe, *upstream)
            pending[refs[stage]] = (cell.name, stage)
    runs, errors = {}, {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            cell_name, stage = pending.pop(ref)
            try:
                run = ray.get(ref)
            except Exception as err:  # a stage's ToolchainError, a lost node after its retries, ...
                errors[(cell_name, stage)] = _error_text(err)
                ui.print(f"[red]✗[/] {cell_name} {stage}: failed")
                continue
            run["accelerator_type"] = card_of.get(run["node_id"])
            runs[(cell_name, stage)] = run
            where = f"{run['node_address']}" + (f" GPU {','.join(run['gpu_ids'])}" if run["gpu_ids"] else "")
            ui.print(f"[green]✓[/] {cell_name} {stage}: {run['status']} on {where} "
                     f"({run['finished_at'] - run['started_at']:.1f} s)")
    return runs, errors


def _error_text(err: BaseException) -> str:
    """The stage's own error when Ray wrapped one (RayTaskError.cause), else Ray's message."""
    cause = getattr(err, "cause", None)
    return str(cause if isinstance(cause, BaseException) else err).strip()
