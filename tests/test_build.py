"""invoke build (pipeline/host/build.py): the whole flow end to end (options: test_build_options.py,
preflight: test_preflight.py).

The end-to-end tests run every stage for real (export of a random-init tiny Whisper, calibration
sets from espeak-ng speech, ONNX Runtime) with the DFC test double from tests/dfc_double in place
of the licensed DFC: natively (`--no-docker`, the double on the stages' PYTHONPATH) and through
real Docker (the double installed as a wheel in the dfc3 image). One build directory serves the
sequence full build -> no-op -> model script change -> stalled in optimize -> resume -> lock ->
`invoke build` (relative paths) stopped by SIGTERM, SIGHUP, SIGKILL while optimize hangs -> resume.
Filesystem faults and a change of --seconds: tests/test_build_faults.py.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from pipeline.host.build import run_build
from pipeline.host.build_options import BuildOptions
from pipeline.host.build_lock import BuildLock
from pipeline.host.bundle_runtime import runtime_names
from pipeline.errors import ToolchainError
from pipeline.dfc.model_scripts import resolve_model_script
from pipeline.host.stage_cache import STAGE_ORDER

TESTS = Path(__file__).resolve().parent
DFC_DOUBLE = TESTS / "dfc_double"
SECONDS, SEQ_LEN = 1, 8
# The tests' builds are small: the disk and memory minimums of a real build must not depend on
# what this machine has free at the moment.
LOW_MINIMUMS = {"min_free_disk_gib": 1, "min_memory_gib": 0.5}


# --- end to end --------------------------------------------------------------------------------


def _expected_files(build: Path) -> list[str]:
    export = json.loads((build / "export" / "export.json").read_text())
    enc, dec = export["encoder"]["net_name"], export["decoder"]["net_name"]
    files = ["export/export.json", *(f"export/{name}" for name in export["files"]),
             "calib/encoder_calib.npy", "calib/encoder_calib.manifest.json", "calib/decoder_calib.npz",
             "manifest.json", "report.md",
             "bundle/config.json", "bundle/README.md", f"bundle/{enc}.hef", f"bundle/{dec}.hef",
             # host arrays under the names Hailo's speech-recognition app loads, and the float ONNX pair
             f"bundle/decoder_assets/{export['variant']}/decoder_tokenization/token_embedding_weight_{export['variant']}.npy",
             f"bundle/decoder_assets/{export['variant']}/decoder_tokenization/onnx_add_input_{export['variant']}.npy",
             f"bundle/onnx/{export['encoder']['onnx']}", f"bundle/onnx/{export['decoder']['onnx']}",
             *(f"bundle/{name}" for name in export["host_assets"]["tokenizer_files"]),
             # the host transcriber's code and packages (no HailoRT wheel in this build's vendor folder)
             *(f"bundle/{name}" for name in runtime_names(hailort_wheel=None))]
    for model, net in (("encoder", enc), ("decoder", dec)):
        files += [f"dfc/{model}/{net}.har", f"dfc/{model}/{net}_optimized.har", f"dfc/{model}/{net}.alls",
                  f"dfc/{model}/{net}.hef", f"dfc/{model}/{net}_compiled.har",
                  *(f"dfc/{model}/{step}.json" for step in ("parse", "optimize", "compile")),
                  *(f"logs/{model}-{step}.log" for step in ("calib", "parse", "optimize", "compile"))]
    files += ["logs/export.log"] + [f".stages/{stage}.json" for stage in STAGE_ORDER]
    return files


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, color_system=None), out


class Flow:
    """Runs builds into one directory with fixed inputs; each run can change a few options."""

    def __init__(self, base: BuildOptions, probes=None):
        self.base = base
        self.probes = probes

    def run(self, **changes):
        fields = {**self.base.__dict__, **changes}
        console, out = _console()
        try:
            result = run_build(BuildOptions(**fields), console=console, doctor_probes=self.probes)
        finally:
            self.last_output = out.getvalue()
        return result, self.last_output


OPTIMIZE_AND_AFTER = ("encoder-optimize", "decoder-optimize", "encoder-compile", "decoder-compile", "bundle", "report")
BEFORE_OPTIMIZE = ("export", "encoder-calib", "decoder-calib", "encoder-parse", "decoder-parse")


def _custom_scripts(folder: Path) -> Path:
    """The quick scripts at a higher optimization level: a real change of the optimizer's settings."""
    folder.mkdir(exist_ok=True)
    for model in ("encoder", "decoder"):
        text = resolve_model_script("tiny", "hailo8l", model, "quick").text
        assert "optimization_level=0" in text
        (folder / f"{model}.alls").write_text(text.replace("optimization_level=0", "optimization_level=1"))
    return folder


def _check_flow(flow: Flow, tmp_path: Path) -> None:
    build = flow.base.build_dir

    # 1. A full build makes every file, and a rehearsal says so everywhere.
    result, output = flow.run()
    assert result.ran == STAGE_ORDER
    missing = [f for f in _expected_files(build) if not (build / f).is_file()]
    assert not missing
    assert not result.deployable
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["deployable"] is False and "NOT DEPLOYABLE" in manifest["not_deployable_reason"]
    assert "testdouble" in manifest["versions"]["dfc"]
    assert manifest["hefs"]["encoder"]["matches_compile_json"] is True
    assert manifest["parity"]["encoder_torch_vs_onnx"] <= 1e-4
    assert set(manifest["stages"]) == set(STAGE_ORDER) - {"report"}
    assert all(manifest["stages"][s]["duration_s"] > 0 for s in BEFORE_OPTIMIZE)
    assert manifest["dfc"]["encoder"]["timeline"]["optimize"], "the DFC log timeline is recorded"
    # the resolved script's role table and the HAR's layer list are in the manifest
    roles = {row["reference"]: row["layers"] for row in manifest["dfc"]["encoder"]["layer_roles"]}
    assert roles["conv4"] == ["conv6"]  # hailo-whisper's block-0 attention output is our conv6
    assert json.loads(Path(manifest["dfc"]["encoder"]["har_layers"]).read_text())["har_layers"]
    assert manifest["gpu"]["mode"] == "cpu"
    assert "NOT DEPLOYABLE" in (build / "report.md").read_text().splitlines()[2]
    assert json.loads((build / "bundle" / "config.json").read_text())["deployable"] is False
    assert "NOT DEPLOYABLE" in (build / "bundle" / "README.md").read_text()
    assert "NOT DEPLOYABLE" in output
    hef = build / "bundle" / f"{manifest['build']['encoder_net']}.hef"
    assert b"NOT DEPLOYABLE" in hef.read_bytes()
    stamps = {f: (build / f).stat().st_mtime_ns for f in _expected_files(build)}

    # 2. A second run is a no-op that says every stage was up to date.
    result, output = flow.run()
    assert result.ran == ()
    assert result.up_to_date == STAGE_ORDER
    for stage in STAGE_ORDER:
        assert f"{stage:<18} up to date" in output
    assert "Every stage was up to date; nothing ran." in output
    assert {f: (build / f).stat().st_mtime_ns for f in _expected_files(build)} == stamps

    # 3. A changed model script reruns optimize and compile (and the bundle/report they feed) only.
    scripts = _custom_scripts(tmp_path / "scripts")
    result, _ = flow.run(model_script=scripts)
    assert result.ran == OPTIMIZE_AND_AFTER
    assert result.up_to_date == BEFORE_OPTIMIZE
    assert "optimization_level=1" in (build / "dfc" / "encoder" / f"{manifest['build']['encoder_net']}.alls").read_text()

    # 4. A run stopped while optimize hangs leaves no optimize record; the next run resumes there.
    with pytest.raises(ToolchainError, match="encoder-optimize printed nothing"):
        flow.run(model_script=scripts, force=("optimize",),
                 stage_env={**flow.base.stage_env, "HAILO_DOUBLE_HANG_AT": "optimize"},
                 stall_timeouts={"optimize": 3})
    assert not (build / ".stages" / "encoder-optimize.json").exists()
    result, _ = flow.run(model_script=scripts)
    assert result.ran == OPTIMIZE_AND_AFTER
    assert result.up_to_date == BEFORE_OPTIMIZE

    # 5. A concurrent build in the same directory is refused, naming the holder.
    with BuildLock(build):
        with pytest.raises(ToolchainError, match=f"pid {os.getpid()}"):
            flow.run(model_script=scripts)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), children first found first."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stage_containers(build: Path) -> list:
    import docker

    from pipeline.host.docker_engine import LABEL_BUILD_DIR

    return docker.from_env().containers.list(all=True, filters={"label": f"{LABEL_BUILD_DIR}={build}"})


def _wait_for(condition, what: str, proc=None, timeout_s: float = 180):
    import time

    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert proc is None or proc.poll() is None, f"the build ended before {what}"
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout_s} s"
        time.sleep(0.2)
    return found


def _invoke_build_argv(o: BuildOptions, work: Path, tmp_path: Path) -> list[str]:
    """`invoke build` with the flow's options, its paths given relative to `work` (its cwd)."""
    import sys

    def rel(path) -> str:
        return os.path.relpath(path, work)

    argv = [str(Path(sys.executable).with_name("invoke")), "-r", str(TESTS.parent), "build",
            "--variant", o.variant, "--arch", o.arch, "--seconds", str(o.seconds), "--seq-len", str(o.seq_len),
            "--model", rel(o.model), "--calib", rel(o.calib_dir), "--profile", o.profile, "--cpu",
            "--out", rel(o.build_dir), "--vendor", rel(o.vendor_dir), "--model-script", rel(tmp_path / "scripts"),
            "--min-free-gb", str(o.min_free_disk_gib), "--min-memory-gb", str(o.min_memory_gib)]
    if o.no_docker:
        argv.append("--no-docker")
    else:
        argv += ["--base-image", o.base_image, "--wheelhouse", rel(o.wheelhouse)]
    return argv


def _check_stop_signals(flow: Flow, tmp_path: Path) -> None:
    """`invoke build` (paths relative to its working directory) gets SIGTERM, then SIGHUP, then
    SIGKILL while optimize hangs: each time no stage process or container remains (after SIGKILL:
    the next build stops it before taking the lock), the lock is released or taken over, one
    writer only, and each rerun resumes where the last one stopped."""
    import signal
    import subprocess

    o, build = flow.base, flow.base.build_dir
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = {**os.environ, "HAILO_DOUBLE_HANG_AT": "optimize"}
    if o.no_docker:
        env["PYTHONPATH"] = str(DFC_DOUBLE)
    log = build / "logs" / "encoder-optimize.log"

    def stage_running():
        if not (log.exists() and "pipeline.dfc.optimize" in log.read_text()):
            return None
        if o.no_docker:
            return [pid for pid in _descendants(proc.pid) if _alive(pid)] or None
        return [c for c in _stage_containers(build) if c.status == "running"] or None

    for index, sig in enumerate((signal.SIGTERM, signal.SIGHUP, signal.SIGKILL)):
        # The first run reruns calibration: relative --calib/--model must reach the stages (and
        # the containers) as absolute paths. The later ones resume at optimize by themselves.
        argv = _invoke_build_argv(o, work, tmp_path) + (["--force", "encoder-calib"] if index == 0 else [])
        log.unlink(missing_ok=True)
        out_path = tmp_path / f"invoke-{sig.name}.out"
        with open(out_path, "w") as out:
            proc = subprocess.Popen(argv, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            stage = _wait_for(stage_running, "encoder-optimize started", proc)
            if sig == signal.SIGHUP:  # one writer: a second build is refused while this one runs
                with pytest.raises(ToolchainError, match=f"Another build holds .*pid {proc.pid}"):
                    flow.run(model_script=tmp_path / "scripts")
                assert stage_running(), "the refused build left the running stage alone"
            proc.send_signal(sig)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        output = out_path.read_text()
        assert not (build / ".stages" / "encoder-optimize.json").exists()
        if index == 0:
            assert "encoder-calib" in output and (build / ".stages" / "encoder-calib.json").exists()
        if sig != signal.SIGKILL:
            assert code == 128 + sig, output
            assert "[whisper-hailo]" not in output, "stage output stays in logs/ unless --verbose"
            assert f"stopped by {sig.name}" in output
            assert not (build / "build.lock").exists(), "the lock is released"
            if index == 1:
                assert "encoder-parse      up to date" in output and "encoder-calib      up to date" in output
        else:
            assert json.loads((build / "build.lock").read_text())["pid"] == proc.pid
        if o.no_docker:
            # After SIGKILL too: the parent-death signal ends the stage with the build.
            _wait_for(lambda: not any(_alive(pid) for pid in stage), "the stage process ended", timeout_s=20)
        elif sig != signal.SIGKILL:
            assert _stage_containers(build) == [], "the stage container is stopped and removed"
        else:
            assert [c.name for c in _stage_containers(build)] == [c.name for c in stage], \
                "a SIGKILLed build cannot stop its container: the next build does"

    result, output = flow.run(model_script=tmp_path / "scripts")
    assert f"Taking over a stale build lock: pid {proc.pid}" in output
    if not o.no_docker:
        assert f"Stopped and removed container {stage[0].name}" in output
        assert _stage_containers(build) == []
    assert result.ran == OPTIMIZE_AND_AFTER
    assert result.up_to_date == BEFORE_OPTIMIZE
    assert not (build / "build.lock").exists()


@pytest.mark.slow
def test_native_build_end_to_end(tmp_path, monkeypatch, random_whisper_dir, speech_dir):
    # The doctor checks that hailo_sdk_client is importable here; the stages get it on PYTHONPATH.
    monkeypatch.syspath_prepend(str(DFC_DOUBLE))
    base = BuildOptions(
        variant="tiny", arch="hailo8l", seconds=SECONDS, seq_len=SEQ_LEN, model=str(random_whisper_dir("tiny")),
        calib_dir=speech_dir, profile="quick", cpu=True, no_docker=True, out=tmp_path / "build",
        vendor_dir=tmp_path / "vendor", stage_env={"PYTHONPATH": str(DFC_DOUBLE)}, **LOW_MINIMUMS,
    )
    flow = Flow(base)
    _check_flow(flow, tmp_path)
    _check_stop_signals(flow, tmp_path)

    # 6. On a GPU host (recorded NVML answer: one A100), the hang probe runs before the first DFC
    # stage, in the DFC stages' environment. There is no TensorFlow here, so it fails, and the
    # build stops before parse with the card named.
    from pipeline.host.doctor import Probes
    from pipeline.host.gpu import Gpu, GpuInventory

    a100 = Gpu(0, "GPU-0f1e2d3c", "NVIDIA A100-SXM4-80GB", (8, 0), 81920, "535.104.05")
    gpu_flow = Flow(base, probes=Probes(read_gpus=lambda: GpuInventory((a100,), "nvml")))
    with pytest.raises(ToolchainError, match="GPU probe failed on NVIDIA A100-SXM4-80GB"):
        gpu_flow.run(cpu=False, force=("parse",))
    probe_log = (base.build_dir / "logs" / "gpu-hang-probe.log").read_text()
    assert "tensorflow" in probe_log
    assert not (base.build_dir / ".stages" / "encoder-parse.json").exists()
    assert (base.build_dir / ".stages" / "decoder-calib.json").exists()


HAILO_DECODER_STAGES = ("decoder-calib", "decoder-parse", "decoder-optimize", "decoder-compile")


@pytest.mark.slow
def test_native_build_with_the_decoder_on_the_cpu(tmp_path, monkeypatch, random_whisper_dir, speech_dir):
    """--decoder cpu: no decoder DFC stage runs (the double would log it), the bundle carries the cached
    decoder ONNX (float, int8) and the report says so; an export from before the cached decoder is redone."""
    monkeypatch.syspath_prepend(str(DFC_DOUBLE))
    base = BuildOptions(
        variant="tiny", arch="hailo8l", seconds=SECONDS, seq_len=SEQ_LEN, model=str(random_whisper_dir("tiny")),
        calib_dir=speech_dir, profile="quick", cpu=True, no_docker=True, out=tmp_path / "build",
        vendor_dir=tmp_path / "vendor", stage_env={"PYTHONPATH": str(DFC_DOUBLE)}, decoder="cpu", **LOW_MINIMUMS,
    )
    from pipeline.host.doctor import Probes

    # The doctor's 16 GiB memory check is for real builds; this shared test machine often has less
    # free, and a 1 s random-init tiny needs a fraction of it.
    flow, build = Flow(base, probes=Probes(available_memory_bytes=lambda: 32 << 30)), base.build_dir
    result, output = flow.run()
    assert result.ran == tuple(s for s in STAGE_ORDER if s not in HAILO_DECODER_STAGES)
    assert not (build / "dfc" / "decoder").exists() and not (build / "calib" / "decoder_calib.npz").exists()
    assert not [p.name for p in (build / "logs").iterdir() if p.name.startswith("decoder-")]
    export = json.loads((build / "export" / "export.json").read_text())
    cached = export["cached_decoder"]
    bundle = build / "bundle"
    expected = {f"{export['encoder']['net_name']}.hef", "config.json", "README.md", cached["encoder_padding"],
                *(name for files in cached["files"].values() for name in files.values()),
                "runtime", "requirements.txt", "install.sh", "onnx"}
    assert {p.name for p in bundle.iterdir()} == expected
    for name in expected - {"config.json", "README.md", "runtime", "requirements.txt", "install.sh", "onnx"} - {
            f"{export['encoder']['net_name']}.hef"}:
        assert (bundle / name).read_bytes() == (build / "export" / name).read_bytes()
    # The encoder ONNX rides along for the transcriber's float backend (--backend onnx).
    assert [p.name for p in (bundle / "onnx").iterdir()] == [export["encoder"]["onnx"]]
    config = json.loads((bundle / "config.json").read_text())
    assert config["decoder"]["runs_on"] == "cpu"
    assert config["decoder"]["parity"]["float"]["greedy_token_mismatches_vs_generate"] == 0
    assert config["decoder"]["parity"]["float"]["logits_vs_transformers"] <= 1e-3
    assert "int8" in config["decoder"]["onnx"] and "decoder on the CPU" in (bundle / "README.md").read_text()
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["build"]["decoder"] == "cpu" and set(manifest["hefs"]) == {"encoder"}
    assert "- Decoder: host CPU (`--decoder cpu`)" in (build / "report.md").read_text()

    # The bundle's cached decoder transcribes (here: the random model's tokens, as the export's own check).
    from pipeline.export import cached_greedy, onnx_greedy

    encoder, _ = onnx_greedy.load_sessions(build / "export", export)
    states = onnx_greedy.encode(encoder, export, np.load(build / "calib" / "encoder_calib.npy")[:2])
    tokens = cached_greedy.transcribe_tokens(states, cached_greedy.load_cached_decoder(bundle, {**export,
                                             "cached_decoder": cached}, precision="int8"), export,
                                             options=cached_greedy.DecodeOptions(max_new_tokens=4))
    assert [len(t) for t in tokens] == [4, 4]

    # An export made before the cached decoder existed: said so, and the export runs again.
    del export["cached_decoder"]
    (build / "export" / "export.json").write_text(json.dumps(export))
    result, output = flow.run()
    said = " ".join(output.split())  # the console wraps long lines (the path's length varies)
    assert "was made before the cached (KV-cache) decoder existed" in said and "Running the export again" in said
    assert "export" in result.ran
    assert "cached_decoder" in json.loads((build / "export" / "export.json").read_text())


@pytest.mark.slow
@pytest.mark.docker
def test_docker_build_end_to_end(tmp_path, random_whisper_dir, speech_dir):
    import shutil

    docker_fixtures = pytest.importorskip("tests.docker_fixtures")
    # The containers' test images (debootstrapped base, host wheelhouse, the DFC double as a wheel in vendor/).
    vendor, base_image, wheelhouse = docker_fixtures.build_inputs_or_skip(tmp_path / "vendor")
    # Inputs the containers read are copied under tmp_path so their paths can be mounted.
    model = Path(shutil.copytree(random_whisper_dir("tiny"), tmp_path / "model"))
    audio = Path(shutil.copytree(speech_dir, tmp_path / "speech"))
    base = BuildOptions(
        variant="tiny", arch="hailo8l", seconds=SECONDS, seq_len=SEQ_LEN, model=str(model), calib_dir=audio,
        profile="quick", cpu=True, no_docker=False, out=tmp_path / "build", vendor_dir=vendor,
        base_image=base_image, wheelhouse=wheelhouse, **LOW_MINIMUMS,
    )
    flow = Flow(base)
    _check_flow(flow, tmp_path)
    _check_stop_signals(flow, tmp_path)


@pytest.mark.slow
def test_two_gpus_optimize_encoder_and_decoder_at_once_and_compile_without_a_gpu(
        tmp_path, monkeypatch, random_whisper_dir, speech_dir):
    # Two recorded A100s for the gate; the stages get the DFC double, a TensorFlow double that
    # answers the hang probe like a healthy card, and an optimize that takes 3 s.
    from pipeline.host.doctor import Probes
    from pipeline.host.gpu import Gpu, GpuInventory

    monkeypatch.syspath_prepend(str(DFC_DOUBLE))
    cards = tuple(Gpu(i, f"GPU-{i}a1b2c3", "NVIDIA A100-SXM4-80GB", (8, 0), 81920, "535.104.05") for i in (0, 1))
    probes = Probes(read_gpus=lambda: GpuInventory(cards, "nvml"), available_memory_bytes=lambda: 64 << 30)
    options = BuildOptions(
        variant="tiny", arch="hailo8l", seconds=SECONDS, seq_len=SEQ_LEN, model=str(random_whisper_dir("tiny")),
        calib_dir=speech_dir, profile="quick", no_docker=True, out=tmp_path / "build",
        vendor_dir=tmp_path / "vendor", **LOW_MINIMUMS,
        stage_env={"PYTHONPATH": os.pathsep.join((str(DFC_DOUBLE), str(TESTS / "tf_double"))),
                   "HAILO_DOUBLE_DELAY_S": "optimize=3"},
    )
    console, _ = _console()
    result = run_build(options, console=console, doctor_probes=probes)

    assert result.ran == STAGE_ORDER
    outcome = {o.stage: o for o in result.stages}
    enc, dec = outcome["encoder-optimize"], outcome["decoder-optimize"]
    assert enc.started_at < dec.started_at + dec.duration_s and dec.started_at < enc.started_at + enc.duration_s, \
        "the encoder and decoder optimize ran at the same time"
    used = {stage: outcome[stage].record.context["gpu_device_ids"] for stage in outcome if "-" in stage
            and stage.split("-")[1] in ("parse", "optimize", "compile")}
    assert used["encoder-optimize"] == [cards[0].uuid] and used["decoder-optimize"] == [cards[1].uuid]
    assert used["encoder-compile"] == [] and used["decoder-compile"] == []  # the compiler runs on the CPU
    assert used["encoder-parse"] == [cards[0].uuid, cards[1].uuid]
    assert "hang probe: matmul on /physical_device:GPU:0 finished" in \
        (options.build_dir / "logs" / "gpu-hang-probe.log").read_text()
