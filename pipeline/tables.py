"""The one place for facts about Whisper variants, Hailo architectures and the DFC images
(the DFC release -> image table and each image's GPU code live in pipeline/dfc_images.py and are
re-exported here).

Everything else reads these tables; nothing else hard-codes a dimension, a DFC version or a GPU
policy. Where a fact is not known, the field says so (`UNKNOWN`) instead of guessing. Sources:
../shared/reference/dfc-api.md (hailocs/hailo-whisper, hailo_model_zoo, Hailo's DFC docs) and the
field report in the seed conversion log.

`resolve_spec()` turns user choices into a validated, frozen `BuildSpec`; bad combinations fail
with a `ToolchainError` that names the valid choices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional, TypeVar

from pipeline.dfc_images import (  # noqa: F401  (re-exported: the one place for the tables)
    DFC_RELEASES,
    DOCUMENTED_COMPUTE,
    IMAGES,
    UNKNOWN,
    DfcImage,
    DfcRelease,
    GpuCode,
    JitEstimate,
    KnownBadGpu,
    dfc_major_minor,
    dfc_release,
    image_for_dfc,
)
from pipeline.errors import ToolchainError
T = TypeVar("T")

# Whisper front end (openai/whisper audio.py): 16 kHz audio, 25 ms window, 10 ms hop, 80 mel bins.
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
MAX_SECONDS = 30  # Whisper's native window: 3000 frames, 1500 encoder positions
MAX_TARGET_POSITIONS = 448  # decoder positional embedding rows
DECODER_VOCAB_SPLITS = 4  # the vocabulary projection is split in 4 matmuls to fit Hailo-8

# What a command builds when no variant or arch is given (invoke tasks, the export CLI, BuildOptions).
DEFAULT_VARIANT = "tiny"
DEFAULT_ARCH = "hailo8l"

# The two networks every build converts, in build order, and the generated model-script profiles
# (pipeline/dfc/model_scripts.py: full = hailo-whisper's settings, quick = minutes on a CPU).
MODELS = ("encoder", "decoder")
PROFILES = ("full", "quick")
# Where the decoder runs: "hailo" (its HEF, like the encoder) or "cpu" (the export's cached
# KV-cache decoder ONNX on the host: no decoder calibration, parse, optimize or compile).
DECODER_TARGETS = ("hailo", "cpu")


def dfc_models(decoder: str) -> tuple[str, ...]:
    """The networks the DFC converts when the decoder runs on `decoder` ("hailo" or "cpu")."""
    return MODELS if decoder == "hailo" else ("encoder",)
# Libraries the export stage records in export.json (the manifest looks them up natively when not).
EXPORT_LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime", "onnxslim", "numpy")


@dataclass(frozen=True)
class Variant:
    """One Whisper checkpoint family member and the Hailo-side defaults that work for it."""

    name: str
    hf_id: str
    d_model: int
    encoder_layers: int
    decoder_layers: int
    attention_heads: int
    vocab_size: int
    multilingual: bool
    default_seconds: int
    default_seq_len: int
    # Input lengths at or above this did not compile for Hailo (hailo-whisper: base at 10 s).
    # None: no known limit below Whisper's 30 s.
    refused_from_seconds: Optional[int] = None
    refused_reason: str = ""
    n_mels: int = N_MELS

    @property
    def is_english_only(self) -> bool:
        return not self.multilingual


_BASE_10S = "hailo-whisper could not compile the base encoder at 10 s; 5 s is the known-good length"

VARIANTS: Mapping[str, Variant] = {
    v.name: v
    for v in (
        Variant("tiny", "openai/whisper-tiny", 384, 4, 4, 6, 51865, True, 10, 32),
        Variant("tiny.en", "openai/whisper-tiny.en", 384, 4, 4, 6, 51864, False, 10, 32),
        Variant("base", "openai/whisper-base", 512, 6, 6, 8, 51865, True, 5, 24, 10, _BASE_10S),
        Variant("base.en", "openai/whisper-base.en", 512, 6, 6, 8, 51864, False, 5, 24, 10, _BASE_10S),
    )
}


@dataclass(frozen=True)
class DfcSeries:
    """A DFC major version: the wheel in vendor/ the archs of this series need."""

    name: str  # "dfc3" | "dfc5": what `invoke image --target` calls the series' image
    dfc_major: int
    min_dfc_version: str


SERIES: Mapping[str, DfcSeries] = {
    s.name: s for s in (DfcSeries("dfc3", 3, "3.31.0"), DfcSeries("dfc5", 5, "5.0.0"))
}
# Every image a stage runs in: the CPU-only export image (its base is in pipeline/host/image_plan.py)
# and the DFC images, one per CUDA stack (pipeline/dfc_images.py).
STAGE_IMAGES = ("export", *IMAGES)


@dataclass(frozen=True)
class Arch:
    """A Hailo accelerator and the DFC major version that compiles for it."""

    name: str
    series: str  # key into SERIES
    description: str

    @property
    def dfc(self) -> DfcSeries:
        return SERIES[self.series]


ARCHS: Mapping[str, Arch] = {
    a.name: a
    for a in (
        Arch("hailo8", "dfc3", "Hailo-8 (26 TOPS)"),
        Arch("hailo8l", "dfc3", "Hailo-8L (13 TOPS, Raspberry Pi AI Kit)"),
        Arch("hailo10h", "dfc5", "Hailo-10H"),
    )
}


@dataclass(frozen=True)
class BuildSpec:
    """What one build makes: a variant at a fixed input length for one Hailo architecture."""

    variant: Variant
    arch: Arch
    seconds: float
    seq_len: int

    @property
    def frames(self) -> int:
        """Mel frames of the encoder input: seconds * 100."""
        return round(self.seconds * FRAMES_PER_SECOND)

    @property
    def encoder_positions(self) -> int:
        """Encoder output length: conv2 has stride 2, so frames / 2."""
        return self.frames // 2

    @property
    def seconds_tag(self) -> str:
        """'10s' or '2.5s': seconds as they appear in file and network names."""
        return f"{self.seconds:g}s"

    @property
    def slug(self) -> str:
        """Variant name usable in file and network names ('tiny.en' -> 'tiny_en')."""
        return self.variant.name.replace(".", "_")

    @property
    def encoder_net_name(self) -> str:
        """DFC network name of the encoder; prefixes its layer names (`<net>/input_layer1`)."""
        return f"whisper_{self.slug}_encoder_{self.seconds_tag.replace('.', 'p')}"

    @property
    def decoder_net_name(self) -> str:
        return f"whisper_{self.slug}_decoder_{self.seconds_tag.replace('.', 'p')}_seq{self.seq_len}"

    @property
    def build_name(self) -> str:
        """Default build directory name: `<variant>-<arch>`, plus `-<seconds>s` / `-seq<n>` when they
        differ from the variant's defaults, so builds of other shapes never share a folder."""
        name = f"{self.variant.name}-{self.arch.name}"
        if self.seconds != self.variant.default_seconds:
            name += f"-{self.seconds_tag}"
        if self.seq_len != self.variant.default_seq_len:
            name += f"-seq{self.seq_len}"
        return name


def _choices(table: Mapping[str, object]) -> str:
    return ", ".join(table)


def _lookup(table: Mapping[str, T], name: str, what: str) -> T:
    try:
        return table[name]
    except KeyError:
        raise ToolchainError(f"Unknown {what} {name!r}.", f"Choose one of: {_choices(table)}.") from None


def get_variant(name: str) -> Variant:
    return _lookup(VARIANTS, name, "Whisper variant")


def get_arch(name: str) -> Arch:
    return _lookup(ARCHS, name, "Hailo architecture")


def get_image(name: str) -> DfcImage:
    return _lookup(IMAGES, name, "DFC image")


def get_series(name: str) -> DfcSeries:
    return _lookup(SERIES, name, "DFC series")


def check_seconds(variant: Variant, seconds: float) -> float:
    """Validate an encoder input length; return it as a float."""
    seconds = float(seconds)
    if not 1 <= seconds <= MAX_SECONDS:
        raise ToolchainError(
            f"Input length {seconds:g} s is outside Whisper's range.",
            f"Use 1 to {MAX_SECONDS} seconds (default for {variant.name}: {variant.default_seconds}).",
        )
    frames = seconds * FRAMES_PER_SECOND
    if abs(frames - round(frames)) > 1e-6 or round(frames) % 2:
        raise ToolchainError(
            f"Input length {seconds:g} s gives {frames:g} mel frames, which is not a whole even "
            "number (the encoder halves the frames).",
            "Use seconds in steps of 0.02 s, e.g. whole seconds "
            f"(default for {variant.name}: {variant.default_seconds}).",
        )
    if variant.refused_from_seconds is not None and seconds >= variant.refused_from_seconds:
        raise ToolchainError(
            f"{variant.name} at {seconds:g} s is refused: {variant.refused_reason}.",
            f"Use less than {variant.refused_from_seconds} s (default {variant.default_seconds}).",
        )
    return seconds


def check_seq_len(variant: Variant, seq_len: int) -> int:
    if int(seq_len) != seq_len or not 1 <= seq_len <= MAX_TARGET_POSITIONS:
        raise ToolchainError(
            f"Decoder sequence length {seq_len} is outside 1..{MAX_TARGET_POSITIONS} "
            "(Whisper's decoder has 448 positions).",
            f"Use a value in that range (default for {variant.name}: {variant.default_seq_len}).",
        )
    return int(seq_len)


def resolve_spec(
    variant: str,
    arch: str,
    seconds: Optional[float] = None,
    seq_len: Optional[int] = None,
) -> BuildSpec:
    """Make the validated BuildSpec for the user's choices (defaults from the variant table)."""
    v = get_variant(variant)
    a = get_arch(arch)
    secs = check_seconds(v, v.default_seconds if seconds is None else seconds)
    seq = check_seq_len(v, v.default_seq_len if seq_len is None else seq_len)
    return BuildSpec(variant=v, arch=a, seconds=secs, seq_len=seq)


_DFC_WHEEL = re.compile(
    # The real wheel is linux_x86_64; the test double (tests/dfc_double) is any, with a local
    # version label such as 3.31.0+testdouble.
    r"^hailo_dataflow_compiler-(?P<version>\d+\.\d+\.\d+)(?P<local>\+[A-Za-z0-9.]+)?"
    r"-py3-none-(?:linux_x86_64|any)\.whl$"
)


def parse_dfc_wheel_name(filename: str) -> str:
    """Version from a DFC wheel file name, e.g. 'hailo_dataflow_compiler-3.31.0-py3-none-linux_x86_64.whl'."""
    match = _DFC_WHEEL.match(filename)
    if not match:
        raise ToolchainError(
            f"{filename!r} is not a DFC wheel name.",
            "Expected hailo_dataflow_compiler-<X.Y.Z>-py3-none-linux_x86_64.whl as downloaded from "
            "Hailo's Developer Zone; do not rename the file.",
        )
    return match.group("version") + (match.group("local") or "")
