"""What a build is asked to do (`BuildOptions`, made once by tasks.py) and what it did
(`BuildResult`, one `StageOutcome` per stage)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

from pipeline.errors import ToolchainError
from pipeline.host.stage_cache import STAGE_ORDER, StageRecord, resolve_force
from pipeline.host.watchdog import MINUTE, STALL_LIMITS_S
from pipeline.tables import DECODER_TARGETS, DEFAULT_ARCH, DEFAULT_VARIANT, PROFILES, BuildSpec, dfc_models, resolve_spec


@dataclass(frozen=True)
class BuildOptions:
    """Everything one build needs, made once by the entry point (tasks.py) and passed down."""

    variant: str = DEFAULT_VARIANT
    arch: str = DEFAULT_ARCH
    seconds: Optional[float] = None  # None: the variant's default
    seq_len: Optional[int] = None  # None: the variant's default
    model: Optional[str] = None  # Hugging Face id or local dir (transformers or CTranslate2); None: the variant's id
    calib_dir: Optional[Path] = None  # folder of speech recordings
    calib_download: bool = False  # fetch LibriSpeech dev-clean into <build>/calib/download
    calib_size: Optional[int] = None  # None: what the model scripts need
    profile: str = "full"
    decoder: str = "hailo"  # "hailo": decoder HEF; "cpu": the export's cached decoder ONNX runs on the host
    model_script: Optional[Path] = None  # an .alls for both models, or a folder with encoder.alls/decoder.alls
    cpu: bool = False
    allow_gpu: bool = False
    no_docker: bool = False
    out: Optional[Path] = None  # None: build/<variant>-<arch>
    force: tuple[str, ...] = ()  # stage names or groups (pipeline.host.stage_cache.FORCE_GROUPS)
    vendor_dir: Path = Path("vendor")
    base_image: Optional[str] = None  # passed to the image builds
    wheelhouse: Optional[Path] = None  # passed to the image builds (offline installs)
    stall_timeouts: Mapping[str, float] = field(default_factory=dict)  # stage or kind -> seconds
    stage_env: Mapping[str, str] = field(default_factory=dict)  # extra environment for every stage
    export_env: Mapping[str, str] = field(default_factory=dict)  # export/calib only, e.g. HF_TOKEN
    hang_probe_timeout_s: float = 120.0  # GPU hang probe: no output and no JIT cache growth this long
    jit_cache_dir: Optional[Path] = None  # CUDA JIT caches, one folder per image; None: default_jit_cache_root()
    stream_logs: bool = True  # stage output on the console too (always in logs/)
    eval_dir: Optional[Path] = None  # evaluation speech: the ladder's float and quantized rows before compile
    eval_download: bool = False  # LibriSpeech test-clean into <build>/eval/download instead
    max_wer_increase: Optional[float] = None  # WER points quantized may lose to onnx; more stops before compile
    # Preflight resource minimums; None: a real DFC build's (pipeline.host.doctor). The rehearsal
    # (test double, tiny model, quick profile) needs far less.
    min_free_disk_gib: Optional[float] = None
    min_memory_gib: Optional[float] = None
    download_probe: Callable[[str], None] = field(default=None, repr=False)  # raises OSError: unreachable

    def __post_init__(self):
        if self.download_probe is None:
            object.__setattr__(self, "download_probe", reach_url)
        # Every path resolved once, here: stages run with another working directory (a container
        # mounts host paths at the same absolute place), so a relative path must not reach them.
        for name in ("calib_dir", "model_script", "out", "vendor_dir", "wheelhouse"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).expanduser().resolve())
        if self.model and looks_like_path(self.model):
            object.__setattr__(self, "model", str(Path(self.model).expanduser().resolve()))
        for flag, value in (("--min-free-gb", self.min_free_disk_gib), ("--min-memory-gb", self.min_memory_gib)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ToolchainError(f"{flag} {value!r} is not a number of GiB >= 0.", f"Pass e.g. {flag} 30.")
        for stage, seconds in self.stall_timeouts.items():
            check_stall_stage(stage)
            if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
                raise ToolchainError(f"Stall limit {seconds!r} s for {stage!r} is not a positive number.",
                                     "Pass --stall-limit STAGE=MINUTES with MINUTES > 0, e.g. optimize=90.")
        if self.profile not in PROFILES:
            raise ToolchainError(f"Unknown profile {self.profile!r}.", f"Choose one of: {', '.join(PROFILES)}.")
        if self.calib_dir is not None and self.calib_download:
            raise ToolchainError("--calib and --calib-download both given.", "Pass only one of them.")
        if self.calib_size is not None and self.calib_size < 1:
            raise ToolchainError(f"Calibration size {self.calib_size} is not positive.", "Pass a size >= 1.")
        if self.eval_dir is not None and self.eval_download:
            raise ToolchainError("--eval and --eval-download both given.", "Pass only one of them.")
        if self.max_wer_increase is not None:
            if self.eval_dir is None and not self.eval_download:
                raise ToolchainError("--max-wer-increase needs evaluation speech.",
                                     "Add --eval DIR (LibriSpeech layout or transcripts.tsv) or --eval-download.")
            if self.max_wer_increase < 0:
                raise ToolchainError(f"--max-wer-increase {self.max_wer_increase:g} is negative.",
                                     "Pass the WER points the quantized networks may lose, e.g. 2.")
        object.__setattr__(self, "force", tuple(self.force))
        resolve_force(self.force)  # unknown names fail now, not after the export
        if self.decoder not in DECODER_TARGETS:
            raise ToolchainError(f"Unknown decoder target {self.decoder!r}.",
                                 "Use --decoder hailo (a decoder HEF) or --decoder cpu (the cached decoder ONNX on the host).")
        hailo_decoder_stages = [name for name in self.force if name == "decoder" or name.startswith("decoder-")]
        if self.decoder == "cpu" and hailo_decoder_stages:
            raise ToolchainError(
                f"--force {' '.join(hailo_decoder_stages)} asks to rerun the Hailo decoder's stages, but --decoder cpu "
                "builds no Hailo decoder: the decoder runs on the host from the export's cached decoder ONNX.",
                f"Drop --force {' '.join(hailo_decoder_stages)}, or build with --decoder hailo.",
            )

    @property
    def spec(self) -> BuildSpec:
        return resolve_spec(self.variant, self.arch, self.seconds, self.seq_len)

    @property
    def dfc_models(self) -> tuple[str, ...]:
        """The networks that go through calibration, parse, optimize and compile."""
        return dfc_models(self.decoder)

    @property
    def build_dir(self) -> Path:
        return Path(self.out) if self.out else (Path("build") / self.spec.build_name).resolve()


def reach_url(url: str, timeout_s: float = 15.0) -> None:
    """Raise OSError unless `url`'s server answers (a HEAD request; any HTTP status counts)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return  # the server answered
    except urllib.error.URLError as err:
        raise OSError(str(err.reason)) from None


def looks_like_path(model: str) -> bool:
    """A --model that names a local folder (not a Hugging Face id)."""
    return model.startswith((".", "/", "~")) or Path(model).exists()


# What --stall-limit accepts: a launched stage's name, or a kind (the last word of stage names).
STALL_STAGES = tuple(s for s in STAGE_ORDER if s not in ("bundle", "report")) + ("calib-download",)
STALL_KINDS = tuple(STALL_LIMITS_S) + ("download",)


def check_stall_stage(stage: str) -> None:
    if stage not in STALL_STAGES and stage not in STALL_KINDS:
        raise ToolchainError(f"--stall-limit names {stage!r}, which is not a stage.",
                             f"Use a stage ({', '.join(STALL_STAGES)}) or a kind ({', '.join(STALL_KINDS)}).")


def parse_number(flag: str, text, kind: type = float):
    """A numeric flag's value, or a ToolchainError naming the flag and the text."""
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise ToolchainError(f"{flag} {text!r} is not {'an integer' if kind is int else 'a number'}.",
                             f"Pass e.g. {flag} {'32' if kind is int else '10'}.") from None
    if kind is float and not math.isfinite(value):
        raise ToolchainError(f"{flag} {text!r} is not a finite number.", f"Pass e.g. {flag} 10.")
    return value


def parse_stall_limits(values: Iterable[str]) -> dict[str, float]:
    """`--stall-limit STAGE=MINUTES` values (stage or kind) -> {stage: seconds}."""
    limits = {}
    for text in values:
        stage, sep, minutes = str(text).partition("=")
        if not sep:
            raise ToolchainError(f"--stall-limit {text!r} is not STAGE=MINUTES.",
                                 "Pass e.g. --stall-limit optimize=90 or --stall-limit encoder-compile=120.")
        stage = stage.strip()
        check_stall_stage(stage)
        value = parse_number(f"--stall-limit {stage}=", minutes.strip())
        if value <= 0:
            raise ToolchainError(f"--stall-limit {text!r}: minutes must be positive.",
                                 f"Pass e.g. --stall-limit {stage}=90.")
        limits[stage] = value * MINUTE
    return limits


# The DFC test double's fault switches (tests/dfc_double): set in the caller's environment, they
# reach the stages in containers too (natively the stages inherit the environment anyway).
DOUBLE_FAULT_VARIABLES = ("HAILO_DOUBLE_FAIL_AT", "HAILO_DOUBLE_HANG_AT")


def hub_token_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Gated Hugging Face models: the token goes to the export stage at run time only."""
    return {"HF_TOKEN": environ["HF_TOKEN"]} if environ.get("HF_TOKEN") else {}


def resource_limits(min_free_gb=None, min_memory_gb=None) -> dict:
    """`--min-free-gb` / `--min-memory-gb` as typed -> the keyword arguments of BuildOptions and run_doctor."""
    given = (("min_free_disk_gib", "--min-free-gb", min_free_gb), ("min_memory_gib", "--min-memory-gb", min_memory_gb))
    return {name: parse_number(flag, value) for name, flag, value in given if value is not None}


def options_from_flags(environ: Mapping[str, str], *, seconds=None, seq_len=None, calib=None, calib_size=None,
                       model_script=None, out=None, force=None, vendor="vendor", wheelhouse=None, eval=None,
                       max_wer_increase=None, stall_limit=None, min_free_gb=None, min_memory_gb=None,
                       verbose=False, **plain) -> BuildOptions:
    """BuildOptions from `invoke build`'s flags as typed: numbers parsed with the flag named in any
    error, folders made Paths, the Hugging Face token and the double's fault switches taken from
    `environ`. `plain`: flags that pass through unchanged (variant, arch, model, profile, ...)."""
    def number(flag, text, kind=float):
        return parse_number(flag, text, kind) if text is not None else None

    return BuildOptions(
        **plain,
        seconds=number("--seconds", seconds),
        seq_len=number("--seq-len", seq_len, int),
        calib_dir=Path(calib) if calib else None,
        calib_size=number("--calib-size", calib_size, int),
        model_script=Path(model_script) if model_script else None,
        out=Path(out) if out else None,
        force=tuple(force or ()),
        vendor_dir=Path(vendor),
        wheelhouse=Path(wheelhouse) if wheelhouse else None,
        export_env=hub_token_env(environ),
        eval_dir=Path(eval) if eval else None,
        max_wer_increase=number("--max-wer-increase", max_wer_increase),
        stage_env={name: environ[name] for name in DOUBLE_FAULT_VARIABLES if environ.get(name)},
        stall_timeouts=parse_stall_limits(stall_limit or ()),
        stream_logs=verbose,
        **resource_limits(min_free_gb, min_memory_gb),
    )


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    status: str  # "up to date" | "ran"
    duration_s: float  # this run's wall time (up to date: the check's time)
    record: StageRecord  # the record now on disk (its duration_s: when the stage last ran)
    started_at: float = 0.0  # this run's start, wall clock (time.time): stages may overlap


@dataclass(frozen=True)
class BuildResult:
    build_dir: Path
    stages: tuple[StageOutcome, ...]
    manifest_path: Path
    report_path: Path
    bundle_dir: Path
    deployable: bool  # False for a rehearsal with the DFC test double
    warnings: tuple[str, ...]
    duration_s: float

    @property
    def ran(self) -> tuple[str, ...]:
        return tuple(s.stage for s in self.stages if s.status == "ran")

    @property
    def up_to_date(self) -> tuple[str, ...]:
        return tuple(s.stage for s in self.stages if s.status == "up to date")
