"""Conformance check of an exported graph against what the Hailo DFC is known to parse.

    python -m pipeline.export.graph_check FILE.onnx [--start NAME ...] [--end NAME ...] [--json]
    (invoke graph-check FILE.onnx [--json]); exit 0 when the graph conforms, 1 when it does not.

The export stage runs it on both graphs and fails, naming the node, when a rule is broken. The
rules and their public sources are in pipeline/export/GRAPH_RULES.md:

  no-gemm          no Gemm node (onnxslim's FusionGemm folds positions into the batch axis)
  rank3-activations  no activation tensor of rank < 3 between the start and the end nodes
  linear-matmul    a Linear is MatMul (+ Add) with a 2-D constant weight on a rank-3 activation
  allowed-ops      only ops that occur in the known-good Whisper-on-Hailo graphs (ALLOWED_OPS)

"Activation" means a tensor that depends on a start tensor; constant-only subgraphs (shape
arithmetic, folded weights) are not activations. Ranks come from onnx shape inference.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from pipeline.errors import ToolchainError

# Op histograms of public Whisper-on-Hailo graphs, counted from Netron SVG exports in
# ktomanek/huggingface_whisper_to_hailo_conversion (commit 6b649fff,
# hailo_compatible_models/hf_whisper_tiny/onnx_graph_viz/). "hailo_reference_tiny_encoder_10s" is
# hailocs/hailo-whisper's export (openai-whisper + its patch + onnxsim); "hf_final_tiny_encoder_10s"
# is the graph parsed, optimized and compiled in the seed log (whisper_tiny_encoder_10s_hailo_final).
KNOWN_GOOD_GRAPHS = {
    "hailo_reference_tiny_encoder_10s": {
        "source": "ktomanek/huggingface_whisper_to_hailo_conversion@6b649fff: "
                  "hailo_reference_models_tiny_tiny-whisper-encoder-10s.onnx.svg",
        "blocks": 4,
        "ops": {"Add": 35, "Conv": 2, "Div": 6, "Erf": 6, "LayerNormalization": 9, "MatMul": 24,
                "Mul": 20, "Reshape": 17, "Softmax": 4, "Split": 4, "Transpose": 21},
    },
    "hf_final_tiny_encoder_10s": {
        "source": "ktomanek/huggingface_whisper_to_hailo_conversion@6b649fff: "
                  "hailo_compatible_models_hf_whisper_tiny_whisper_tiny_encoder_10s_hailo_final.onnx.svg "
                  "(the seed log's graph)",
        "blocks": 4,
        "ops": {"Add": 35, "Conv": 2, "Div": 6, "Erf": 6, "LayerNormalization": 9, "MatMul": 24,
                "Mul": 16, "Reshape": 17, "Softmax": 4, "Split": 4, "Transpose": 17},
    },
}

# Where our encoder's op counts differ from each known-good graph, per encoder block, and why
# (GRAPH_RULES.md, "How ours differs"): q, k, v stay three MatMuls (onnxsim fused them into one
# [d, 3d] MatMul + Split); openai-whisper transposes k once more; HF scales only q, we scale q and k.
EXPLAINED_DIFFERENCE_PER_BLOCK = {
    "hailo_reference_tiny_encoder_10s": {"MatMul": 2, "Split": -1, "Transpose": -1},
    "hf_final_tiny_encoder_10s": {"MatMul": 2, "Split": -1, "Mul": 1},
}


def unexplained_differences(op_histogram: dict, known_good: str, blocks: int) -> dict:
    """{op: (ours, expected)} where an encoder of `blocks` blocks differs from a known-good graph
    beyond EXPLAINED_DIFFERENCE_PER_BLOCK (scaled from the known-good graph's block count)."""
    graph = KNOWN_GOOD_GRAPHS[known_good]
    per_block = EXPLAINED_DIFFERENCE_PER_BLOCK[known_good]
    expected = {}
    for op in set(graph["ops"]) | set(per_block) | set(op_histogram):
        count = graph["ops"].get(op, 0)
        # per-block ops scale with the block count; the stem (2 convs, 2 GELUs, ...) does not
        per_block_base = _PER_BLOCK_OPS.get(op)
        if per_block_base is not None:
            count = count + (blocks - graph["blocks"]) * per_block_base(graph)
        expected[op] = count + blocks * per_block.get(op, 0)
    return {op: (op_histogram.get(op, 0), n) for op, n in expected.items() if op_histogram.get(op, 0) != n}


def _per_block(op: str, stem: int):
    return lambda graph: (graph["ops"].get(op, 0) - stem) // graph["blocks"]


# Ops of the encoder stem (conv1/conv2 + GELUs, positional add, reshape/transpose, ln_post) that do
# not repeat per block; everything else of the known-good encoders is per block.
_STEM = {"Add": 3, "Conv": 2, "Div": 2, "Erf": 2, "LayerNormalization": 1, "Mul": 4, "Reshape": 1, "Transpose": 1}
_PER_BLOCK_OPS = {op: _per_block(op, _STEM.get(op, 0)) for op in
                  ("Add", "Div", "Erf", "LayerNormalization", "MatMul", "Mul", "Reshape", "Softmax", "Split",
                   "Transpose")}

# Every op of the known-good graphs. Anything else needs evidence that the DFC parses it.
ALLOWED_OPS = frozenset(op for graph in KNOWN_GOOD_GRAPHS.values() for op in graph["ops"])

RULE_FIXES = {
    "no-gemm": "Export with onnxslim.slim(model, skip_fusion_patterns=['FusionGemm']) so Linear stays "
               "a rank-3 MatMul + Add (pipeline/export/export.py does); see pipeline/export/GRAPH_RULES.md.",
    "rank3-activations": "Keep activations [1, positions, channels] (or 4-D): do not fold positions into the "
                         "batch axis (a Reshape to 2-D, a Gemm); see pipeline/export/GRAPH_RULES.md.",
    "linear-matmul": "Write the Linear as x @ W (+ b) on a [1, positions, channels] activation with a 2-D "
                     "constant W; see pipeline/export/GRAPH_RULES.md.",
    "allowed-ops": "Rewrite the module so it exports only ops of the known-good graphs "
                   f"({', '.join(sorted(ALLOWED_OPS))}), or cite evidence that the DFC parses the op "
                   "and add it to ALLOWED_OPS in pipeline/export/graph_check.py.",
}


@dataclass(frozen=True)
class Violation:
    rule: str
    node: str
    op: str
    detail: str

    def line(self) -> str:
        return f"[{self.rule}] node {self.node!r} ({self.op}): {self.detail}"


@dataclass
class GraphReport:
    """What the check found; `violations` empty means the graph conforms."""

    path: str
    opset: int
    start_nodes: list[str]
    end_nodes: list[str]
    op_histogram: dict[str, int]
    activation_ranks: dict[str, int]  # rank -> count of activation tensors between start and end
    initializers: dict[str, int]  # count, total_bytes, largest_bytes
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def summary(self) -> str:
        ops = ", ".join(f"{op} {n}" for op, n in self.op_histogram.items())
        verdict = "conforms" if self.ok else f"{len(self.violations)} violation(s)"
        return (f"{self.path}: {verdict}; opset {self.opset}; start {self.start_nodes}; end {self.end_nodes}; "
                f"activation ranks {self.activation_ranks}; {self.initializers['count']} initializers "
                f"({self.initializers['total_bytes'] / 2**20:.1f} MiB); ops: {ops}")


def _load(model_or_path):
    import onnx

    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if not path.is_file():
            raise ToolchainError(f"ONNX file {path} does not exist.", "Pass the path of an exported .onnx file.")
        try:
            return onnx.load(str(path)), str(path)
        except Exception as err:  # onnx raises DecodeError and others for a non-ONNX file
            raise ToolchainError(f"{path} is not a readable ONNX model: {err}.",
                                 "Pass an .onnx file written by the export stage.") from None
    return model_or_path, model_or_path.graph.name or "<model>"


def _ranks(model) -> dict[str, int]:
    import onnx

    typed = onnx.shape_inference.infer_shapes(model)
    values = list(typed.graph.value_info) + list(typed.graph.input) + list(typed.graph.output)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}


def _cut(graph, start: Sequence[str], end: Sequence[str]):
    """Nodes between start and end, and the activation tensors (those that depend on a start tensor)."""
    nodes = {n.name: n for n in graph.node}
    producer = {out: n for n in graph.node for out in n.output}
    start_tensors = {s for s in start if s not in nodes} | {o for s in start if s in nodes for o in nodes[s].input}
    # Backwards from the end nodes, stopping at start tensors.
    kept, stack, seen = [], [nodes[e] for e in end if e in nodes], set()
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        kept.append(node)
        stack += [producer[t] for t in node.input if t in producer and t not in start_tensors]
    order = {n.name: i for i, n in enumerate(graph.node)}
    kept.sort(key=lambda n: order[n.name])
    activations = set(start_tensors)
    for node in kept:  # graph.node is topologically sorted (an ONNX requirement)
        if any(t in activations for t in node.input):
            activations.update(node.output)
    return kept, activations


def check_graph(model_or_path: Union[str, Path, object], start_node_names: Optional[Sequence[str]] = None,
                end_node_names: Optional[Sequence[str]] = None) -> GraphReport:
    """Check one ONNX graph (path or ModelProto). Start/end default to the graph inputs and the
    producers of the graph outputs (what the export hands to the DFC)."""
    model, label = _load(model_or_path)
    graph = model.graph
    initializer_names = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializer_names]
    producer = {out: n for n in graph.node for out in n.output}
    start = list(start_node_names or inputs)
    end = list(end_node_names or [producer[o.name].name for o in graph.output if o.name in producer])
    nodes, activations = _cut(graph, start, end)
    ranks = _ranks(model)
    violations: list[Violation] = []
    for node in nodes:
        if node.op_type == "Gemm":
            violations.append(Violation("no-gemm", node.name, node.op_type,
                                        "Gemm (Linear folded to rank 2) is not in any known-good graph"))
        elif node.op_type not in ALLOWED_OPS:
            violations.append(Violation("allowed-ops", node.name, node.op_type,
                                        f"op {node.op_type} is not in the known-good graphs"))
        low = [(t, ranks[t]) for t in node.output if t in activations and t in ranks and ranks[t] < 3]
        if low:
            violations.append(Violation("rank3-activations", node.name, node.op_type,
                                        ", ".join(f"output {t} has rank {r}" for t, r in low)))
        if node.op_type == "MatMul":
            violations += _linear_violations(node, activations, initializer_names, ranks, graph)
    rank_counts = collections.Counter(ranks[t] for t in activations if t in ranks)
    sizes = [len(i.raw_data) or _element_bytes(i) for i in graph.initializer]
    return GraphReport(
        path=label,
        opset=next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0),
        start_nodes=start,
        end_nodes=end,
        op_histogram=dict(sorted(collections.Counter(n.op_type for n in nodes).items())),
        activation_ranks={str(r): n for r, n in sorted(rank_counts.items())},
        initializers={"count": len(sizes), "total_bytes": sum(sizes), "largest_bytes": max(sizes, default=0)},
        violations=violations,
    )


def _element_bytes(tensor) -> int:
    import numpy as np
    from onnx import helper

    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def _linear_violations(node, activations, initializer_names, ranks, graph) -> list[Violation]:
    """A MatMul with a constant operand is a Linear: constant 2-D weight second, rank-3 activation first."""
    constant = [t for t in node.input if t in initializer_names]
    if not constant:
        return []  # activation x activation (attention scores, weighted values): a DFC matmul layer
    weight = next(i for i in graph.initializer if i.name == constant[0])
    data = [t for t in node.input if t in activations]
    problems = []
    if node.input[1] != constant[0]:
        problems.append("the constant is the first operand (W @ x)")
    if len(weight.dims) != 2:
        problems.append(f"weight {weight.name} has rank {len(weight.dims)}, not 2")
    if data and ranks.get(data[0], 3) != 3:
        problems.append(f"activation {data[0]} has rank {ranks[data[0]]}, not 3")
    return [Violation("linear-matmul", node.name, node.op_type, "; ".join(problems))] if problems else []


def require_conformance(report: GraphReport, what: str) -> None:
    """Raise ToolchainError naming every violating node and what to do."""
    if report.ok:
        return
    rules = sorted({v.rule for v in report.violations})
    lines = "\n  ".join(v.line() for v in report.violations[:20])
    more = f"\n  ... and {len(report.violations) - 20} more" if len(report.violations) > 20 else ""
    raise ToolchainError(
        f"The {what} graph {report.path} breaks the DFC graph rules:\n  {lines}{more}\n",
        " ".join(RULE_FIXES[r] for r in rules),
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.export.graph_check",
                                     description="Check an exported ONNX graph against the DFC graph rules "
                                     "(pipeline/export/GRAPH_RULES.md). Exit 0 conforms, 1 does not.")
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--start", nargs="*", default=None, help="start node names (default: graph inputs)")
    parser.add_argument("--end", nargs="*", default=None, help="end node names (default: output producers)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        report = check_graph(args.onnx, args.start, args.end)
    except ToolchainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
        for violation in report.violations:
            print("  " + violation.line())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
