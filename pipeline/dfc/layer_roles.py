"""Model-script layer names by role, resolved to the DFC layer names of OUR parsed network.

hailo-whisper's `full` scripts name layers (`conv4`, `conv12`, `ew_add1`) that the DFC gave *its*
graphs. Our graph has the same layers but numbers differently (onnxsim fused q/k/v into one MatMul
there; we keep three, see pipeline/export/GRAPH_RULES.md), so a copied name would put 16 bits on
the wrong layer. So:

1. `reference_roles` says what each hailo-whisper number IS, e.g. conv10 of the tiny encoder is
   "encoder block 1 MLP fc2". It models hailo-whisper's conv order: encoder stem conv1, conv2, then
   per block [q/k/v fused, attention out, fc1, fc2]; decoder: first the cross-attention key and
   value projections of every block (fed by the encoder-states input only), then per block
   [self q/k/v fused, self out, cross query, cross out, fc1, fc2], then the 4 vocabulary matmuls.
   Evidence and assumptions: tests/dfc_double/hailo_sdk_client/naming.py (the encoder order is
   evidenced by the seed's graph; the decoder's key/value-first order is an assumption under which
   hailo-whisper's decoder lists read as a per-block pattern).
2. `our_nodes` gives the ONNX node(s) of a role in our export (TorchScript names of the modules in
   pipeline/export/whisper_hailo.py).
3. After parse, `resolve_layers` finds the HN layer whose `original_names` holds that node.

`check_script_layers` then requires every layer a script names to exist in the HAR (before
optimize starts), naming the unknown ones and the nearest existing names.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from pipeline.dfc.model_scripts import ScriptCommand, parse_model_script
from pipeline.errors import ToolchainError

_ROLE_TEXT = {
    "attn_qkv": "self-attention q/k/v projections",
    "attn_out": "self-attention output projection",
    "mlp_fc1": "MLP first projection (fc1)",
    "mlp_fc2": "MLP second projection (fc2)",
    "cross_key": "cross-attention key projection",
    "cross_value": "cross-attention value projection",
    "cross_query": "cross-attention query projection",
    "cross_out": "cross-attention output projection",
    "conv_stem": "input convolution",
    "vocab": "vocabulary projection",
    "positional_add": "positional-embedding add (assumed to be hailo-whisper's ew_add1)",
}


@dataclass(frozen=True)
class Role:
    model: str  # "encoder" | "decoder"
    kind: str  # a key of _ROLE_TEXT
    index: int  # block number, stem conv number (1, 2) or vocabulary split

    def describe(self) -> str:
        where = {"conv_stem": "conv", "vocab": "split"}.get(self.kind, "block")
        return f"{self.model} {where} {self.index}: {_ROLE_TEXT[self.kind]}"


def reference_roles(model: str, blocks: int) -> dict[str, Role]:
    """hailo-whisper's layer name -> what it is, for a graph with `blocks` transformer blocks."""
    if model == "encoder":
        convs = [Role(model, "conv_stem", 1), Role(model, "conv_stem", 2)]
        for b in range(blocks):
            convs += [Role(model, kind, b) for kind in ("attn_qkv", "attn_out", "mlp_fc1", "mlp_fc2")]
        extra = {"ew_add1": Role(model, "positional_add", 0)}
    else:
        convs = [Role(model, kind, b) for b in range(blocks) for kind in ("cross_key", "cross_value")]
        for b in range(blocks):
            convs += [Role(model, kind, b) for kind in
                      ("attn_qkv", "attn_out", "cross_query", "cross_out", "mlp_fc1", "mlp_fc2")]
        convs += [Role(model, "vocab", i) for i in range(4)]
        extra = {}
    return {**{f"conv{n}": role for n, role in enumerate(convs, start=1)}, **extra}


def our_nodes(role: Role) -> list[str]:
    """The ONNX node names of a role in our export (pipeline/export/whisper_hailo.py module paths)."""
    block = f"/blocks.{role.index}"
    linear = {
        "attn_out": ["attn/out"], "mlp_fc1": ["mlp/mlp.0"], "mlp_fc2": ["mlp/mlp.2"],
        "attn_qkv": ["attn/query", "attn/key", "attn/value"], "cross_key": ["cross_attn/key"],
        "cross_value": ["cross_attn/value"], "cross_query": ["cross_attn/query"], "cross_out": ["cross_attn/out"],
    }
    if role.kind in linear:
        return [f"{block}/{path}/MatMul" for path in linear[role.kind]]
    if role.kind == "conv_stem":
        return [f"/conv{role.index}/Conv"]
    if role.kind == "vocab":
        return ["/MatMul" if role.index == 0 else f"/MatMul_{role.index}"]
    # positional embedding: the third top-level Add (after conv1's and conv2's GELU adds)
    return ["/Add_2"]


def short_name(layer: str) -> str:
    """'<net>/conv4' -> 'conv4' (model scripts name layers without the network prefix)."""
    return layer.rsplit("/", 1)[-1]


def resolve_layers(roles: Sequence[Role], hn: Mapping) -> dict[Role, list[str]]:
    """Role -> the HN layer names (short) whose original_names hold the role's ONNX nodes."""
    by_node: dict[str, str] = {}
    for name, layer in hn.get("layers", {}).items():
        for node in layer.get("original_names", []):
            by_node.setdefault(node, short_name(name))
    resolved, missing = {}, []
    for role in roles:
        names = [by_node.get(node) for node in our_nodes(role)]
        if None in names:
            missing.append(f"{role.describe()} (ONNX {our_nodes(role)})")
            continue
        resolved[role] = list(dict.fromkeys(names))
    if missing:
        raise ToolchainError(
            "The parsed network has no layer for: " + "; ".join(missing) + ".",
            "The HAR does not come from this toolchain's export (or the DFC renamed ONNX nodes): parse "
            "again from this export, or pass --model-script with names from the HAR's layer list.",
        )
    return resolved


_LAYER_LIST = re.compile(r"[{\[]([^}\]]*)[}\]]")


def _named_layers(command: ScriptCommand) -> list[str]:
    """Layer names and {globs} a command refers to."""
    names = list(command.targets)
    if command.name in ("quantization_param", "compilation_param") and command.args:
        names.append(command.args[0])
    for value in command.kwargs.values():
        if value.startswith(("{", "[")) and command.name != "post_quantization_optimization":
            names += [part.strip() for match in _LAYER_LIST.findall(value) for part in match.split(",")]
    if command.name == "quantization_param" and command.args and command.args[0].startswith("{"):
        names = names[:-1] + [p.strip() for p in command.args[0].strip("{}").split(",")]
    return [n for n in names if n]


def check_script_layers(commands: Sequence[ScriptCommand], har_layers: Sequence[str], source: str) -> None:
    """Every layer name must be a HAR layer and every glob must match one; else stop, naming them."""
    known = [short_name(n) for n in har_layers]
    unknown = []
    for command in commands:
        for name in _named_layers(command):
            pattern = name.strip("{}")
            if "*" in pattern or "?" in pattern:
                if not fnmatch.filter(known, pattern):
                    unknown.append((command.line, name, []))
            elif pattern not in known:
                unknown.append((command.line, name, difflib.get_close_matches(pattern, known, n=3)))
    if unknown:
        lines = "; ".join(f"line {line}: {name!r}" + (f" (nearest: {', '.join(near)})" if near else " (no match)")
                          for line, name, near in unknown)
        raise ToolchainError(
            f"Model script {source} names layers the parsed HAR does not have: {lines}.",
            "Use the HAR's layer names (listed in <net>.layers.json beside the parsed HAR); the "
            "optimizer was not started.",
        )


@dataclass(frozen=True)
class ResolvedLayers:
    text: str  # the script with reference names replaced by ours
    table: list[dict]  # [{"reference": "conv10", "role": "...", "layers": ["conv14"]}]


def resolve_reference_names(text: str, model: str, blocks: int, hn: Mapping, source: str) -> ResolvedLayers:
    """Rewrite a generated script: each hailo-whisper layer name (not a glob) becomes our layer(s)."""
    reference = reference_roles(model, blocks)
    commands = parse_model_script(text, source)
    used = sorted({name for c in commands if c.name == "quantization_param" and c.args
                   for name in [c.args[0]] if not name.startswith("{")}, key=_natural)
    unknown = [n for n in used if n not in reference]
    if unknown:
        raise ToolchainError(f"{source} names {unknown}, which hailo-whisper's {model} numbering does not have.",
                             "This is a bug in pipeline/dfc/model_scripts.py.")
    resolved = resolve_layers([reference[n] for n in used], hn)
    table = [{"reference": n, "role": reference[n].describe(), "layers": resolved[reference[n]]} for n in used]
    mapping = {row["reference"]: row for row in table}
    lines = []
    for line in text.splitlines():
        match = re.match(r"^quantization_param\((\w+),(.*)\)\s*$", line.strip())
        if match and match.group(1) in mapping:
            row = mapping[match.group(1)]
            lines += [f"quantization_param({layer},{match.group(2)})  # {row['role']} "
                      f"(hailo-whisper {row['reference']})" for layer in row["layers"]]
        else:
            lines.append(line)
    return ResolvedLayers("\n".join(lines) + "\n", table)


def _natural(name: str):
    match = re.match(r"([a-z_]+)(\d+)$", name)
    return (match.group(1), int(match.group(2))) if match else (name, 0)


def resolve_for_har(text: str, generated: bool, model: str, blocks: int, hn: Mapping,
                    source: str) -> tuple[str, list[dict], list[str]]:
    """(script text to load, role table, HAR layer list) after checking every name against the HAR.

    A generated profile's hailo-whisper names are resolved by role first; a user's script is
    taken as written (its names are meant for the HAR the user parsed) and only checked."""
    har_layers = list(hn.get("layers", {}))
    table: list[dict] = []
    if generated:
        resolved = resolve_reference_names(text, model, blocks, hn, source)
        text, table = resolved.text, resolved.table
    check_script_layers(parse_model_script(text, source), har_layers, source)
    return text, table, har_layers


def blocks_of(variant: str, model: str, variants: Optional[Mapping] = None) -> int:
    from pipeline.tables import VARIANTS

    entry = (variants or VARIANTS)[variant]
    return entry.encoder_layers if model == "encoder" else entry.decoder_layers
