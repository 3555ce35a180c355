"""ClientRunner of the TEST DOUBLE: real call signatures, strict checks, placeholder outputs.

What it checks for real: the ONNX loads; start/end node names exist and cut a connected network;
net_input_shapes agree with the ONNX; calibration data is NHWC with the parsed input shapes and
(for several inputs) keyed by the input layer names; model-script commands are known; the step
order (parse -> optimize -> compile). What it cannot do: quantize or compile. Its HAR is a tar of
JSON, its HEF a text placeholder; both say NOT DEPLOYABLE.
"""

import contextlib
import hashlib
import io
import json
import math
import os
import re
import sys
import tarfile
import time

import numpy as np

from hailo_sdk_client import model_script, naming
from hailo_sdk_client.exposed_definitions import States

NOT_DEPLOYABLE = "NOT DEPLOYABLE - written by the DFC test double (tests/dfc_double), not the Hailo DFC"
HAR_FORMAT = "dfc-test-double-har-1"
HEF_MAGIC = b"DFC-TEST-DOUBLE-HEF-PLACEHOLDER NOT DEPLOYABLE\n"
_ARCHS = {3: {"hailo8", "hailo8l", "hailo8r", "hailo15h", "hailo15m"},
          5: {"hailo10h", "hailo15h", "hailo15m", "hailo15l"}}
# Layers one context holds in the double's pretend partitioner (Hailo-8L has fewer resources).
_DEFAULT_ARCH = {3: "hailo8", 5: "hailo10h"}
_LAYERS_PER_CONTEXT = {"hailo8l": 24, "hailo8": 48, "hailo8r": 48}
_DEFAULT_LAYERS_PER_CONTEXT = 64


class DoubleError(Exception):
    """What the double raises where the DFC raises one of its own exception types."""


def _version():
    import hailo_sdk_client

    return hailo_sdk_client.__version__


def _info(message):
    print(f"[info] {message}", flush=True)


def _warning(message):
    print(f"[warning] {message}", flush=True)


def _clock(seconds):
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{int(hours):02d}:{int(minutes):02d}:{secs:05.2f}"


def _progress(label, total, started, unit="entries"):
    elapsed = max(time.monotonic() - started, 1e-6)
    mins, secs = divmod(int(elapsed), 60)
    bar = "#" * 10
    sys.stderr.write(f"\r{label}: 100%|{bar}| {total}/{total} [{mins:02d}:{secs:02d}<00:00, "
                     f"{total / elapsed:.2f}{unit}/s]\n")
    sys.stderr.flush()


def _chaos(step):
    """HAILO_DOUBLE_FAIL_AT / HAILO_DOUBLE_HANG_AT: fail or stall at a chosen step."""
    if os.environ.get("HAILO_DOUBLE_FAIL_AT") == step:
        raise DoubleError(f"simulated DFC failure at {step} (HAILO_DOUBLE_FAIL_AT={step})")
    if os.environ.get("HAILO_DOUBLE_HANG_AT") == step:
        _info(f"(test double) hanging at {step} (HAILO_DOUBLE_HANG_AT={step})")
        while True:
            time.sleep(1)


@contextlib.contextmanager
def _algorithm(name):
    _info(f"Starting {name}")
    started = time.monotonic()
    yield started
    _info(f"Model Optimization Algorithm {name} is done (completion time is "
          f"{_clock(time.monotonic() - started)})")


def _nhwc(shape):
    """The DFC's view of an ONNX input: NCHW [N,C,H,W] -> [-1,H,W,C]; [N,W,C] -> [-1,1,W,C]."""
    shape = list(shape)
    if len(shape) == 4:
        return [-1, shape[2], shape[3], shape[1]]
    if len(shape) == 3:
        return [-1, 1, shape[1], shape[2]]
    if len(shape) == 2:
        return [-1, 1, 1, shape[1]]
    raise DoubleError(f"unsupported input rank {len(shape)} ({shape})")


def _static_shape(value_info):
    dims = value_info.type.tensor_type.shape.dim
    if not dims or any(not d.HasField("dim_value") for d in dims):
        return None
    return [d.dim_value for d in dims]


class ClientRunner:
    """ClientRunner(hw_arch=None, har=None), as in hailo_model_zoo/main_driver.py."""

    def __init__(self, hw_arch=None, har=None):
        self._version = _version()
        major = int(self._version.split(".")[0])
        self._state = States.UNINITIALIZED
        self._hn = None
        self._script = ""
        self._commands = []
        self._record = {}
        self.hw_arch = hw_arch
        if har is not None:
            self.load_har(har)
            if hw_arch is not None and hw_arch != self.hw_arch:
                raise DoubleError(f"HAR {har} was made for {self.hw_arch}, not {hw_arch}")
        if self.hw_arch is None:
            # ClientRunner() with no arguments works (public tutorials create it so); the default
            # architecture per DFC major is an assumption.
            self.hw_arch = _DEFAULT_ARCH.get(major, "hailo8")
        if self.hw_arch not in _ARCHS.get(major, set()):
            raise DoubleError(f"DFC {self._version} does not support hw_arch={self.hw_arch!r} "
                              f"(supported: {sorted(_ARCHS.get(major, set()))})")

    # --- state --------------------------------------------------------------------------------
    @property
    def state(self):
        return self._state

    @property
    def model_name(self):
        return self._hn["name"] if self._hn else None

    @property
    def model_script(self):
        return self._script

    def get_hn(self):
        if self._hn is None:
            raise DoubleError("no model: parse (translate_onnx_model) or load a HAR first")
        return json.loads(json.dumps(self._hn))

    # --- parse --------------------------------------------------------------------------------
    def translate_onnx_model(self, model=None, net_name="model", start_node_names=None,
                             end_node_names=None, net_input_shapes=None, augmented_path=None,
                             disable_shape_inference=False, disable_rt_metadata_extraction=False,
                             net_input_format=None, **kwargs):
        import onnx

        if self._state != States.UNINITIALIZED:
            raise DoubleError(f"translate_onnx_model needs a fresh runner (state is {self._state})")
        if not isinstance(model, (str, os.PathLike)):
            raise DoubleError(f"model must be an ONNX file path, got {type(model).__name__}")
        # hailo-whisper passes the ONNX file stem (tiny-whisper-encoder-10s, tiny.en-whisper-...).
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", net_name or ""):
            raise DoubleError(f"net_name {net_name!r} must be letters, digits, '_', '-' and '.'")
        started = time.monotonic()
        _info(f"Translation started on ONNX model {net_name}")
        _chaos("parse")
        try:
            graph_model = onnx.load(os.fspath(model))
            onnx.checker.check_model(graph_model)
        except Exception as err:
            raise DoubleError(f"Failed to load ONNX model {model}: {err}") from err
        _info(f"Restored ONNX model {net_name} (completion time: {_clock(time.monotonic() - started)})")
        graph = graph_model.graph
        initializers = {i.name for i in graph.initializer}
        graph_inputs = [i for i in graph.input if i.name not in initializers]
        input_names = [i.name for i in graph_inputs]
        nodes_by_name = {n.name: n for n in graph.node}
        producer = {out: n for n in graph.node for out in n.output}
        start = list(start_node_names or input_names)
        end = list(end_node_names or [producer[o.name].name for o in graph.output if o.name in producer])
        for name in start:
            if name not in nodes_by_name and name not in input_names:
                raise DoubleError(f"Unable to find start node {name!r} in the ONNX graph "
                                  f"(inputs: {input_names})")
        for name in end:
            if name not in nodes_by_name:
                raise DoubleError(f"Unable to find end node {name!r} in the ONNX graph")
        shapes = dict(net_input_shapes or {})
        for name in shapes:
            if name not in start:
                raise DoubleError(f"net_input_shapes names {name!r}, which is not a start node {start}")

        inferred = {}
        with contextlib.suppress(Exception):
            typed = onnx.shape_inference.infer_shapes(graph_model)
            for vi in list(typed.graph.value_info) + list(typed.graph.input) + list(typed.graph.output):
                inferred[vi.name] = _static_shape(vi)

        def start_shape(name):
            if name in input_names:
                declared = _static_shape(graph_inputs[input_names.index(name)])
                given = shapes.get(name)
                if given is not None and declared is not None and list(given) != declared:
                    raise DoubleError(f"net_input_shapes[{name!r}] = {list(given)} but the ONNX "
                                      f"input is {declared}")
                shape = given or declared
            else:
                node = nodes_by_name[name]
                data_inputs = [i for i in node.input if i and i not in initializers]
                shape = shapes.get(name) or (inferred.get(data_inputs[0]) if data_inputs else None)
            if not shape:
                raise DoubleError(f"cannot tell the input shape at start node {name!r}: "
                                  "pass net_input_shapes")
            return list(shape)

        input_layers = {}
        for index, name in enumerate(start, start=1):
            input_layers[f"{net_name}/input_layer{index}"] = {
                "type": "input_layer", "original_names": [name],
                "input_shapes": [_nhwc(start_shape(name))]}

        # Walk back from the end nodes; every path must stop at a start node or a constant.
        start_nodes = {n for n in start if n in nodes_by_name}
        start_tensors = {n for n in start if n in input_names}
        kept, stack = [], [nodes_by_name[n] for n in end]
        seen = set()
        while stack:
            node = stack.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            kept.append(node)
            if node.name in start_nodes:
                continue
            for tensor in node.input:
                if not tensor or tensor in initializers or tensor in start_tensors:
                    continue
                if tensor in producer:
                    stack.append(producer[tensor])
                elif tensor in input_names:
                    raise DoubleError(
                        f"The network between start nodes {start} and end nodes {end} also "
                        f"depends on graph input {tensor!r}, which is not a start node")
        onnx_order = {n.name: i for i, n in enumerate(graph.node)}
        kept.sort(key=lambda n: onnx_order[n.name])
        activations = set(start_tensors) | {t for n in start_nodes for t in nodes_by_name[n].input}
        for node in kept:
            if node.name in start_nodes or any(t in activations for t in node.input):
                activations.update(node.output)
        constants = set(initializers) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        ranks = {name: len(shape) for name, shape in inferred.items() if shape}
        layers = dict(input_layers)
        layers.update(naming.build_layers(kept, net_name, start_nodes, constants, ranks, activations))
        for index, name in enumerate(end, start=1):
            out = nodes_by_name[name].output[0]
            layers[f"{net_name}/output_layer{index}"] = {
                "type": "output_layer", "original_names": [name],
                "output_shapes": [inferred.get(out) or []]}
        mapped = ", ".join(f"'{n}': '{net_name}/input_layer{i}'" for i, n in enumerate(start, 1))
        _info(f"Start nodes mapped from original model: {mapped}.")
        _info(f"End nodes mapped from original model: {', '.join(repr(n) for n in end)}.")
        self._hn = {"name": net_name, "net_params": {"version": self._version, "hw_arch": self.hw_arch,
                                                     "note": NOT_DEPLOYABLE},
                    "layers": layers}
        with open(model, "rb") as f:
            self._record = {"onnx_sha256": hashlib.sha256(f.read()).hexdigest()}
        self._state = States.HAILO_MODEL
        _info(f"Translation completed on ONNX model {net_name} (completion time: "
              f"{_clock(time.monotonic() - started)})")
        return self._hn

    # --- model script ---------------------------------------------------------------------------
    def load_model_script(self, model_script_path_or_text=None, append=False):
        if self._hn is None:
            raise DoubleError("load a model (parse or HAR) before its model script")
        text = model_script_path_or_text
        source = "string"
        if isinstance(text, os.PathLike) or (isinstance(text, str) and "(" not in text):
            path = os.fspath(text)
            if not os.path.isfile(path):
                raise DoubleError(f"model script file {path} not found")
            with open(path) as f:
                text, source = f.read(), path
        if not isinstance(text, str):
            raise DoubleError("load_model_script takes a file path or the script text")
        commands = model_script.parse(text)  # raises ModelScriptError
        _info(f"Loading model script commands to {self.model_name} from {source}")
        if append:
            self._script = (self._script.rstrip("\n") + "\n" + text).lstrip("\n")
            self._commands = self._commands + commands
        else:
            self._script, self._commands = text, commands

    # --- optimize -----------------------------------------------------------------------------
    def _input_layers(self):
        return {name: layer for name, layer in self._hn["layers"].items()
                if layer["type"] == "input_layer"}

    def _check_calibration(self, calib_data):
        inputs = self._input_layers()
        if isinstance(calib_data, np.ndarray):
            if len(inputs) != 1:
                raise DoubleError(f"the model has {len(inputs)} inputs {sorted(inputs)}: pass a dict "
                                  "keyed by input layer name, not one array")
            calib_data = {next(iter(inputs)): calib_data}
        elif isinstance(calib_data, dict):
            if set(calib_data) != set(inputs):
                raise DoubleError(f"calibration dict keys {sorted(calib_data)} are not the input "
                                  f"layers {sorted(inputs)}")
        else:
            raise DoubleError(f"the double takes a numpy array or dict of arrays, not "
                              f"{type(calib_data).__name__}")
        counts = set()
        for name, data in calib_data.items():
            want = inputs[name]["input_shapes"][0][1:]
            if not isinstance(data, np.ndarray) or data.ndim != 4 or list(data.shape[1:]) != want:
                got = list(getattr(data, "shape", []))
                raise DoubleError(f"calibration data for {name} has shape {got}, expected "
                                  f"[N, {', '.join(map(str, want))}] (NHWC)")
            if not np.issubdtype(data.dtype, np.floating) or not np.all(np.isfinite(data)):
                raise DoubleError(f"calibration data for {name} must be finite floats")
            counts.add(data.shape[0])
        if len(counts) != 1:
            raise DoubleError(f"calibration inputs have different entry counts {sorted(counts)}")
        return calib_data, counts.pop()

    def optimize_full_precision(self, calib_data=None, data_type="auto"):
        if self._state != States.HAILO_MODEL:
            raise DoubleError(f"optimize_full_precision needs a parsed model (state is {self._state})")
        if calib_data is not None:
            self._check_calibration(calib_data)
        self._state = States.FP_OPTIMIZED_MODEL

    def optimize(self, calib_data, data_type="auto", work_dir=None):
        if self._state not in (States.HAILO_MODEL, States.FP_OPTIMIZED_MODEL):
            raise DoubleError(f"optimize needs a parsed model (state is {self._state})")
        data, entries = self._check_calibration(calib_data)
        cfg = model_script.settings(self._commands)
        _info("Starting Model Optimization")
        _chaos("optimize")
        if entries < cfg["calibset_size"]:
            raise DoubleError(f"calibset_size={cfg['calibset_size']} but the dataset has {entries} entries")
        with _algorithm("Statistics Collector") as started:
            _info(f"Using dataset with {cfg['calibset_size']} entries for calibration")
            stats = {name: {"min": float(array[:cfg["calibset_size"]].min()),
                            "max": float(array[:cfg["calibset_size"]].max())}
                     for name, array in data.items()}
            _progress("Calibration", cfg["calibset_size"], started)
        if cfg["finetune_dataset_size"] and cfg["optimization_level"] > 0:
            if entries < cfg["finetune_dataset_size"]:
                raise DoubleError(f"finetune dataset_size={cfg['finetune_dataset_size']} but the "
                                  f"dataset has {entries} entries")
            with _algorithm("Quantization-Aware Fine-Tuning"):
                _info(f"Using dataset with {cfg['finetune_dataset_size']} entries for finetune")
                for epoch in range(1, cfg["finetune_epochs"] + 1):
                    print(f"Epoch {epoch}/{cfg['finetune_epochs']}", flush=True)
        else:
            _info("Quantization-Aware Fine-Tuning skipped")
        snr = {}
        if cfg["noise_analysis"]:
            with _algorithm("Layer Noise Analysis") as started:
                _progress("Full Quant Analysis", 2, started, unit="iterations")
                snr = self._pretend_snr(data, stats)
            _info("Output layers signal-to-noise ratio (SNR): measures the quantization noise "
                  "(higher is better)")
            for layer, value in snr.items():
                _info(f"\t{layer} SNR:\t{value:.3f} dB")
        _info("Model Optimization is done")
        self._record.update(calibration_entries=entries, statistics=stats, snr_db=snr)
        self._state = States.QUANTIZED_MODEL

    def _pretend_snr(self, data, stats):
        """SNR of 8-bit uniform quantization of the calibration inputs: a real number computed
        from the data, labelled per output layer; NOT the model's quantization noise."""
        signal = np.concatenate([a.ravel() for a in data.values()]).astype(np.float64)
        lo = min(s["min"] for s in stats.values())
        hi = max(s["max"] for s in stats.values())
        step = (hi - lo) / 255 or 1.0
        noise = signal - (np.round((signal - lo) / step) * step + lo)
        ratio = float(np.mean(signal ** 2) / max(np.mean(noise ** 2), 1e-30))
        value = 10 * math.log10(ratio) if ratio > 0 else float("-inf")
        outputs = [n for n, l in self._hn["layers"].items() if l["type"] == "output_layer"]
        return {name: round(value, 3) for name in outputs}

    # --- compile ------------------------------------------------------------------------------
    def compile(self):
        if self._state != States.QUANTIZED_MODEL:
            raise DoubleError(f"compile() needs an optimized (quantized) model; state is "
                              f"{self._state}. Call optimize() first.")
        _info("Loading network parameters")
        _info("Starting Hailo allocation and compilation flow")
        started = time.monotonic()
        _chaos("compile")
        layer_count = len(self._hn["layers"])
        per_context = _LAYERS_PER_CONTEXT.get(self.hw_arch, _DEFAULT_LAYERS_PER_CONTEXT)
        contexts = max(1, math.ceil(layer_count / per_context))
        _info("Building optimization options for network layers...")
        _info(f"Successfully built optimization options - 0s {int((time.monotonic() - started) * 1000)}ms")
        _info("Trying to compile the network in a single context")
        if contexts > 1:
            _info("Single context flow failed: Recoverable single context error")
            _info("Using Multi-context flow")
            _info("Finding the best partition to contexts...")
            print(f"Found valid partition to {contexts} contexts", flush=True)
            _info("Partition to contexts finished successfully")
            _info(f"Partitioner finished after 1 iterations, Time it took: 0s "
                  f"{int((time.monotonic() - started) * 1000)}ms")
            _info(f"Applying selected partition to {contexts} contexts...")
        compile_commands = [f"{name}({', '.join(list(args) + [f'{k}={v}' for k, v in kwargs.items()])})"
                            for name, args, kwargs, _ in self._commands if name in model_script.COMPILE_COMMANDS]
        _info(f"Compile-time model script commands: {compile_commands or 'none loaded'}")
        header = {"note": NOT_DEPLOYABLE, "net_name": self.model_name, "hw_arch": self.hw_arch,
                  "compile_commands": compile_commands,
                  "dfc_version": self._version, "contexts": contexts,
                  "hn_sha256": hashlib.sha256(json.dumps(self._hn, sort_keys=True).encode()).hexdigest()}
        self._state = States.COMPILED_MODEL
        self._record["contexts"] = contexts
        return HEF_MAGIC + json.dumps(header, indent=2).encode() + b"\n"

    # --- HAR ----------------------------------------------------------------------------------
    def save_har(self, har_path, compressed=False):
        if self._hn is None:
            raise DoubleError("nothing to save: no model")
        _chaos("save_har")
        state = {"format": HAR_FORMAT, "note": NOT_DEPLOYABLE, "dfc_version": self._version,
                 "hw_arch": self.hw_arch, "state": self._state.value, "record": self._record}
        # The model script is NOT saved: the Model Zoo loads it again before compile()
        # (hailo_model_zoo/core/main_utils.py compile_model), so the double makes forgetting that visible.
        with tarfile.open(os.fspath(har_path), "w") as tar:
            for name, payload in (("NOT_DEPLOYABLE.txt", NOT_DEPLOYABLE + "\n"),
                                  (f"{self.model_name}.hn", json.dumps(self._hn, indent=1)),
                                  ("double_state.json", json.dumps(state, indent=1))):
                blob = payload.encode()
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        _info(f"Saved HAR to: {os.path.abspath(har_path)}")

    def load_har(self, har=None):
        path = os.fspath(har)
        try:
            with tarfile.open(path, "r") as tar:
                members = {m.name: m for m in tar.getmembers()}
                state = json.loads(tar.extractfile(members["double_state.json"]).read())
                hn_member = next(n for n in members if n.endswith(".hn"))
                hn = json.loads(tar.extractfile(members[hn_member]).read())
        except (OSError, tarfile.TarError, KeyError, StopIteration, ValueError) as err:
            raise DoubleError(f"{path} is not a HAR this DFC can read: {err}") from err
        if state.get("format") != HAR_FORMAT:
            raise DoubleError(f"{path}: unknown HAR format {state.get('format')!r}")
        if state["dfc_version"].split(".")[0] != self._version.split(".")[0]:
            raise DoubleError(f"{path} was saved by DFC {state['dfc_version']}; this is {self._version}")
        self._hn, self.hw_arch = hn, state["hw_arch"]
        self._state = States(state["state"])
        self._script, self._commands = "", []
        self._record = state.get("record", {})
