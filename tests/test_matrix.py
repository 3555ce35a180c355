"""`invoke matrix` on a real Ray cluster of simulated nodes (ray.cluster_utils.Cluster, this machine).

One cluster per module: a CPU head and three one-GPU nodes labelled A100 and T4 (supported by the
dfc3 gate) and L4 (refused: the optimizer hangs on it). The GPUs are Ray resources only; the
stages run natively with the DFC test double, whose optimize takes a short delay so tasks overlap.
Every cell starts from one real export of a random-init tiny Whisper (made once, copied with its
stage record), so the matrix tasks run calibration, parse, optimize, compile, bundle and report.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402
from rich.console import Console  # noqa: E402

from pipeline.errors import ToolchainError  # noqa: E402
from pipeline.host import matrix  # noqa: E402
from pipeline.host.doctor import Probes  # noqa: E402
from pipeline.host.build import run_build, run_cell_stage  # noqa: E402
from pipeline.host.build_options import BuildOptions  # noqa: E402
from pipeline.host.preflight import Preflight  # noqa: E402
from pipeline.host.matrix import MatrixOptions, run_matrix, store_problem  # noqa: E402
from pipeline.host.matrix_plan import Cell, NodeInfo, make_cells  # noqa: E402
from pipeline.host.stage_cache import STAGE_ORDER  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DFC_DOUBLE = REPO / "tests" / "dfc_double"
CARDS = ("A100", "T4", "L4")
SUPPORTED = {"A100", "T4"}
OPTIMIZE_DELAY = "optimize=1.5"
ENCODER_CHAIN = ("encoder-parse", "encoder-optimize", "encoder-compile", "bundle", "report")


@pytest.fixture(scope="module")
def cluster():
    """A CPU head (2 CPUs) and one node per card in CARDS (1 CPU, 1 GPU each); this process connected."""
    with pytest.MonkeyPatch.context() as env:  # the nodes' workers import this checkout
        env.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        made = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
        nodes = {card: made.add_node(num_cpus=1, num_gpus=1, resources={f"accelerator_type:{card}": 1},
                                     labels={"ray.io/accelerator-type": card}) for card in CARDS}
        ray.init(address=made.address, logging_level="WARNING", log_to_driver=False)
    yield made, nodes
    ray.shutdown()
    made.shutdown()


@pytest.fixture(scope="module")
def inputs(module_tmp, random_whisper_dir, speech_dir):
    """The cells' options, and a tiny export (with its stage record) to seed every cell with."""
    model = random_whisper_dir("tiny")
    base = BuildOptions(seconds=1, seq_len=8, calib_dir=speech_dir, profile="quick", no_docker=True,
                        vendor_dir=module_tmp("vendor"), stream_logs=False, min_free_disk_gib=1, min_memory_gib=0.5,
                        stage_env={"PYTHONPATH": str(DFC_DOUBLE), "HAILO_DOUBLE_DELAY_S": OPTIMIZE_DELAY})
    seed = module_tmp("seed") / "tiny"
    pre = Preflight(gpu_device_ids=(), gpu={"mode": "cpu"}, wheel_version=None, wheel_is_test_double=False,
                    warnings=())
    run_cell_stage(BuildOptions(**{**base.__dict__, "model": str(model), "out": seed}), "export", pre)
    return base, model, seed


def _store(tmp_path: Path, seed: Path, cells) -> Path:
    store = tmp_path / "store"
    for cell in cells:
        shutil.copytree(seed / "export", store / cell.name / "export")
        (store / cell.name / ".stages").mkdir(parents=True)
        shutil.copy2(seed / ".stages" / "export.json", store / cell.name / ".stages" / "export.json")
    return store


def _options(inputs, store: Path, cells, **changes) -> MatrixOptions:
    base, model, _ = inputs
    fields = dict(cells=cells, store=store, build=base, model_dirs={"tiny": model}, hang_probe=False)
    return MatrixOptions(**{**fields, **changes})


def _run(options: MatrixOptions):
    out = io.StringIO()
    result = run_matrix(options, console=Console(file=out, width=200, color_system=None))
    return result, out.getvalue()


def _span(rows) -> tuple[float, float]:
    return min(r["started_at"] for r in rows), max(r["finished_at"] for r in rows)


def test_cells_build_concurrently_optimize_lands_only_on_supported_gpus(cluster, inputs, tmp_path, monkeypatch):
    cells = make_cells("tiny", "hailo8l,hailo8")
    store = _store(tmp_path, inputs[2], cells)
    result, output = _run(_options(inputs, store, cells))

    assert result.failed_cells == ()
    summary = json.loads(result.json_path.read_text())
    assert set(summary["cells"]) == {"tiny-hailo8l", "tiny-hailo8"}
    markdown = result.markdown_path.read_text()
    assert "| tiny-hailo8l | built |" in markdown and "| tiny-hailo8 | built |" in markdown
    for name, cell in summary["cells"].items():
        rows = cell["stages"]
        assert set(rows) == set(STAGE_ORDER)
        assert rows["export"]["status"] == "up to date"  # seeded
        assert all(rows[s]["status"] == "ran" for s in STAGE_ORDER[1:])
        for stage, row in rows.items():
            if stage.endswith("-optimize"):
                assert row["gpu_ids"] == ["0"] and row["accelerator_type"] in SUPPORTED, (name, stage, row)
            else:  # export, calibration, parse, compile, bundle, report never hold a GPU
                assert row["gpu_ids"] == [], (name, stage, row)
        # what the task recorded in the store while it ran matches what it returned
        where = json.loads((store / name / ".matrix" / "encoder-optimize.json").read_text())
        assert where["node_id"] == rows["encoder-optimize"]["node_id"]
        assert cell["gpu_hours"] > 0
        assert json.loads((store / name / "manifest.json").read_text())["build"]["arch"] == name.split("-")[1]
        export = json.loads((store / name / "export" / "export.json").read_text())
        assert (store / name / "dfc" / "encoder" / f"{export['encoder']['net_name']}.hef").is_file()
    assert "L4" not in {row.get("accelerator_type") for c in summary["cells"].values()
                        for s, row in c["stages"].items() if s.endswith("-optimize")}
    (a_start, a_end), (b_start, b_end) = (_span(c["stages"].values()) for c in summary["cells"].values())
    assert max(a_start, b_start) < min(a_end, b_end), "the two cells ran at the same time"
    assert "tiny-hailo8l encoder-optimize: ran on" in output

    # The matrix's cell is the build `invoke build` makes: built alone into the same directory,
    # every stage is up to date but the report (it records how the GPUs were chosen).
    monkeypatch.syspath_prepend(str(DFC_DOUBLE))  # the doctor checks the DFC is importable here
    base, model, _ = inputs
    alone = BuildOptions(**{**base.__dict__, "variant": "tiny", "arch": "hailo8l", "model": str(model),
                            "out": store / "tiny-hailo8l", "cpu": True})
    # (the shared test machine's free memory is not this test's subject: the doctor is told 64 GiB)
    probes = Probes(available_memory_bytes=lambda: 64 << 30)
    built = run_build(alone, console=Console(file=io.StringIO()), doctor_probes=probes)
    assert built.ran == ("report",)


def test_a_failing_cell_leaves_the_others_built_and_a_rerun_resumes_from_the_store(cluster, inputs, tmp_path):
    cells = make_cells("tiny", "hailo8l,hailo8")
    store = _store(tmp_path, inputs[2], cells)
    blocker = store / "tiny-hailo8" / "dfc" / "encoder"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where encoder-parse needs its folder\n")

    result, _ = _run(_options(inputs, store, cells))
    assert result.failed_cells == ("tiny-hailo8",)
    cells_json = json.loads(result.json_path.read_text())["cells"]
    assert cells_json["tiny-hailo8l"]["status"] == "built"
    failed = cells_json["tiny-hailo8"]
    assert failed["stages"]["encoder-parse"]["status"] == "failed"
    assert "Stage encoder-parse failed" in failed["error"]
    assert {s for s, r in failed["stages"].items() if r["status"] == "blocked"} == set(ENCODER_CHAIN[1:])
    assert failed["stages"]["decoder-compile"]["status"] == "ran"  # the other model's chain went on
    assert "encoder-parse" in result.markdown_path.read_text().split("## Problems")[1]

    # Fixed and rerun: only what failed or never ran runs; the rest is found up to date in the store.
    blocker.unlink()
    result, _ = _run(_options(inputs, store, cells))
    assert result.failed_cells == ()
    cells_json = json.loads(result.json_path.read_text())["cells"]
    assert {r["status"] for r in cells_json["tiny-hailo8l"]["stages"].values()} == {"up to date"}
    ran = {s for s, r in cells_json["tiny-hailo8"]["stages"].items() if r["status"] == "ran"}
    assert ran == set(ENCODER_CHAIN)


def _pids_running(needle: str) -> list[int]:
    """Processes whose command line contains `needle` (this test's own store path)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_killed_driver_leaves_its_lock_and_the_rerun_skips_finished_stages(cluster, inputs, tmp_path):
    import pickle
    import signal
    import subprocess
    import sys

    cells = (Cell("tiny", "hailo8l"),)
    store = _store(tmp_path, inputs[2], cells)
    base = inputs[0]
    slow = BuildOptions(**{**base.__dict__, "stage_env": {**base.stage_env, "HAILO_DOUBLE_DELAY_S": "optimize=60"}})
    options_file = tmp_path / "options.pickle"
    options_file.write_bytes(pickle.dumps(_options(inputs, store, cells, build=slow, address=cluster[0].address)))
    driver = subprocess.Popen(
        [sys.executable, "-c", "import pickle, sys; from pipeline.host.matrix import run_matrix; "
                               "run_matrix(pickle.loads(open(sys.argv[1], 'rb').read()))", str(options_file)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Both optimize tasks started: every stage before them has its record.
    started = [store / "tiny-hailo8l" / ".matrix" / f"{model}-optimize.json" for model in ("encoder", "decoder")]
    try:
        deadline = time.monotonic() + 120
        while not all(p.exists() for p in started):
            assert driver.poll() is None and time.monotonic() < deadline, "optimize never started"
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
        # The native stage runs in its own session and outlives its Ray worker: stop it by pid.
        for pid in _pids_running(str(store)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    cell = store / "tiny-hailo8l"
    assert json.loads((cell / "build.lock").read_text())["pid"] == driver.pid
    assert not (cell / ".stages" / "encoder-optimize.json").exists()

    result, output = _run(_options(inputs, store, cells))
    assert f"Taking over a stale build lock: pid {driver.pid}" in output
    rows = json.loads(result.json_path.read_text())["cells"]["tiny-hailo8l"]["stages"]
    before = ("export", "encoder-calib", "decoder-calib", "encoder-parse", "decoder-parse")
    assert {s for s, r in rows.items() if r["status"] == "up to date"} == set(before)
    assert {s for s, r in rows.items() if r["status"] == "ran"} == set(STAGE_ORDER) - set(before)
    assert not (cell / "build.lock").exists()


def test_bad_input_fails_before_any_work(cluster, inputs, tmp_path, monkeypatch):
    cells = make_cells("tiny", "hailo8l")
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(ToolchainError, match="Cannot reach the Ray cluster at 127.0.0.1:9"):
        _run(_options(inputs, store, cells, address="127.0.0.1:9"))
    with pytest.raises(ToolchainError, match="Store .*nowhere is not a folder"):
        _run(_options(inputs, tmp_path / "nowhere", cells))
    with pytest.raises(ToolchainError, match="Unknown Whisper variant 'huge'"):
        _run(_options(inputs, store, (Cell("huge", "hailo8l"),)))
    # A cluster whose only GPUs are L4s: every cell is refused with the gate's reason, nothing runs.
    monkeypatch.setattr(matrix, "cluster_nodes", lambda: [NodeInfo("n1", "10.0.0.9", 8, 4, "L4")])
    with pytest.raises(ToolchainError, match="No cell of the matrix can optimize") as err:
        _run(_options(inputs, store, make_cells("tiny", "hailo8l,hailo10h")))
    assert "hung endlessly on an L4" in str(err.value) and "hailo10h" in str(err.value)
    assert list(store.iterdir()) == []


def test_a_node_that_cannot_see_the_store_is_named():
    problem = store_problem(Path("/shared/store"), {"10.0.0.1 (aa)": (True, True), "10.0.0.2 (bb)": (False, False),
                                                    "10.0.0.3 (cc)": (True, False)})
    assert "not visible from node(s) 10.0.0.2 (bb)" in problem.problem
    assert "read-only on node(s) 10.0.0.3 (cc)" in problem.problem
    assert "same path on every node" in problem.fix
    assert store_problem(Path("/s"), {"n": (True, True)}) is None


def test_a_node_lost_mid_optimize_reruns_the_stage_on_another_supported_node(cluster, inputs, tmp_path):
    """Last in the module: it takes a node away."""
    made, nodes = cluster
    cells = (Cell("tiny", "hailo8l"),)
    store = _store(tmp_path, inputs[2], cells)
    base = inputs[0]
    slow = BuildOptions(**{**base.__dict__, "stage_env": {**base.stage_env, "HAILO_DOUBLE_DELAY_S": "optimize=6"}})
    options = _options(inputs, store, cells, build=slow, models=("encoder",))
    done = {}
    thread = threading.Thread(target=lambda: done.update(result=_run(options)[0]))
    thread.start()
    where = store / "tiny-hailo8l" / ".matrix" / "encoder-optimize.json"
    deadline = time.monotonic() + 120
    while not where.exists():
        assert thread.is_alive() and time.monotonic() < deadline, "encoder-optimize never started"
        time.sleep(0.2)
    first = json.loads(where.read_text())["node_id"]
    lost_card = next(card for card, node in nodes.items() if node.node_id == first)
    assert lost_card in SUPPORTED
    time.sleep(1.0)  # mid-optimize
    made.remove_node(nodes[lost_card], allow_graceful=False)
    thread.join(timeout=180)
    assert not thread.is_alive()
    row = json.loads(done["result"].json_path.read_text())["cells"]["tiny-hailo8l"]["stages"]["encoder-optimize"]
    assert row["status"] == "ran"
    assert row["node_id"] != first and row["accelerator_type"] == (SUPPORTED - {lost_card}).pop()
