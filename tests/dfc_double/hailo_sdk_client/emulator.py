"""The TEST DOUBLE's emulator: `runner.infer(ctx, data)` for SDK_NATIVE and SDK_QUANTIZED.

NOT DEPLOYABLE, and not Hailo's quantizer: it makes the accuracy ladder measure something real
on machines without the DFC.

  SDK_NATIVE     runs the ONNX the double kept in the HAR at parse, in float (ONNX Runtime).
  SDK_QUANTIZED  runs the same graph fake-quantized with the parameters optimize() stored:
                 weights of Conv/MatMul/Gemm symmetric per output channel, and one uniform
                 (asymmetric) activation quantizer after every compute node (but softmax inputs,
                 see activation_tensors) and on every input,
                 each with the bit width the model script gave its layer (8 by default, 16 for
                 `quantization_param(<layer>, precision_mode=a16_w16)`) and the min/max range
                 seen on the calibration set.

Assumptions (no DFC here to compare with): the real DFC fuses layers (conv + bias + activation)
and quantizes fewer tensors, calibrates with percentiles and fine-tunes, so its noise differs;
this one is a plain, pessimistic post-training quantizer. The I/O layout follows
hailocs/hailo-whisper evaluation/hailo/hailo_sdk_{encoder,decoder}.py (commit 347d8a0): inputs
NHWC keyed by `<net>/input_layerN` (or one array), several outputs as a list in end-node order,
each NHWC (rank-3 ONNX outputs [1, W, C] come back as [N, 1, W, C]).
"""

import fnmatch
import re

import numpy as np

# Ops whose output gets an activation quantizer: the ones that compute new values (reshapes,
# transposes and shape arithmetic only move them).
QUANTIZED_OPS = frozenset({"Conv", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Softmax",
                           "LayerNormalization", "Erf", "Relu", "Sigmoid", "Tanh", "Pow", "Sqrt",
                           "ReduceMean"})
WEIGHT_OPS = {"Conv": 0, "MatMul": -1, "Gemm": None}  # output-channel axis of the weight
DEFAULT_BITS = (8, 8)  # (activation, weight): a8_w8
_PRECISION = re.compile(r"a(\d+)_w(\d+)")


class EmulatorError(Exception):
    """Raised where the DFC raises its own errors for a bad infer() call."""


# --- which bits where (at optimize) ---------------------------------------------------------------


def _layer_patterns(first_arg):
    """'conv4' -> ['conv4']; '{conv4, ew_add*}' -> ['conv4', 'ew_add*']."""
    text = first_arg.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    return [p.strip() for p in text.split(",") if p.strip()]


def node_precisions(hn, commands):
    """{ONNX node or input name: (activation bits, weight bits)} from the script's
    quantization_param commands (later commands override earlier ones), matched against the HN
    layer names with and without the `<net>/` prefix; every layer not named is a8_w8."""
    bits = {}
    for layer_name, layer in hn["layers"].items():
        if layer["type"] == "output_layer":
            continue
        short = layer_name.split("/", 1)[-1]
        chosen = DEFAULT_BITS
        for name, args, kwargs, _ in commands:
            if name != "quantization_param" or "precision_mode" not in kwargs or not args:
                continue
            if any(fnmatch.fnmatchcase(short, p) or fnmatch.fnmatchcase(layer_name, p)
                   for p in _layer_patterns(args[0])):
                match = _PRECISION.fullmatch(kwargs["precision_mode"])
                chosen = (int(match.group(1)), int(match.group(2)))
        for original in layer.get("original_names", []):
            bits[original] = chosen
    return bits


def _graph_parts(model):
    initializers = {i.name: i for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    return initializers, inputs


def activation_tensors(model, precisions):
    """{tensor name: activation bits} for every tensor that gets a quantizer.

    A tensor read only by a Softmax is not quantized: assumption, the masked attention scores and
    the softmax form one layer. Quantizing them alone would put the causal mask (-1e4) and the
    scores (about +-20) on one grid, and that single tensor measurably dominated the 16-bit
    decoder's noise (34 dB SNR with it, 57 dB without, tiny.en).
    """
    _, inputs = _graph_parts(model)
    readers = {}
    for node in model.graph.node:
        for tensor in node.input:
            readers.setdefault(tensor, set()).add(node.op_type)
    tensors = {name: precisions.get(name, DEFAULT_BITS)[0] for name in inputs}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS:
            for out in node.output:
                if readers.get(out) != {"Softmax"}:
                    tensors[out] = precisions.get(node.name, DEFAULT_BITS)[0]
    return tensors


def collect_ranges(model_bytes, feeds, tensors):
    """{tensor: [min, max]} over the calibration feeds (a list of {onnx input: array})."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    known = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in known:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = _session(model.SerializeToString())
    names = list(tensors)
    lows = {n: np.inf for n in names}
    highs = {n: -np.inf for n in names}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            lows[name] = min(lows[name], float(np.min(value)))
            highs[name] = max(highs[name], float(np.max(value)))
    return {n: [lows[n], highs[n]] for n in names}


def quantization_record(model_bytes, hn, commands, feeds):
    """What optimize() stores in the HAR: per node weight bits and per tensor activation bits+range."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    precisions = node_precisions(hn, commands)
    tensors = activation_tensors(model, precisions)
    ranges = collect_ranges(model_bytes, feeds, tensors)
    weights = {node.name: precisions.get(node.name, DEFAULT_BITS)[1]
               for node in model.graph.node if node.op_type in WEIGHT_OPS}
    return {"activations": {t: {"bits": b, "range": ranges[t]} for t, b in tensors.items()},
            "weights": weights, "note": "NOT DEPLOYABLE - test double's fake quantization"}


# --- the quantized graph (at infer) -----------------------------------------------------------------


def _fake_quant_weight(array, bits, axis):
    """Symmetric per-channel quantize-dequantize of a weight array."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim < 2:
        return array
    axis = axis % array.ndim
    reduce = tuple(i for i in range(array.ndim) if i != axis)
    peak = np.max(np.abs(array), axis=reduce, keepdims=True)
    levels = 2 ** (bits - 1) - 1
    scale = np.where(peak > 0, peak / levels, 1.0).astype(np.float32)
    return (np.clip(np.round(array / scale), -levels, levels) * scale).astype(np.float32)


def _quantize_weights(model, weight_bits):
    from onnx import numpy_helper

    initializers, _ = _graph_parts(model)
    done = set()
    for node in model.graph.node:
        if node.name not in weight_bits or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        name = node.input[1]
        if name in done:
            continue
        axis = WEIGHT_OPS[node.op_type]
        if axis is None:  # Gemm: B is [K, N], or [N, K] with transB
            trans = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if trans else 1
        array = numpy_helper.to_array(initializers[name])
        initializers[name].CopyFrom(numpy_helper.from_array(
            _fake_quant_weight(array, weight_bits[node.name], axis), name))
        done.add(name)


def _quantizer_nodes(source, target, bits, low, high):
    """Nodes computing target = dequant(quant(source)) with an asymmetric uniform grid over [low, high]."""
    import onnx

    low, high = min(low, 0.0), max(high, 0.0)  # zero stays exactly representable
    levels = 2 ** bits - 1
    scale = (high - low) / levels or 1.0
    zero = float(np.round(-low / scale))
    const = {}

    def constant(label, value):
        name = f"{target}__fq_{label}"
        const[label] = onnx.helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(
            np.array(value, dtype=np.float32), name))
        return name

    s, z, lo, hi = constant("scale", scale), constant("zero", zero), constant("lo", 0.0), constant("hi", levels)
    steps = [("Div", [source, s]), ("Round", None), ("Add", [None, z]), ("Clip", [None, lo, hi]),
             ("Sub", [None, z]), ("Mul", [None, s])]
    nodes, previous = list(const.values()), source
    for index, (op, inputs) in enumerate(steps):
        out = target if index == len(steps) - 1 else f"{target}__fq{index}"
        args = [previous] if inputs is None else [previous if a is None else a for a in inputs]
        nodes.append(onnx.helper.make_node(op, args, [out], name=f"{target}__fq_{op}{index}"))
        previous = out
    return nodes


def quantized_model_bytes(model_bytes, record):
    """The ONNX graph with weights fake-quantized and an activation quantizer after every tensor
    of `record["activations"]` (each consumer, and the graph outputs, see the quantized value)."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    _quantize_weights(model, record["weights"])
    activations = record["activations"]
    _, inputs = _graph_parts(model)
    renamed = {}
    nodes = []
    for name in inputs:  # inputs keep their names; consumers read the quantized copy
        if name in activations:
            q = activations[name]
            renamed[name] = f"{name}__quantized"
            nodes += _quantizer_nodes(name, renamed[name], q["bits"], *q["range"])
    for node in model.graph.node:
        for i, tensor in enumerate(node.input):
            if tensor in renamed:
                node.input[i] = renamed[tensor]
        after = []
        for i, out in enumerate(node.output):
            if out in activations:
                raw = f"{out}__float"
                node.output[i] = raw
                q = activations[out]
                after += _quantizer_nodes(raw, out, q["bits"], *q["range"])
        nodes += [node, *after]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model.SerializeToString()


# --- running ------------------------------------------------------------------------------------------


def _session(model_bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _to_onnx_layout(array, shape):
    """One NHWC sample [1, H, W, C] -> the ONNX input layout `shape` (rank 4 NCHW or rank 3 [1, W, C])."""
    if len(shape) == 4:
        return np.ascontiguousarray(array.transpose(0, 3, 1, 2), dtype=np.float32)
    if len(shape) == 3:
        return np.ascontiguousarray(array[:, 0], dtype=np.float32)
    raise EmulatorError(f"input of rank {len(shape)} is not supported by the emulator")


def _to_nhwc(array):
    if array.ndim == 4:
        return array.transpose(0, 2, 3, 1)
    if array.ndim == 3:
        return array[:, None]
    return array


class Emulation:
    """One network under one inference context: `run(data)` as runner.infer returns it."""

    def __init__(self, model_bytes, input_layers, output_tensors):
        import onnx

        model = onnx.load_from_string(model_bytes)
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        self.input_layers = dict(input_layers)  # "<net>/input_layerN" -> ONNX input name
        self.shapes = {layer: shapes[name] for layer, name in self.input_layers.items()}
        self.outputs = list(output_tensors)
        self.session = _session(model_bytes)

    def _by_layer(self, data):
        if isinstance(data, np.ndarray):
            if len(self.input_layers) != 1:
                raise EmulatorError(f"the network has inputs {sorted(self.input_layers)}: pass a dict")
            return {next(iter(self.input_layers)): data}
        if not isinstance(data, dict) or set(data) != set(self.input_layers):
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise EmulatorError(f"infer data keys {got} are not the input layers {sorted(self.input_layers)}")
        return data

    def run(self, data):
        arrays = self._by_layer(data)
        counts = set()
        for layer, array in arrays.items():
            shape = self.shapes[layer]
            want = [shape[2], shape[3], shape[1]] if len(shape) == 4 else [1, shape[1], shape[2]]
            if not isinstance(array, np.ndarray) or array.ndim != 4 or list(array.shape[1:]) != want:
                raise EmulatorError(f"infer data for {layer} has shape {list(np.shape(array))}, "
                                    f"expected [N, {', '.join(map(str, want))}] (NHWC)")
            counts.add(array.shape[0])
        if len(counts) != 1:
            raise EmulatorError(f"infer inputs have different batch sizes {sorted(counts)}")
        results = [[] for _ in self.outputs]
        for index in range(counts.pop()):
            feed = {self.input_layers[layer]: _to_onnx_layout(array[index:index + 1], self.shapes[layer])
                    for layer, array in arrays.items()}
            for bucket, value in zip(results, self.session.run(self.outputs, feed)):
                bucket.append(_to_nhwc(value))
        stacked = [np.concatenate(b) for b in results]
        return stacked[0] if len(stacked) == 1 else stacked
