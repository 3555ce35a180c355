"""Where files live: this checkout (`REPO_ROOT`) and one build's directory (`Layout`).

Every path into a build directory is written here once; the build, the invoke tasks, the stage
CLIs' build-directory helpers and the manifest ask a `Layout` instead of joining names by hand.
Stage code imports this module too, so it holds paths only (no host-side imports).

    build/<variant>-<arch>/
      export/export.json, export/*.onnx, export/*.npy   export stage
      calib/encoder_calib.npy (+ .manifest.json)        encoder calibration set
      calib/decoder_calib.npz (+ .manifest.json)        decoder calibration set
      calib/download/                                   --calib-download audio
      dfc/<model>/<net>.har, parse.json                 parse
      dfc/<model>/<net>_optimized.har, <net>.alls, optimize.json
      dfc/<model>/<net>.hef, <net>_compiled.har, compile.json
      eval/ladder.json, eval/download/                  accuracy ladder before compile (--eval)
      logs/, bundle/, manifest.json, report.md, .cache/huggingface/ (Docker mode)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.export.meta import EXPORT_JSON

REPO_ROOT = Path(__file__).resolve().parents[1]

# The HAR each DFC step writes: <net><suffix>.har (hailo-whisper's names).
_HAR_SUFFIX = {"parse": "", "optimize": "_optimized", "compile": "_compiled"}


def har_path(out_dir: Path, net_name: str, step: str) -> Path:
    """<out>/<net>.har after parse, <net>_optimized.har after optimize, <net>_compiled.har after compile."""
    return Path(out_dir) / f"{net_name}{_HAR_SUFFIX[step]}.har"


@dataclass(frozen=True)
class Layout:
    """The paths of one build directory (contract: the tree in the module docstring)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def export_json(self) -> Path:
        return self.export_dir / EXPORT_JSON

    @property
    def calib_dir(self) -> Path:
        return self.root / "calib"

    @property
    def encoder_calib(self) -> Path:
        return self.calib_dir / "encoder_calib.npy"

    @property
    def encoder_calib_manifest(self) -> Path:
        return self.calib_dir / "encoder_calib.manifest.json"

    @property
    def decoder_calib(self) -> Path:
        return self.calib_dir / "decoder_calib.npz"

    @property
    def decoder_calib_manifest(self) -> Path:
        return self.calib_dir / "decoder_calib.manifest.json"

    def calib_set(self, model: str) -> Path:
        """The calibration set the optimizer reads for `model`."""
        return self.encoder_calib if model == "encoder" else self.decoder_calib

    @property
    def download_dir(self) -> Path:
        return self.calib_dir / "download"

    def dfc_dir(self, model: str) -> Path:
        return self.root / "dfc" / model

    def dfc_result(self, model: str, step: str) -> Path:
        """parse.json / optimize.json / compile.json, each written last by its step."""
        return self.dfc_dir(model) / f"{step}.json"

    def har(self, model: str, net_name: str, step: str) -> Path:
        return har_path(self.dfc_dir(model), net_name, step)

    def hef(self, model: str, net_name: str) -> Path:
        return self.dfc_dir(model) / f"{net_name}.hef"

    def used_model_script(self, model: str, net_name: str) -> Path:
        """The .alls the optimize step used, saved beside its HAR."""
        return self.dfc_dir(model) / f"{net_name}.alls"

    @property
    def hf_cache(self) -> Path:
        """HF_HOME for the export in a container, whose own home is thrown away after the stage."""
        return self.root / ".cache" / "huggingface"

    @property
    def eval_dir(self) -> Path:
        """The build's accuracy ladder (`--eval`): ladder.json, and download/ for --eval-download."""
        return self.root / "eval"

    @property
    def ladder_json(self) -> Path:
        return self.eval_dir / "ladder.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def bundle_dir(self) -> Path:
        return self.root / "bundle"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"
