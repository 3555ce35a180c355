"""The one module that talks to the Hailo Dataflow Compiler (`hailo_sdk_client`).

The DFC is the user's licensed wheel; it is imported lazily inside the functions below, so the
rest of the toolchain (and its tests) runs without it. The calls are the public API used by
hailo-ai/hailo_model_zoo (core/main_utils.py, main_driver.py) and hailocs/hailo-whisper
(conversion/convert_whisper_{encoder,decoder}.py); see ../shared/reference/dfc-api.md.

    parse     ClientRunner(hw_arch) .translate_onnx_model(onnx, net, start/end nodes, shapes) -> HAR
    optimize  ClientRunner(hw_arch, har) .load_model_script(alls) .optimize(calib) -> optimized HAR
    compile   ClientRunner(hw_arch, har) .compile() -> HEF bytes, compiled HAR
    emulate   ClientRunner(har=har) .infer_context(InferenceContext.SDK_NATIVE | SDK_QUANTIZED)
              .infer(ctx, NHWC data) -> NHWC outputs (hailocs/hailo-whisper
              evaluation/hailo/hailo_sdk_{encoder,decoder}.py, commit 347d8a0)

Each step starts from the previous step's HAR, so a failed or interrupted step is resumed from
the last good file. Every file is written under a temporary name and renamed into place when
complete: a `.hef` or `.har` that exists is whole.

Calibration data (the DFC takes NHWC):
    encoder  np.ndarray [N, 1, frames, 80]                      (ONNX input [1, 80, 1, frames])
    decoder  {"<net>/input_layer1": [N, 1, positions, d_model],  (ONNX input [1, positions, d_model])
              "<net>/input_layer2": [N, 1, seq_len, d_model]}    (ONNX input [1, seq_len, d_model])
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import time
from pathlib import Path
from typing import Any, Optional

from pipeline.errors import ToolchainError, filesystem_error, run_cli
from pipeline.dfc import layer_roles
from pipeline.files import atomic_path, sha256_file, write_bytes_atomic, write_json_atomic, write_text_atomic
from pipeline.dfc.inputs import NetworkExport, check_calibration, check_onnx_file, load_calibration
from pipeline.dfc.model_scripts import ResolvedScript
from pipeline.layout import har_path
from pipeline.tables import get_arch

DFC_DISTRIBUTION = "hailo_dataflow_compiler"  # the wheel's distribution name

_HOW_TO_SUPPLY = (
    "The DFC is licensed and not on PyPI: download hailo_dataflow_compiler-{version}-py3-none-"
    "linux_x86_64.whl (or newer {major}.x) from Hailo's Developer Zone, put it in vendor/ and run "
    "the stage in the DFC image (the default), or `pip install` it into this environment for "
    "--no-docker. `make dfc-double-wheel` puts a test double (not deployable) in vendor/ for a "
    "rehearsal."
)

# --- the DFC itself ----------------------------------------------------------------------------


def _import_client(arch: str = "hailo8l"):
    """hailo_sdk_client, or a ToolchainError saying how to supply it."""
    try:
        return importlib.import_module("hailo_sdk_client")
    except ImportError as err:
        image = get_arch(arch).dfc
        raise ToolchainError(
            f"The Hailo Dataflow Compiler (Python package hailo_sdk_client) is not importable: {err}.",
            _HOW_TO_SUPPLY.format(version=image.min_dfc_version, major=image.dfc_major),
        ) from None


def installed_dfc_version(arch: str = "hailo8l") -> str:
    """Version of the installed DFC, e.g. '3.31.0' (or '3.31.0+testdouble' for the test double).

    The wheel's metadata when that wheel holds the hailo_sdk_client that imports here; otherwise
    (a DFC on sys.path ahead of an installed wheel, or none installed) the module's __version__.
    """
    from importlib import metadata, util

    try:
        dist = metadata.distribution(DFC_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        spec = util.find_spec("hailo_sdk_client")
        wheel_module = Path(dist.locate_file("hailo_sdk_client/__init__.py")).resolve()
        if spec is None or spec.origin is None or Path(spec.origin).resolve() == wheel_module:
            return dist.version
    client = _import_client(arch)
    version = getattr(client, "__version__", None)
    if not version:
        raise ToolchainError(
            "hailo_sdk_client is importable but reports no version (no "
            f"{DFC_DISTRIBUTION} metadata, no __version__).",
            "Install the DFC from its wheel (pip install hailo_dataflow_compiler-...whl) so its "
            "version can be checked against the target architecture.",
        )
    return str(version)


def _release(version: str) -> tuple[int, ...]:
    """'3.31.0+testdouble' -> (3, 31, 0)."""
    match = re.match(r"^(\d+(?:\.\d+)*)", version.strip())
    if not match:
        raise ToolchainError(f"DFC version {version!r} is not a version number.",
                             "Reinstall the DFC from its original wheel.")
    return tuple(int(p) for p in match.group(1).split("."))


def check_dfc_version(arch: str, version: Optional[str] = None) -> str:
    """Refuse a DFC that cannot compile for `arch` (hailo8/hailo8l: 3.x, hailo10h: 5.x).

    Returns the version. Called before parsing, so a mismatch costs seconds, not hours.
    """
    image = get_arch(arch).dfc
    version = version or installed_dfc_version(arch)
    release = _release(version)
    wheel = f"hailo_dataflow_compiler-{image.min_dfc_version}-py3-none-linux_x86_64.whl"
    if release[0] != image.dfc_major:
        raise ToolchainError(
            f"{arch} needs the Dataflow Compiler {image.dfc_major}.x, but DFC {version} is installed.",
            f"Install {wheel} (or newer {image.dfc_major}.x): put it in vendor/ and use the "
            f"{image.name} image, or pip install it for --no-docker.",
        )
    if release < _release(image.min_dfc_version):
        raise ToolchainError(
            f"DFC {version} is older than {image.min_dfc_version}, the oldest known to convert "
            "Whisper (hailo-whisper asks for it).",
            f"Install {wheel} (or newer {image.dfc_major}.x) from Hailo's Developer Zone.",
        )
    return version


def _state_name(state) -> str:
    """'HAILO_MODEL' for States.HAILO_MODEL, whatever the enum's values are."""
    return str(getattr(state, "name", state)).split(".")[-1].upper()


# The states each step starts from. hailo_model_zoo compares runner.state with
# States.HAILO_MODEL / QUANTIZED_MODEL / COMPILED_MODEL; FP_OPTIMIZED_MODEL is a parsed model with
# the script's float-level changes applied (optimize_full_precision), still to be quantized.
_OPTIMIZE_FROM = ("HAILO_MODEL", "FP_OPTIMIZED_MODEL")
_COMPILE_FROM = ("QUANTIZED_MODEL", "QUANTIZED_SLIM_MODEL")


def _remove_stale(paths, keep: Path) -> None:
    """Remove a step's outputs from an earlier run (never its input), so a failed step leaves none."""
    for path in paths:
        if Path(path).resolve() != Path(keep).resolve():
            with contextlib.suppress(FileNotFoundError):
                Path(path).unlink()


def _runner(arch: str, har: Optional[Path] = None):
    """ClientRunner(hw_arch=arch[, har=path]); a HAR the DFC cannot load is a ToolchainError."""
    client = _import_client(arch)
    try:
        if har is None:
            return client.ClientRunner(hw_arch=arch)
        return client.ClientRunner(hw_arch=arch, har=str(har))
    except Exception as err:  # the DFC raises its own types; the message is what matters
        what = f"load HAR {har}" if har else f"start for {arch}"
        raise ToolchainError(
            f"The DFC could not {what}: {type(err).__name__}: {err}.",
            "Check that the HAR was written by this DFC version for this architecture, or run "
            "the previous stage again." if har else f"Check that this DFC supports {arch}.",
        ) from err


def load_hn(arch: str, har: Path) -> dict:
    """The network description (HN) of a saved HAR."""
    return _hn(_runner(arch, har))


def _hn(runner) -> dict:
    hn = runner.get_hn()
    return json.loads(hn) if isinstance(hn, (str, bytes)) else dict(hn)


def _layers_of_type(hn: dict, kind: str) -> dict[str, Any]:
    return {name: layer for name, layer in hn.get("layers", {}).items() if layer.get("type") == kind}


def input_layer_shapes(hn: dict) -> dict[str, list]:
    """{"<net>/input_layer1": [-1, H, W, C], ...} from a network description."""
    return {name: list(layer.get("input_shapes", [[]])[0])
            for name, layer in sorted(_layers_of_type(hn, "input_layer").items())}


def output_layer_names(hn: dict) -> list[str]:
    return sorted(_layers_of_type(hn, "output_layer"))


def _save_har(runner, path: Path) -> dict:
    with atomic_path(path) as tmp:
        _dfc_call(f"saving {path.name} (save_har)", runner.save_har, str(tmp))
        if not tmp.is_file():
            raise ToolchainError(f"The DFC did not write {tmp} when asked to save {path}.",
                                 "See the DFC output above for why.")
    return {"path": str(path), "sha256": sha256_file(path)}


def _dfc_call(step: str, fn, *args, **kwargs):
    """Run one DFC call; its own exceptions become a ToolchainError naming the step."""
    try:
        return fn(*args, **kwargs)
    except ToolchainError:
        raise
    except OSError as err:
        # A full disk or a read-only folder under save_har is the host's problem, not the DFC's:
        # name the path and that fix (pipeline.errors), not "fix the input".
        translated = filesystem_error(err, step)
        if translated is None:
            raise ToolchainError(f"The DFC failed during {step}: {type(err).__name__}: {err}.",
                                 "The DFC output above (and the stage log) says more.") from err
        raise translated from err
    except Exception as err:
        raise ToolchainError(
            f"The DFC failed during {step}: {type(err).__name__}: {err}.",
            "The DFC output above (and the stage log) says more; fix the input it names and run "
            "the stage again, starting from the last saved HAR.",
        ) from err


# --- the three steps ----------------------------------------------------------------------------


def parse(network: NetworkExport, arch: str, out_dir: Path) -> dict:
    """ONNX -> <out_dir>/<net>.har. Returns the result fields (see pipeline/dfc/parse.py)."""
    version = check_dfc_version(arch)
    onnx_sha256 = check_onnx_file(network)
    runner = _runner(arch)
    started = time.monotonic()
    _dfc_call(
        "parsing (translate_onnx_model)",
        runner.translate_onnx_model,
        str(network.onnx_path),
        network.net_name,
        start_node_names=list(network.start_node_names),
        end_node_names=list(network.end_node_names),
        net_input_shapes={k: list(v) for k, v in network.net_input_shapes.items()} or None,
    )
    hn = _hn(runner)
    saved = _save_har(runner, har_path(out_dir, network.net_name, "parse"))  # replaces an old one
    return {
        "dfc_version": version,
        "arch": arch,
        "model": network.model,
        "net_name": network.net_name,
        "onnx": str(network.onnx_path),
        "onnx_sha256": onnx_sha256,
        "start_node_names": list(network.start_node_names),
        "end_node_names": list(network.end_node_names),
        "net_input_shapes": dict(network.net_input_shapes),
        "input_layers": input_layer_shapes(hn),
        "output_layers": output_layer_names(hn),
        "har": saved["path"],
        "har_sha256": saved["sha256"],
        "dfc_s": round(time.monotonic() - started, 3),
    }


def optimize(har: Path, network: NetworkExport, arch: str, calib_path: Path,
             script: ResolvedScript, out_dir: Path) -> dict:
    """Parsed HAR -> <out_dir>/<net>_optimized.har, with `script` written to <out_dir>/<net>.alls.

    Everything the DFC would fail on late (calibration layout, shape, size) is checked first.
    """
    version = check_dfc_version(arch)
    har = Path(har)
    if not har.is_file():
        raise ToolchainError(f"HAR {har} does not exist.", "Run parse first (python -m pipeline.dfc.parse).")
    needs = script.needs
    why = f"calibset_size={needs.calibset_size}"
    if needs.finetune_dataset_size:
        why += f", fine-tune dataset_size={needs.finetune_dataset_size}"
    calib = load_calibration(calib_path, network)
    runner = _runner(arch, har)
    if _state_name(runner.state) not in _OPTIMIZE_FROM:
        raise ToolchainError(
            f"HAR {har} is in state {runner.state}, not a parsed model: optimize starts from the "
            "HAR that parse wrote.",
            f"Pass {har_path(har.parent, network.net_name, 'parse').name} from parse.",
        )
    if runner.model_name != network.net_name:
        raise ToolchainError(
            f"HAR {har} holds the network {runner.model_name!r}, but export.json's {network.model} is "
            f"{network.net_name!r}: it was parsed from another export.",
            "Run parse again from this export directory (or pass the HAR parse wrote for it).")
    hn = _hn(runner)
    # Layer names first: a name the HAR lacks would fail (or be ignored) after hours of calibration.
    alls_text, role_table, har_layers = layer_roles.resolve_for_har(
        script.text, script.profile != "custom", network.model,
        layer_roles.blocks_of(network.variant, network.model), hn, script.source)
    entries = check_calibration(calib, network, input_layer_shapes(hn), needs.entries, why, Path(calib_path))
    optimized = har_path(out_dir, network.net_name, "optimize")
    _remove_stale([optimized], keep=har)
    alls_path = write_text_atomic(Path(out_dir) / f"{network.net_name}.alls", alls_text)
    layers_path = write_json_atomic(Path(out_dir) / f"{network.net_name}.layers.json",
                                    {"har_layers": har_layers, "roles": role_table})
    # hailo-whisper passes work_dir= (conversion/convert_whisper_*.py); keep the DFC's temporary
    # files in the stage's output folder instead of the container's working directory.
    work_dir = Path(out_dir) / "optimize-work"
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _dfc_call("load_model_script", runner.load_model_script, str(alls_path))
    _dfc_call("optimization (optimize)", runner.optimize, calib, work_dir=str(work_dir))
    saved = _save_har(runner, optimized)
    return {
        "dfc_version": version,
        "arch": arch,
        "model": network.model,
        "net_name": network.net_name,
        "har_in": str(har),
        "har_in_sha256": sha256_file(har),
        "calib": str(calib_path),
        "calib_sha256": sha256_file(calib_path),
        "calib_entries": entries,
        "calib_needed": {"calibset_size": needs.calibset_size,
                         "finetune_dataset_size": needs.finetune_dataset_size},
        "profile": script.profile,
        "model_script_source": script.source,
        "model_script": str(alls_path),
        "model_script_sha256": sha256_file(alls_path),
        "noise_analysis": script.noise_analysis,
        "layer_roles": role_table,
        "layers_json": str(layers_path),
        "har_layer_count": len(har_layers),
        "output_layers": output_layer_names(hn),
        "har": saved["path"],
        "har_sha256": saved["sha256"],
        "dfc_s": round(time.monotonic() - started, 3),
    }


def compile_har(har: Path, arch: str, out_dir: Path, model_script: Optional[Path] = None) -> dict:
    """Optimized HAR -> <out_dir>/<net>.hef (atomic) and <net>_compiled.har.

    `model_script` (the resolved <net>.alls optimize used) is loaded before compile(), as the Model
    Zoo does (hailo_model_zoo/core/main_utils.py compile_model): its compile-time commands
    (performance_param, resources_param) need not survive in the HAR.
    A stale .hef from an earlier compile is removed first, so a failed compile leaves none.
    """
    version = check_dfc_version(arch)
    har = Path(har)
    if not har.is_file():
        raise ToolchainError(f"HAR {har} does not exist.",
                             "Run optimize first (python -m pipeline.dfc.optimize).")
    if model_script is not None and not Path(model_script).is_file():
        raise ToolchainError(f"Model script {model_script} does not exist.",
                             "Pass the <net>.alls that optimize wrote beside the optimized HAR.")
    runner = _runner(arch, har)
    if _state_name(runner.state) not in _COMPILE_FROM:
        raise ToolchainError(
            f"HAR {har} is in state {runner.state}, not an optimized (quantized) model.",
            "Pass the <net>_optimized.har that optimize wrote.",
        )
    net_name = runner.model_name
    hef_path = Path(out_dir) / f"{net_name}.hef"
    _remove_stale([hef_path, har_path(out_dir, net_name, "compile")], keep=har)
    started = time.monotonic()
    if model_script is not None:
        _dfc_call("load_model_script", runner.load_model_script, str(model_script))
    hef = _dfc_call("compilation (compile)", runner.compile)
    if not isinstance(hef, (bytes, bytearray)) or not hef:
        raise ToolchainError(f"The DFC's compile() returned {type(hef).__name__}, not HEF bytes.",
                             "Check the DFC version; this toolchain expects compile() -> bytes.")
    saved = _save_har(runner, har_path(out_dir, net_name, "compile"))
    write_bytes_atomic(hef_path, bytes(hef))
    return {
        "dfc_version": version,
        "arch": arch,
        "net_name": net_name,
        "har_in": str(har),
        "har_in_sha256": sha256_file(har),
        "hef": str(hef_path),
        "hef_sha256": sha256_file(hef_path),
        "hef_bytes": len(hef),
        "model_script": str(model_script) if model_script else None,
        "model_script_sha256": sha256_file(model_script) if model_script else None,
        "compiled_har": saved["path"],
        "compiled_har_sha256": saved["sha256"],
        "dfc_s": round(time.monotonic() - started, 3),
    }


# --- emulation (the accuracy ladder's native and quantized rows) ---------------------------------


EMULATION_CONTEXTS = {"native": "SDK_NATIVE", "quantized": "SDK_QUANTIZED"}


class Emulator:
    """One HAR under one DFC inference context: `run(data)` is `runner.infer(ctx, data)`.

    data: one NHWC array (single-input network) or {"<net>/input_layerN": NHWC array}; returns
    the DFC's outputs (one array, or a list in output order). The context stays open until
    `close()`, so a decoding loop does not rebuild the emulated graph at every step.
    """

    def __init__(self, har: Path, context: str):
        if context not in EMULATION_CONTEXTS:
            raise ToolchainError(f"Unknown emulation context {context!r}.",
                                 f"Choose one of: {', '.join(EMULATION_CONTEXTS)}.")
        har = Path(har)
        if not har.is_file():
            raise ToolchainError(f"HAR {har} does not exist.", "Run the stage that writes it first.")
        client = _import_client()
        self.har, self.context = har, context
        self._runner = _dfc_call(f"loading {har.name}", client.ClientRunner, har=str(har))
        enum = getattr(client, "InferenceContext", None) or importlib.import_module(
            "hailo_sdk_client.exposed_definitions").InferenceContext
        self._stack = contextlib.ExitStack()
        self._ctx = _dfc_call(f"opening the {context} emulator on {har.name}",
                              lambda: self._stack.enter_context(
                                  self._runner.infer_context(getattr(enum, EMULATION_CONTEXTS[context]))))

    @property
    def net_name(self) -> str:
        return self._runner.model_name

    def run(self, data):
        return _dfc_call(f"emulating {self.har.name} ({self.context})", self._runner.infer, self._ctx, data)

    def close(self) -> None:
        self._stack.close()


# --- running a step as a stage: console capture, timeline, result JSON ------------------------


RESULT_FORMAT = 1


def run_dfc_step(stage: str, out_dir: Path, work, log: Optional[Path] = None) -> dict:
    """Run `work()` (one of parse/optimize/compile_har above), then write <out_dir>/<stage>.json.

    The DFC's console output is teed into <out_dir>/<stage>-dfc.log while it runs and parsed into
    the result's "timeline" and "summary" (pipeline/dfc/timeline.py). With `log`, that file (e.g. the
    launcher's logs/<model>-<stage>.log) is parsed instead and nothing is captured. A stale result
    JSON is removed first; a failed step writes none, so its presence means success.
    """
    from datetime import datetime, timezone

    from pipeline.dfc import timeline
    from pipeline.files import write_json_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / f"{stage}.json"
    with contextlib.suppress(FileNotFoundError):
        result_path.unlink()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    started = time.monotonic()
    if log is None:
        log = out_dir / f"{stage}-dfc.log"
        with timeline.capture_console(log):
            fields = work()
    else:
        fields = work()
    parsed = timeline.parse_log_file(log) if Path(log).is_file() else {"events": [], "summary": {}}
    result = {
        "format": RESULT_FORMAT,
        "stage": stage,
        "ok": True,
        "started_at": started_at,
        "duration_s": round(time.monotonic() - started, 3),
        **fields,
        "dfc_is_test_double": "testdouble" in fields.get("dfc_version", ""),
        "log": str(log),
        "timeline": parsed["events"],
        "summary": parsed["summary"],
    }
    if stage == "optimize":
        result["snr_db"] = parsed["summary"].get("snr_db", {})
    if stage == "compile":
        result["contexts"] = parsed["summary"].get("contexts")
    write_json_atomic(result_path, result)
    return result


def cli_main(parser, run, argv=None) -> int:
    """Shared entry point of the stage CLIs: parse flags, run, print the result as JSON."""
    args = parser.parse_args(argv)

    def action():
        result = run(args)
        print(json.dumps({k: v for k, v in result.items() if k not in ("timeline",)}, indent=2))

    return run_cli(action)
