"""Model scripts (.alls): the DFC's optimization and compilation settings, per variant x arch x model.

The scripts are generated from one small table (`full_recipe`) instead of 24 hand-kept files, so a
difference between two of them is a visible table entry. Two profiles:

  full   what hailocs/hailo-whisper uses (conversion/optimization/<variant>/<arch>/*.alls, commit
         347d8a0): optimization level 2, calibration and QAT fine-tune set sizes, 16-bit layers,
         matmul correction/equalization, layer-norm decomposition where it uses it, performance and
         resource parameters, and the layer noise analysis (checker_cfg) that prints SNR per output.
         Hours on a GPU; the seed log estimates 2 h 18 min per fine-tune epoch on a CPU.
  quick  the same structure at optimization level 0 with fine-tuning off, a small calibration set
         and no noise analysis: minutes, for iterating on the pipeline and for CPU-only machines.
         The HEF runs but is less accurate.

`--model-script PATH` replaces the generated script. Whatever the source, `parse_model_script`
reads it so `optimize` can check the calibration set is large enough before the DFC starts (a
fine-tune that runs out of data fails after hours of statistics collection).

The 16-bit layer names in `full_recipe` (`conv4`, ...) are the names the DFC gave hailo-whisper's
graphs, kept here as the source's facts. Our graph numbers its layers differently (q/k/v are three
convs, not one), so optimize resolves each name by its role to our HAR's layer before loading the
script (pipeline/dfc/layer_roles.py) and refuses a script naming a layer the HAR does not have.

About 470 lines: the recipe tables (about 100 lines of data), the .alls reader and the needs it
derives belong together — the reader checks what the recipes write.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from pipeline.errors import ToolchainError
from pipeline.tables import ARCHS, MODELS, PROFILES, VARIANTS

# DFC defaults when a script does not say (Hailo DFC user guide, model_optimization_config and
# post_quantization_optimization sections). Uncertain across versions; only used for the pre-check.
DFC_DEFAULT_CALIBSET_SIZE = 64
DFC_DEFAULT_FINETUNE_DATASET_SIZE = 1024

# quick profile: enough entries for stable activation ranges on short inputs, small enough for
# a CPU and for the tests' tiny calibration sets.
QUICK_CALIBSET_SIZE = 16
QUICK_CALIB_BATCH_SIZE = 4


@dataclass(frozen=True)
class Finetune:
    """post_quantization_optimization(finetune, ...): QAT; needs `dataset_size` calibration entries."""

    dataset_size: int
    epochs: int
    learning_rate: float
    batch_size: Optional[int] = None


@dataclass(frozen=True)
class Recipe:
    """Everything a generated script says; `render()` turns it into .alls text."""

    optimization_level: int
    compression_level: Optional[int]  # None: not written (DFC default)
    calib_batch_size: int
    calibset_size: int
    finetune: Optional[Finetune]
    disable_ew_add_fusing: bool = False
    matmul_correction: bool = False
    layer_norm_decomposition: bool = False
    matmul_equalization: bool = False
    a16_layers: tuple[str, ...] = ()  # quantization_param(<layer>, precision_mode=a16_w16)
    a8_layers: tuple[str, ...] = ()  # written after a16 so they override a glob
    compiler_optimization_level_max: bool = False
    max_utilization: Optional[float] = None
    noise_analysis: bool = True  # model_optimization_config(checker_cfg, policy=enabled)

    def render(self, title: str) -> str:
        flavor = f"optimization_level={self.optimization_level}"
        if self.compression_level is not None:
            flavor += f", compression_level={self.compression_level}"
        lines = [f"# {title}", f"model_optimization_flavor({flavor})",
                 f"model_optimization_config(calibration, batch_size={self.calib_batch_size}, "
                 f"calibset_size={self.calibset_size})"]
        if self.finetune:
            ft = self.finetune
            batch = f", batch_size={ft.batch_size}" if ft.batch_size else ""
            lines.append(
                f"post_quantization_optimization(finetune, policy=enabled, dataset_size={ft.dataset_size}, "
                f"epochs={ft.epochs}, learning_rate={_decimal(ft.learning_rate)}{batch})"
            )
        else:
            lines.append("post_quantization_optimization(finetune, policy=disabled)")
        if self.disable_ew_add_fusing:
            lines.append("pre_quantization_optimization(ew_add_fusing, policy=disabled)")
        if self.matmul_correction:
            lines.append("pre_quantization_optimization(matmul_correction, layers={matmul*}, "
                         "correction_type=zp_comp_block)")
        if self.layer_norm_decomposition:
            lines.append("pre_quantization_optimization(layer_norm_decomposition, "
                         "bit_decomposition_mode=uniform_precision, equalization=disabled)")
        if self.matmul_equalization:
            lines.append("pre_quantization_optimization(matmul_equalization, layers={matmul*}, "
                         "matmul_bias=enabled)")
        lines += [f"quantization_param({layer}, precision_mode=a16_w16)" for layer in self.a16_layers]
        lines += [f"quantization_param({layer}, precision_mode=a8_w8)" for layer in self.a8_layers]
        if self.compiler_optimization_level_max:
            lines.append("performance_param(compiler_optimization_level=max, optimize_for_batch=1)")
        else:
            lines.append("performance_param(optimize_for_batch=1)")
        if self.max_utilization is not None:
            lines.append(f"resources_param(max_utilization={self.max_utilization:g})")
        if self.noise_analysis:
            lines.append(NOISE_ANALYSIS_COMMAND)
        return "\n".join(lines) + "\n"


def _decimal(value: float) -> str:
    """0.00001 rather than 1e-05: written the way the reference scripts write it."""
    return f"{value:.12f}".rstrip("0").rstrip(".")


NOISE_ANALYSIS_COMMAND = "model_optimization_config(checker_cfg, policy=enabled)"


def _convs(*numbers: int) -> tuple[str, ...]:
    return tuple(f"conv{n}" for n in numbers)


def full_recipe(variant: str, arch: str, model: str) -> Recipe:
    """The `full` profile, as hailocs/hailo-whisper conversion/optimization/<variant>/<arch>/ has it.

    Source files (commit 347d8a0): encoder_model_script_<variant>.alls and
    decoder_model_script_<variant>_matmul_split.alls for each of tiny, tiny.en, base, base.en
    and hailo8, hailo8l, hailo10h.
    """
    _check_choice("variant", variant, VARIANTS)
    _check_choice("arch", arch, ARCHS)
    _check_choice("model", model, MODELS)
    family = "base" if variant.startswith("base") else "tiny"
    english = variant.endswith(".en")
    if model == "encoder":
        common = dict(
            optimization_level=2,
            calib_batch_size=8,
            disable_ew_add_fusing=True,
            matmul_correction=True,
            matmul_equalization=True,
            a8_layers=("ew_add1",),
            # hailo-whisper uses layer-norm decomposition on hailo10h for tiny and base, not for
            # the .en variants (commented out there).
            layer_norm_decomposition=arch == "hailo10h" and not english,
        )
        if family == "tiny":
            return Recipe(
                **common,
                compression_level=0 if english else None,
                calibset_size=1024,
                finetune=Finetune(3340, 6, 1e-5, batch_size=4 if english else 8),
                a16_layers=_convs(4, 6, 8, 10, 12, 14, 16, 18, 5, 9, 13, 17) + ("{ew_add*}",),
                # tiny.en asks for the slower, better compile; tiny has it commented out.
                compiler_optimization_level_max=english,
            )
        return Recipe(
            **common,
            compression_level=0,
            calibset_size=512,
            finetune=Finetune(2048, 4, 1e-5, batch_size=4),
            a16_layers=_convs(4, 6, 8, 10, 12, 14, 16, 18, 5, 9, 13, 17, 20, 21, 22, 24, 25, 26)
            + ("{ew_add*}",),
        )
    # decoder (the vocabulary projection split into 4 matmuls: *_matmul_split.alls)
    if family == "tiny":
        return Recipe(
            optimization_level=2,
            compression_level=0,
            calib_batch_size=4,
            calibset_size=128,
            finetune=Finetune(1024, 4, 1e-5),
            layer_norm_decomposition=english or arch == "hailo10h",
            a16_layers=("{ew_add*}",) + _convs(12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 25, 31)
            + ("{output_layer*}",),
            max_utilization=0.7 if english or arch == "hailo10h" else 0.8,
        )
    return Recipe(
        optimization_level=2,
        compression_level=0,
        calib_batch_size=4,
        calibset_size=256,
        finetune=Finetune(1024, 4, 1e-5),
        layer_norm_decomposition=variant == "base" and arch == "hailo10h",
        a16_layers=("{ew_add*}",) + _convs(*range(12, 49, 2)),
        max_utilization=0.8,
    )


def quick_recipe(variant: str, arch: str, model: str) -> Recipe:
    """`full` at optimization level 0: no fine-tune, small calibration set, no noise analysis."""
    full = full_recipe(variant, arch, model)
    return replace(
        full,
        optimization_level=0,
        compression_level=0,
        calib_batch_size=QUICK_CALIB_BATCH_SIZE,
        calibset_size=QUICK_CALIBSET_SIZE,
        finetune=None,
        compiler_optimization_level_max=False,
        noise_analysis=False,
    )


def generated_script(variant: str, arch: str, model: str, profile: str) -> str:
    """The .alls text of a profile, with a header saying where it came from."""
    _check_choice("profile", profile, PROFILES)
    recipe = (full_recipe if profile == "full" else quick_recipe)(variant, arch, model)
    return recipe.render(
        f"whisper-hailo-toolchain {profile} profile: {variant} {model} for {arch} "
        "(generated by pipeline/dfc/model_scripts.py; settings from hailocs/hailo-whisper)"
    )


# --- reading scripts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptCommand:
    """One .alls command: `[targets =] name(args, key=value)`; values are kept as written."""

    name: str
    args: tuple[str, ...]
    kwargs: Mapping[str, str]
    targets: tuple[str, ...] = ()
    line: int = 0

    @property
    def first(self) -> Optional[str]:
        """The first positional argument (the algorithm or layer a command is about)."""
        return self.args[0] if self.args else None


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TARGET = re.compile(r"^[A-Za-z_][\w/.\-]*$")
_CLOSERS = {"(": ")", "{": "}", "[": "]"}


def _split_top_level(text: str, what: str) -> list[str]:
    """Split on commas that are not inside (), {}, [] or quotes; raise ValueError if unbalanced."""
    parts, depth, quote, start = [], [], None, 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in _CLOSERS:
            depth.append(_CLOSERS[ch])
        elif ch in ")}]":
            if not depth or depth.pop() != ch:
                raise ValueError(f"unbalanced {ch!r} in {what}")
        elif ch == "," and not depth:
            parts.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise ValueError(f"unclosed {(quote or depth[-1])!r} in {what}")
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _parse_line(text: str, line_no: int) -> ScriptCommand:
    open_at = text.find("(")
    if open_at < 0 or not text.endswith(")"):
        raise ValueError("expected name(arguments)")
    head, inner = text[:open_at].strip(), text[open_at + 1 : -1]
    targets: tuple[str, ...] = ()
    if "=" in head:
        left, head = head.rsplit("=", 1)
        targets = tuple(t.strip() for t in left.split(","))
        head = head.strip()
        if not all(_TARGET.match(t) for t in targets):
            raise ValueError(f"bad layer names before '=': {left.strip()!r}")
    if not _NAME.match(head):
        raise ValueError(f"bad command name {head!r}")
    args, kwargs = [], {}
    if inner.strip():
        for part in _split_top_level(inner, "the arguments"):
            if not part:
                raise ValueError("empty argument (two commas in a row?)")
            key, eq, value = part.partition("=")
            if eq and _NAME.match(key.strip()) and not key.strip().startswith("{"):
                if not value.strip():
                    raise ValueError(f"no value for {key.strip()!r}")
                kwargs[key.strip()] = value.strip()
            elif kwargs:
                raise ValueError(f"positional argument {part!r} after keyword arguments")
            else:
                args.append(part)
    return ScriptCommand(head, tuple(args), kwargs, targets, line_no)


def parse_model_script(text: str, source: str = "model script") -> list[ScriptCommand]:
    """Commands of an .alls text. Comments (#) and blank lines are skipped; a command whose
    parentheses are still open at the end of a line continues on the next one.

    Raises ToolchainError naming the file, line and text of a malformed command.
    """
    commands: list[ScriptCommand] = []
    pending, pending_line = "", 0
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not pending:
            pending_line = line_no
        pending = f"{pending} {line}".strip()
        if pending.count("(") > pending.count(")"):
            continue  # continues on the next line
        try:
            commands.append(_parse_line(pending, pending_line))
        except ValueError as err:
            raise ToolchainError(
                f"{source} line {pending_line} is malformed ({err}): {pending!r}.",
                "Fix that line; model script commands look like "
                "name(argument, key=value), e.g. model_optimization_flavor(optimization_level=0).",
            ) from None
        pending = ""
    if pending:
        raise ToolchainError(
            f"{source} line {pending_line} never closes its parenthesis: {pending!r}.",
            "Add the missing ')'.",
        )
    return commands


@dataclass(frozen=True)
class CalibrationNeeds:
    """How many calibration entries a script needs, and why."""

    calibset_size: int
    finetune_dataset_size: Optional[int]  # None: no fine-tune

    @property
    def entries(self) -> int:
        return max(self.calibset_size, self.finetune_dataset_size or 0)


def _int_value(cmd: ScriptCommand, key: str, source: str) -> int:
    try:
        return int(cmd.kwargs[key])
    except ValueError:
        raise ToolchainError(
            f"{source} line {cmd.line}: {key}={cmd.kwargs[key]!r} is not a whole number.",
            f"Write {key} as an integer, e.g. {key}=1024.",
        ) from None


def calibration_needs(commands: Sequence[ScriptCommand], source: str = "model script") -> CalibrationNeeds:
    """calibset_size and (if fine-tune is enabled) dataset_size, last command winning like the DFC."""
    calibset_size = DFC_DEFAULT_CALIBSET_SIZE
    finetune: Optional[int] = None
    for cmd in commands:
        if cmd.name == "model_optimization_config" and cmd.first == "calibration":
            if "calibset_size" in cmd.kwargs:
                calibset_size = _int_value(cmd, "calibset_size", source)
        elif cmd.name == "post_quantization_optimization" and cmd.first == "finetune":
            if cmd.kwargs.get("policy", "enabled") == "enabled":
                finetune = (_int_value(cmd, "dataset_size", source) if "dataset_size" in cmd.kwargs
                            else DFC_DEFAULT_FINETUNE_DATASET_SIZE)
            else:
                finetune = None
    return CalibrationNeeds(calibset_size, finetune)


def enables_noise_analysis(commands: Sequence[ScriptCommand]) -> bool:
    """True when the script turns on the layer noise analysis that prints SNR per output."""
    enabled = False
    for cmd in commands:
        if cmd.name == "model_optimization_config" and cmd.first == "checker_cfg":
            enabled = cmd.kwargs.get("policy", "enabled") == "enabled"
    return enabled


@dataclass(frozen=True)
class ResolvedScript:
    """The script optimize will load: its text, where it came from, and what it needs."""

    text: str
    source: str  # "profile:full", "profile:quick" or the --model-script path
    profile: str  # "full", "quick" or "custom"
    commands: tuple[ScriptCommand, ...] = field(repr=False, default=())

    @property
    def needs(self) -> CalibrationNeeds:
        return calibration_needs(self.commands, self.source)

    @property
    def noise_analysis(self) -> bool:
        return enables_noise_analysis(self.commands)


def resolve_model_script(
    variant: str,
    arch: str,
    model: str,
    profile: str = "full",
    model_script: Optional[Path] = None,
    noise_analysis: bool = False,
) -> ResolvedScript:
    """The generated `profile` script, or the user's `model_script` file (which wins).

    `noise_analysis` appends the checker command when the script does not already enable it.
    """
    if model_script is not None:
        path = Path(model_script)
        if not path.is_file():
            raise ToolchainError(
                f"Model script {path} does not exist.",
                "Pass the path of an .alls file, or drop --model-script to use --profile full|quick.",
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ToolchainError(f"Model script {path} cannot be read: {err}.",
                                 "Pass a readable UTF-8 .alls text file.") from None
        source, used_profile = str(path), "custom"
    else:
        text = generated_script(variant, arch, model, profile)
        source, used_profile = f"profile:{profile}", profile
    commands = parse_model_script(text, source)
    if not commands:
        raise ToolchainError(f"Model script {source} has no commands.",
                             "Add commands, or use --profile full|quick.")
    if noise_analysis and not enables_noise_analysis(commands):
        text = text.rstrip("\n") + "\n" + NOISE_ANALYSIS_COMMAND + "\n"
        commands = parse_model_script(text, source)
    return ResolvedScript(text=text, source=source, profile=used_profile, commands=tuple(commands))


def calibration_entries_needed(variant: str, arch: str, profile: str = "full",
                               model_script_for: Callable[[str], Optional[Path]] = lambda model: None) -> int:
    """The most calibration entries either model's script uses (calibset_size, fine-tune
    dataset_size): the one default size of the encoder calibration set, for `invoke calib` and
    `invoke build` alike. `model_script_for(model)`: the user's .alls for that model, or None."""
    return max(resolve_model_script(variant, arch, model, profile, model_script_for(model)).needs.entries
               for model in MODELS)


def _check_choice(what: str, value: str, choices) -> None:
    if value not in choices:
        raise ToolchainError(f"Unknown {what} {value!r}.", f"Choose one of: {', '.join(choices)}.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.dfc.model_scripts",
        description="Print the model script (.alls) the optimize stage would use.",
    )
    parser.add_argument("--variant", required=True, choices=list(VARIANTS))
    parser.add_argument("--arch", required=True, choices=list(ARCHS))
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--profile", default="full", choices=PROFILES)
    parser.add_argument("--noise-analysis", action="store_true",
                        help="append the layer noise analysis if the profile does not enable it")
    args = parser.parse_args(argv)
    script = resolve_model_script(args.variant, args.arch, args.model, args.profile,
                                  noise_analysis=args.noise_analysis)
    sys.stdout.write(script.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
