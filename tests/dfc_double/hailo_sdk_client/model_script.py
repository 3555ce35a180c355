"""The test double's own reading of model scripts (.alls), independent of pipeline/dfc/model_scripts.py
so a mistake there is not mirrored here.

Only the commands the toolchain uses (and a few neighbours) are known; anything else is rejected,
as is an unknown keyword or a value outside the documented choices.
"""

import re


class ModelScriptError(Exception):
    """Raised like the DFC's model-script parser errors."""


_ANY = None  # any value
_POLICY = {"enabled", "disabled"}
_PRECISIONS = {"a8_w8", "a16_w16", "a8_w4", "a16_w8", "a16_w4"}


def _int_in(lo, hi):
    def check(value):
        return re.fullmatch(r"-?\d+", value) is not None and lo <= int(value) <= hi
    return check


def _float_in(lo, hi):
    def check(value):
        try:
            return lo < float(value) <= hi
        except ValueError:
            return False
    return check


_POSITIVE = _int_in(1, 10**9)


class _AnyKey(dict):
    """A keyword table that takes every key with any value."""

    def __contains__(self, key):
        return True

    def __getitem__(self, key):
        return _ANY


_ANY_KEY = _AnyKey()
_LAYER_OR_NOTHING = "layer-or-nothing"
COMPILE_COMMANDS = {"performance_param", "resources_param", "allocator_param", "compilation_param"}

# command -> (allowed first positional arguments or None for "a layer name/glob", {keyword: check})
COMMANDS = {
    "model_optimization_flavor": ((), {
        "optimization_level": _int_in(0, 4),
        "compression_level": _int_in(0, 5),
        "batch_size": _POSITIVE,
    }),
    "model_optimization_config": ({"calibration", "checker_cfg", "globals", "compression_params"}, {
        "multiproc_policy": {"allowed", "disabled", "enabled"},  # Model Zoo cfg/alls/generic/tinyclip_*
        "batch_size": _POSITIVE,
        "calibset_size": _POSITIVE,
        "policy": _POLICY,
        "dataset_size": _POSITIVE,
        "analyze_mode": {"simple", "advanced"},
        "batch_norm_checker": _POLICY,
    }),
    "post_quantization_optimization": ({"finetune", "bias_correction", "adaround", "train_encoding"}, {
        "policy": _POLICY,
        "dataset_size": _POSITIVE,
        "epochs": _POSITIVE,
        "learning_rate": _float_in(0.0, 1.0),
        "batch_size": _POSITIVE,
        "loss_layer_names": _ANY,
        "loss_types": _ANY,
    }),
    "pre_quantization_optimization": ({
        "ew_add_fusing", "matmul_correction", "matmul_equalization", "layer_norm_decomposition",
        "equalization", "activation_clipping", "weights_clipping", "dead_channels_removal",
        "zero_static_channels", "global_avgpool_reduction",
    }, {
        "policy": _POLICY,
        "layers": _ANY,
        "correction_type": {"zp_comp", "zp_comp_block", "zp_comp_weights"},
        "matmul_bias": _POLICY,
        "bit_decomposition_mode": {"uniform_precision", "mixed_precision"},
        "equalization": _POLICY,
        "mode": _ANY,
        "clipping_values": _ANY,
    }),
    "quantization_param": (None, {
        "precision_mode": _PRECISIONS,
        "bias_mode": {"single_scale_decomposition", "double_scale_initialization"},
        "quantization_groups": _POSITIVE,
        "force_range_out": _ANY,
    }),
    "performance_param": ((), {
        "optimize_for_batch": _POSITIVE,
        "compiler_optimization_level": {"0", "1", "2", "max"},
        "fps": _POSITIVE,
    }),
    # Model Zoo scripts: allocator_param(disable_row_per_cut=True) (cfg/alls/base/vit_base.alls);
    # compilation_param(<layer>, key=value). Their keys are many; any key is accepted.
    "allocator_param": ((), _ANY_KEY),
    "compilation_param": (_LAYER_OR_NOTHING, _ANY_KEY),
    "resources_param": ((), {
        key: _float_in(0.0, 1.0) for key in (
            "max_utilization", "max_control_utilization", "max_compute_utilization",
            "max_memory_utilization", "max_compute_16bit_utilization",
            "max_input_aligner_utilization", "max_apu_utilization")
    }),
}

_LAYER = re.compile(r"^(\{[\w*?/.\-]+(\s*,\s*[\w*?/.\-]+)*\}|[A-Za-z_][\w/.\-]*)$")


def _split(text):
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
            if depth < 0:
                raise ModelScriptError(f"unbalanced brackets in {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    if depth:
        raise ModelScriptError(f"unbalanced brackets in {text!r}")
    parts.append(text[start:].strip())
    return [p for p in parts]


def _logical_lines(text):
    """(first line number, command) pairs: comments dropped, a command whose parentheses are still
    open at the end of a line continues on the next (Model Zoo scripts wrap long commands)."""
    pending, first = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not pending:
            first = number
        pending = f"{pending} {line}".strip()
        if pending.count("(") > pending.count(")"):
            continue
        yield first, pending
        pending = ""
    if pending:
        raise ModelScriptError(f"line {first}: command never closes its parenthesis: {pending!r}")


def parse(text):
    """[(name, args, kwargs, line_number)] of a script text; raises ModelScriptError."""
    commands = []
    for number, line in _logical_lines(text):
        match = re.fullmatch(r"(?:[\w/,\s.\-]+=\s*)?([A-Za-z_]\w*)\((.*)\)", line)
        if not match:
            raise ModelScriptError(f"line {number}: cannot parse {line!r}")
        name, inner = match.group(1), match.group(2)
        if name not in COMMANDS:
            raise ModelScriptError(f"line {number}: unknown model script command {name!r}")
        firsts, keys = COMMANDS[name]
        args, kwargs = [], {}
        for part in _split(inner) if inner.strip() else []:
            if not part:
                raise ModelScriptError(f"line {number}: empty argument in {line!r}")
            key, eq, value = part.partition("=")
            if eq and re.fullmatch(r"[A-Za-z_]\w*", key.strip()):
                key, value = key.strip(), value.strip()
                if key not in keys:
                    raise ModelScriptError(f"line {number}: {name} has no argument {key!r}")
                check = keys[key]
                ok = check is None or (value in check if isinstance(check, set) else check(value))
                if not ok:
                    raise ModelScriptError(f"line {number}: {key}={value!r} is not valid for {name}")
                kwargs[key] = value
            else:
                args.append(part)
        if firsts == _LAYER_OR_NOTHING:
            if args and not _LAYER.match(args[0]):
                raise ModelScriptError(f"line {number}: {name} takes a layer name or {{glob}} first")
        elif firsts is None:
            if not args or not _LAYER.match(args[0]):
                raise ModelScriptError(f"line {number}: {name} needs a layer name or {{glob}} first")
        elif firsts:
            if not args or args[0] not in firsts:
                raise ModelScriptError(
                    f"line {number}: {name} does not know {args[0] if args else '(nothing)'!r}; "
                    f"expected one of {sorted(firsts)}")
        elif args:
            raise ModelScriptError(f"line {number}: {name} takes only key=value arguments")
        commands.append((name, tuple(args), kwargs, number))
    return commands


def settings(commands):
    """What the double's optimize() acts on, with the DFC defaults it assumes."""
    result = {"optimization_level": 2, "calibset_size": 64, "finetune_dataset_size": None,
              "finetune_epochs": 0, "noise_analysis": False}
    for name, args, kwargs, _ in commands:
        first = args[0] if args else None
        if name == "model_optimization_flavor" and "optimization_level" in kwargs:
            result["optimization_level"] = int(kwargs["optimization_level"])
        elif name == "model_optimization_config" and first == "calibration":
            result["calibset_size"] = int(kwargs.get("calibset_size", result["calibset_size"]))
        elif name == "model_optimization_config" and first == "checker_cfg":
            result["noise_analysis"] = kwargs.get("policy", "enabled") == "enabled"
        elif name == "post_quantization_optimization" and first == "finetune":
            if kwargs.get("policy", "enabled") == "enabled":
                result["finetune_dataset_size"] = int(kwargs.get("dataset_size", 1024))
                result["finetune_epochs"] = int(kwargs.get("epochs", 4))
            else:
                result["finetune_dataset_size"] = None
    return result
