"""How the TEST DOUBLE turns an ONNX cut into HN layers and names them, modelled on the DFC.

Evidence (E) and assumption (A) for each part; E items cite their source:

- (E) Layers are numbered per type, from 1, `<net>/<type><n>`: seed log
  (`../shared/reference/seed-dfc-conversion-log.txt`: `conv10`, `conv13`, `conv14`,
  `reduce_sum_softmax1..4`, `normalization13`, `input_layer1`, `output_layer1`) and every
  hailo-whisper / Model Zoo script (`conv4`, `ew_add1`, `{matmul*}`, `{output_layer*}`).
- (E) A Conv and a MatMul with a constant operand (a Linear, bias Add included) are `conv`
  layers: the seed's HF graph has 2 Conv + 16 weighted MatMul, and hailo-whisper's tiny encoder
  script puts 16 bits on conv4..conv18 = the attention output, MLP fc1 and fc2 of each of its 4
  blocks exactly when each block has 4 convs (fused qkv, out, fc1, fc2) in graph order
  (pipeline/dfc/layer_roles.py shows the derivation; the base encoder's conv20..26 fit too).
- (E, by count) LayerNormalization and a Mul by a constant are `normalization` layers: the seed's
  HF encoder has 9 LayerNormalization + 4 scalar Mul (the q scaling) = 13, and its last layer
  (the final layer norm, the QAT distillation layer in the log) is `normalization13`.
- (E) Softmax is a `reduce_sum_softmax` layer (seed log: `reduce_sum_softmax1..4`, one per
  encoder block). Further parts the DFC may split a softmax into are not modelled (A).
- (E) A MatMul of two activations is a `matmul` layer (`layers={matmul*}` in hailo-whisper's
  matmul_correction / matmul_equalization commands; the model zoo's vit scripts).
- (A) The order is Kahn's topological sort from the input layers, first come first served,
  successors in ONNX node order. This puts the decoder's cross-attention key/value projections
  (fed only by the encoder-states input) before every block, which is the order under which
  hailo-whisper's decoder scripts (conv12..conv48 even for base) read as "self-attention output,
  cross-attention output and fc2 of every block"; in plain ONNX order they read as no pattern.
- (A) An Add of two activations, and an Add of an activation and a constant that is not a
  Linear's bias (positional embedding, causal mask), are `ew_add` layers; a Mul of two activations
  is `ew_mult`. Which Add is hailo-whisper's `ew_add1` is not evidenced.
- (A) The erf GELU (Div, Erf, Add, Mul, Mul) is an activation of the layer before it, no layer of
  its own; Reshape, Transpose, Split, Flatten, Squeeze, Unsqueeze make no layer either.
- (A) Rejections and their wording: a Gemm node, or an activation of rank < 3 between start and
  end, fails the parse with a "ParsingWithRecommendationException"-style message naming the node.
"""

from collections import OrderedDict

_NO_LAYER = {"Reshape", "Transpose", "Split", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


class ParsingWithRecommendationException(Exception):
    """The double's stand-in for the DFC's parser error (name as Hailo's parser reports it; A)."""


def _fail(node, why, recommendation):
    raise ParsingWithRecommendationException(
        f"Parsing failed. The errors found in the graph are:\n"
        f"UnsupportedOperationError in op {node.name}: {why}\n"
        f"Please try to parse the model again, using these end node names: {recommendation}")


def _gelu_nodes(kept, consumers):
    """{node name: producer of the GELU input} for the nodes of each erf GELU pattern."""
    folded = {}
    for erf in (n for n in kept if n.op_type == "Erf"):
        div = next((p for p in kept if erf.input[0] in p.output and p.op_type == "Div"), None)
        if div is None:
            continue
        chain = [div, erf]
        node = erf
        for _ in range(3):  # Add(+1), Mul(x, .), Mul(0.5) in some order
            nxt = consumers.get(node.output[0], [])
            if len(nxt) != 1 or nxt[0].op_type not in ("Add", "Mul"):
                break
            node = nxt[0]
            chain.append(node)
        for member in chain:
            folded[member.name] = div.input[0]
    return folded


def layer_type(node, constants, bias_of_linear):
    """The HN layer type of one ONNX node, or None when it makes no layer of its own."""
    op = node.op_type
    constant_inputs = [t for t in node.input if t in constants]
    if op == "Conv" or (op == "MatMul" and constant_inputs):
        return "conv"
    if op == "MatMul":
        return "matmul"
    if op == "Add":
        return None if node.name in bias_of_linear else "ew_add"
    if op in ("Mul", "Div"):
        return "normalization" if constant_inputs else "ew_mult"
    if op == "LayerNormalization":
        return "normalization"
    if op == "Softmax":
        return "reduce_sum_softmax"
    if op in _NO_LAYER:
        return None
    return op.lower()


def build_layers(kept, net_name, start_nodes, constants, ranks, activations):
    """HN layers {"<net>/<type><n>": {"type", "original_names"}} for the kept nodes (topological)."""
    for node in (n for n in kept if n.op_type == "Gemm"):
        _fail(node, "Gemm (a Linear on rank-2 tensors) is not supported; keep Linear layers as "
              "MatMul + Add on [batch, positions, channels]", [p for p in node.input if p not in constants][:1])
    for node in kept:
        low = [t for t in node.output if t in activations and 0 < ranks.get(t, 4) < 3]
        if low:
            _fail(node, f"output {low[0]} has rank {ranks[low[0]]}; the parser needs 3-D or 4-D tensors",
                  [node.name])
    consumers = {}
    for node in kept:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    producers = {t: n for n in kept for t in n.output}
    bias_of_linear = {c.name for n in kept if n.op_type == "MatMul" and any(t in constants for t in n.input)
                      for c in consumers.get(n.output[0], []) if c.op_type == "Add"
                      and any(t in constants for t in c.input)}
    gelu = _gelu_nodes(kept, consumers)

    # Kahn's algorithm from the start tensors, FIFO, successors in ONNX node order.
    index = {n.name: i for i, n in enumerate(kept)}
    waiting = {n.name: sum(1 for t in n.input if t in producers) for n in kept}
    queue = [n for n in kept if waiting[n.name] == 0 or n.name in start_nodes]
    order, seen = [], set()
    while queue:
        node = queue.pop(0)
        if node.name in seen:
            continue
        seen.add(node.name)
        order.append(node)
        ready = []
        for tensor in node.output:
            for consumer in consumers.get(tensor, []):
                waiting[consumer.name] -= 1
                if waiting[consumer.name] == 0:
                    ready.append(consumer)
        queue += sorted(ready, key=lambda n: index[n.name])

    layers, counters, owner = OrderedDict(), {}, {}
    for node in order:
        kind = None if node.name in gelu else layer_type(node, constants, bias_of_linear)
        source = None
        if kind is None:  # joins the layer that produced its input (bias add, GELU, reshapes)
            tensor = gelu.get(node.name) or next((t for t in node.input if t in producers), None)
            source = owner.get(producers[tensor].name) if tensor in producers else None
            if source is not None:
                layers[source]["original_names"].append(node.name)
            owner[node.name] = source
            continue
        counters[kind] = counters.get(kind, 0) + 1
        name = f"{net_name}/{kind}{counters[kind]}"
        layers[name] = {"type": kind, "original_names": [node.name]}
        owner[node.name] = name
    return layers
