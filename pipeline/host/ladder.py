"""The accuracy ladder: one build directory, one set of utterances, one row per stage of the
model's way from the checkpoint to the device.

    reference          transformers `generate` on the original checkpoint, Whisper's 30 s input
    onnx               the exported ONNX pair at the build's window (what the Hailo networks compute in float)
    native             the DFC emulator (SDK_NATIVE) on the parsed HARs
    quantized          the DFC emulator (SDK_QUANTIZED) on the optimized HARs
    quantized-encoder  quantized encoder (emulator) + float decoder (ONNX)
    quantized-decoder  float encoder (ONNX) + quantized decoder (emulator)
    device             the HEFs on an attached Hailo device (HailoRT)

Every row: corpus WER and CER with 95% bootstrap intervals, the paired difference to `onnx`,
utterances used and skipped (and why), mean seconds per utterance; quantized rows show the
optimize stage's SNR per output. A row whose stage the build has not reached, or whose runtime
is missing, is "not available" with the reason; the others run. Nothing in the build directory
is written or changed, except by emulator rows run in the DFC image (below).

The emulator rows (native, quantized*) run the DFC (`hailo_sdk_client`) in this process where it
is importable (natively, or the test double on the path). Where it is not and the caller can start
stage containers (`invoke build` and `invoke evaluate` of a Docker-mode build pass `emulate_in_image`,
pipeline/host/build.py `image_emulation_for`), each such row runs as
the emulate stage in the build's DFC image (pipeline/dfc/emulate.py, pipeline/host/ladder_in_image.py):
the host's mel windows go in under <build>/eval/emulate/<row>/, tokens (or encoder states for the
cached decoder) come back; its seconds per utterance include the container's start.

Both decoders (pipeline/host/transcriber.py): `fixed`, the fixed-length decoder the Hailo decoder
HEF runs (ONNX / emulator / device per row), or `cached`, the KV-cache decoder ONNX on the host
CPU, which every row then uses after its encoder (a build with `--decoder cpu` has no decoder
network to quantize, so the quantized-encoder and quantized-decoder rows say why they are not
there). The default is the build's own (manifest.json "decoder": cpu -> cached).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from pipeline.errors import ToolchainError
from pipeline.host import eval_speech, wer
from pipeline.layout import Layout

if TYPE_CHECKING:
    from pipeline.host.ladder_in_image import ImageEmulation

ROWS = ("reference", "onnx", "native", "quantized", "quantized-encoder", "quantized-decoder", "device")
GATE_ROWS = ("onnx", "quantized", "quantized-encoder", "quantized-decoder")  # before compile
DECODERS = ("fixed", "cached")
BASELINE = "onnx"
REFERENCE_MAX_NEW_TOKENS = 440  # Whisper's 448 target positions less the prompt


class NotAvailable(Exception):
    """A row cannot run on this build or machine; the message says why."""


@dataclass
class Row:
    name: str
    available: bool
    why: str = ""
    note: str = ""
    texts: list = field(default_factory=list)
    seconds_per_utterance: Optional[float] = None
    wer: Optional[float] = None
    wer_ci: Optional[tuple] = None
    cer: Optional[float] = None
    cer_ci: Optional[tuple] = None
    wer_diff_to_onnx: Optional[float] = None
    wer_diff_ci: Optional[tuple] = None
    changed_vs_onnx: Optional[float] = None  # WER of this row's text against the onnx row's text
    snr_db: dict = field(default_factory=dict)


# --- what a row needs ---------------------------------------------------------------------------


def _export(layout: Layout):
    from pipeline.host.transcriber import read_model_files

    if not layout.export_json.is_file():
        raise NotAvailable(f"the build has no export ({layout.export_json} is missing): run `invoke build` or `invoke export`")
    return read_model_files(layout.export_dir)


def _hars(layout: Layout, stage: str, models: Sequence[str] = ("encoder", "decoder")) -> dict[str, Path]:
    export = json.loads(layout.export_json.read_text())
    hars = {m: layout.har(m, export[m]["net_name"], stage) for m in models}
    missing = [str(p) for p in hars.values() if not p.is_file()]
    if missing:
        raise NotAvailable(f"the build has not reached {stage} ({', '.join(missing)} missing)")
    return hars


def _dfc_missing_here() -> Optional[str]:
    """Why the DFC cannot run in this process (None when `hailo_sdk_client` imports)."""
    try:
        import hailo_sdk_client  # noqa: F401  (only to say early why the row cannot run here)
    except ImportError as err:
        return (f"the DFC (hailo_sdk_client) is not importable here ({err}); run where it is installed (for a "
                "Docker-mode build, `invoke evaluate` runs these rows in the build's DFC image: give it the build's "
                "--vendor, --base-image and --wheelhouse)")
    return None


def _dfc_note(version: Optional[str] = None) -> str:
    """What emulated the row: the DFC in this process, or `version` (a DFC image's)."""
    from pipeline.dfc.client import installed_dfc_version

    version = version or installed_dfc_version()
    return ("DFC test double emulator: NOT DEPLOYABLE, its quantization is a stand-in"
            if "testdouble" in version else f"DFC {version} emulator")


def _snr(layout: Layout) -> dict:
    snr = {}
    for model in ("encoder", "decoder"):
        path = layout.dfc_result(model, "optimize")
        if path.is_file():
            snr[model] = json.loads(path.read_text()).get("snr_db", {})
    return snr


# --- the rows -----------------------------------------------------------------------------------

# What a row builder returns: every utterance's audio -> its text (one call, so a row run in a
# stage container starts one container).
TranscribeAll = Callable[[Sequence[np.ndarray]], list]


@dataclass(frozen=True)
class RowInputs:
    """What every row builder gets."""

    layout: Layout
    threads: Optional[int]
    decoder: str  # DECODERS
    emulate_in_image: Optional["ImageEmulation"] = None  # starts the emulate stage in the DFC image (Docker mode)


def _each(transcribe: Callable[[np.ndarray], str]) -> TranscribeAll:
    return lambda audios: [transcribe(a) for a in audios]


def _token_decoder(files, decoder: str, fixed_decoder, threads: Optional[int]):
    from pipeline.host.transcriber import cached_decoding, fixed_decoding

    return fixed_decoding(files, fixed_decoder) if decoder == "fixed" else cached_decoding(files, "float", threads)


def _reference(inputs: RowInputs):
    """transformers generate on the original checkpoint, 30 s windows."""
    import torch

    from calib.mel import log_mel
    from pipeline.export.export import load_whisper
    from pipeline.export.parity import hf_generation_config
    from pipeline.host.transcriber import Transcriber

    layout = inputs.layout
    files = _export(layout)
    meta = json.loads(layout.export_json.read_text())
    if inputs.threads:
        torch.set_num_threads(inputs.threads)
    loaded = load_whisper(meta["hf_id_or_path"], allow_download=False)
    prompt = meta["tokens"]["prompt"]
    config = hf_generation_config(meta["tokens"], REFERENCE_MAX_NEW_TOKENS, len(prompt) > 2)
    texts = Transcriber(files, None, None)  # only its tokenizer
    window = 30 * 16000

    def transcribe(audio: np.ndarray) -> str:
        parts = []
        for start in range(0, max(len(audio), 1), window):
            chunk = np.zeros(window, dtype=np.float32)
            piece = audio[start:start + window]
            chunk[: len(piece)] = piece
            mel = torch.from_numpy(log_mel(chunk).T[None].copy())
            with torch.no_grad():
                row = [int(t) for t in loaded.model.generate(mel, generation_config=config)[0]]
            row = row[len(prompt):] if row[: len(prompt)] == prompt else row
            end = meta["tokens"]["end_of_text"]
            parts.append(texts.text(row[: row.index(end)] if end in row else row))
        return " ".join(p for p in parts if p)

    return _each(transcribe), ""


def _onnx(inputs: RowInputs):
    from pipeline.host.transcriber import Transcriber, onnx_backend

    files, decoder, threads = _export(inputs.layout), inputs.decoder, inputs.threads
    encoder, fixed_decoder = onnx_backend(files, threads, with_decoder=decoder == "fixed")
    return _each(Transcriber(files, encoder, _token_decoder(files, decoder, fixed_decoder, threads)).transcribe), ""


def _emulated(name: str, encoder_context: Optional[str], decoder_context: Optional[str]):
    """A row with each half on the emulator (context) or, where None, on ONNX Runtime. With the
    cached decoder only the encoder can be emulated (the decoder runs on the host CPU). In this
    process where the DFC imports, else in the DFC image when the caller can start it."""
    def build(inputs: RowInputs):
        from pipeline.dfc.emulate import har_decoder, har_encoder
        from pipeline.host.transcriber import Transcriber, onnx_backend

        layout, threads, decoder = inputs.layout, inputs.threads, inputs.decoder
        if decoder == "cached" and encoder_context is None:
            raise NotAvailable("the decoder runs on the host CPU (the cached decoder ONNX): the DFC does not quantize it")
        if decoder == "cached" and decoder_context is None:
            raise NotAvailable("the same as `quantized` here: with the cached decoder only the encoder is quantized")
        files = _export(layout)
        stages = {"native": "parse", "quantized": "optimize"}
        enc_har = _hars(layout, stages[encoder_context], ["encoder"])["encoder"] if encoder_context else None
        dec_har = (_hars(layout, stages[decoder_context], ["decoder"])["decoder"]
                   if decoder_context and decoder == "fixed" else None)
        why_not_here = _dfc_missing_here()
        if why_not_here and inputs.emulate_in_image is not None:
            from pipeline.host.ladder_in_image import image_row

            emulation = inputs.emulate_in_image
            return (image_row(name, layout, files, (encoder_context, enc_har), (decoder_context, dec_har), decoder,
                              emulation, threads),
                    f"{_dfc_note(emulation.dfc_version)}; in the build's DFC image, s/utt includes the container's start")
        if why_not_here:
            raise NotAvailable(why_not_here)
        onnx_encoder, onnx_decoder = onnx_backend(files, threads, with_decoder=decoder == "fixed")
        dec_io = files.io["decoder"]
        encoder = har_encoder(enc_har, encoder_context) if enc_har else onnx_encoder
        fixed_decoder = (har_decoder(dec_har, decoder_context, dec_io["layers"], dec_io["inputs"])
                         if dec_har else onnx_decoder)
        transcriber = Transcriber(files, encoder, _token_decoder(files, decoder, fixed_decoder, threads))
        return _each(transcriber.transcribe), _dfc_note()
    return build


def _device(inputs: RowInputs):
    from pipeline.host.transcriber import make_transcriber

    layout = inputs.layout
    config = layout.bundle_dir / "config.json"
    if not config.is_file():
        raise NotAvailable(f"the build has no bundle ({config} is missing): the device row runs the compiled HEFs")
    if not json.loads(config.read_text()).get("deployable", True):
        raise NotAvailable("the bundle's HEFs are test-double placeholders (NOT DEPLOYABLE); no device can run them")
    try:
        return _each(make_transcriber(layout.bundle_dir, "hailort", decoder=inputs.decoder,
                                      threads=inputs.threads).transcribe), ""
    except ToolchainError as err:
        raise NotAvailable(str(err)) from None


ROW_BUILDERS = {
    "reference": _reference,
    "onnx": _onnx,
    "native": _emulated("native", "native", "native"),
    "quantized": _emulated("quantized", "quantized", "quantized"),
    "quantized-encoder": _emulated("quantized-encoder", "quantized", None),
    "quantized-decoder": _emulated("quantized-decoder", None, "quantized"),
    "device": _device,
}


# --- the ladder ---------------------------------------------------------------------------------


@dataclass
class Ladder:
    build_dir: str
    eval_root: str
    layout: str
    long_policy: str
    used: int
    skipped: dict
    skipped_files: list
    rows: list
    decoder: str = "fixed"  # the decoder every row uses after its encoder (DECODERS)
    normalizer: str = "Whisper EnglishTextNormalizer (whisper-normalizer package)"
    bootstrap: str = f"{wer.BOOTSTRAP_SAMPLES} resamples of utterances, 95% percentile intervals"
    seconds: float = 0.0

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def to_json(self) -> dict:
        data = asdict(self)
        for row in data["rows"]:
            row.pop("texts")
        return data


def _read_audio(eval_set: eval_speech.EvalSet):
    """Decode every utterance once; a file that fails to decode becomes a skip."""
    from calib.audio import Skip, _one_line, read_span

    audio, kept, skipped = [], [], list(eval_set.skipped)
    for utt in eval_set.utterances:
        try:
            audio.append(read_span(eval_set.root, utt.audio, 0, utt.audio.samples_16k))
            kept.append(utt)
        except Exception as err:  # libsndfile raises several types for corrupt data
            skipped.append(Skip(utt.audio.path, f"unreadable: {_one_line(err)}"))
    return audio, kept, skipped


def build_decoder(layout: Layout) -> str:
    """The decoder a build deploys: "cached" where its manifest says the decoder runs on the CPU."""
    from pipeline.host.manifest import recorded_build

    return "cached" if recorded_build(layout).get("decoder") == "cpu" else "fixed"


def run_ladder(build_dir: str | Path, eval_set: eval_speech.EvalSet, rows: Sequence[str] = ROWS, *,
               threads: Optional[int] = None, decoder: Optional[str] = None,
               log: Callable[[str], None] = lambda m: None,
               emulate_in_image: Optional["ImageEmulation"] = None) -> Ladder:
    """Every requested row on the same utterances; see the module docstring. `decoder`: "fixed" or
    "cached" (None: the build's own). `emulate_in_image` (pipeline/host/ladder_in_image.py) runs the
    emulator rows in the DFC image where the DFC does not import here (None: those rows are not available)."""
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ToolchainError(f"Unknown ladder rows {unknown}.", f"Choose from: {', '.join(ROWS)}.")
    layout = Layout(Path(build_dir))
    if not layout.root.is_dir():
        raise ToolchainError(f"Build directory {layout.root} does not exist.", "Pass --build-dir of a build (build/<variant>-<arch>).")
    decoder = decoder or build_decoder(layout)
    if decoder not in DECODERS:
        raise ToolchainError(f"Unknown decoder {decoder!r}.", f"Choose one of: {', '.join(DECODERS)}.")
    started = time.monotonic()
    audio, utterances, skipped = _read_audio(eval_set)
    references = [wer.normalize(u.text) for u in utterances]
    keep = [i for i, r in enumerate(references) if r]
    for i in sorted(set(range(len(utterances))) - set(keep)):
        skipped.append(eval_speech.Skip(utterances[i].audio.path, "empty transcript after normalization"))
    audio, utterances, references = [audio[i] for i in keep], [utterances[i] for i in keep], [references[i] for i in keep]
    if not utterances:
        raise ToolchainError("No utterance left to evaluate after reading the audio.", "Check the skipped files listed above.")
    indices = wer.resample_indices(len(utterances))
    results, counts, baseline_texts = [], {}, []
    # The baseline runs first (every row's paired difference needs it), the table keeps ROWS order.
    ordered = [BASELINE, *(r for r in ROWS if r in rows and r != BASELINE)]
    for name in ordered:
        log(f"row {name}: {len(utterances)} utterances")
        try:
            transcribe_all, note = ROW_BUILDERS[name](RowInputs(layout, threads, decoder, emulate_in_image))
        except NotAvailable as err:
            results.append(Row(name, False, why=str(err)))
            continue
        except ToolchainError as err:
            results.append(Row(name, False, why=str(err)))
            continue
        row_started = time.monotonic()
        texts = transcribe_all(audio)
        row = Row(name, True, note=note, texts=texts,
                  seconds_per_utterance=round((time.monotonic() - row_started) / len(audio), 4))
        words, chars = wer.error_counts(references, [wer.normalize(t) for t in texts])
        counts[name] = words
        row.wer, row.wer_ci = words.rate, wer.interval(words, indices)
        row.cer, row.cer_ci = chars.rate, wer.interval(chars, indices)
        if BASELINE in counts:
            row.wer_diff_to_onnx = words.rate - counts[BASELINE].rate
            row.wer_diff_ci = wer.interval(words, indices, counts[BASELINE])
            # How much of the float transcript changed at all: sensitive where the WER
            # difference nets out (a word lost in one utterance and gained in another).
            row.changed_vs_onnx = wer.error_counts(baseline_texts, [wer.normalize(t) for t in texts])[0].rate
        if name == BASELINE:
            baseline_texts = [wer.normalize(t) for t in texts]
        if name.startswith("quantized"):
            row.snr_db = _snr(layout)
        results.append(row)
    results.sort(key=lambda r: ROWS.index(r.name))
    reasons: dict[str, int] = {}
    for skip in skipped:
        kind = skip.reason.split(":")[0]
        reasons[kind] = reasons.get(kind, 0) + 1
    return Ladder(str(layout.root), str(eval_set.root), eval_set.layout, eval_set.long_policy, len(utterances),
                  reasons, [s.as_json() for s in skipped], results, decoder=decoder,
                  seconds=round(time.monotonic() - started, 2))


# --- presentation -------------------------------------------------------------------------------


def _pct(value: Optional[float]) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def _ci(interval: Optional[tuple]) -> str:
    return "" if interval is None else f"[{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]"


def _snr_text(snr: dict) -> str:
    return "; ".join(f"{model} min {min(values.values()):.1f} dB" for model, values in snr.items() if values)


DECODER_TEXT = {"fixed": "the fixed-length decoder (the decoder HEF's network)",
                "cached": "the cached (KV-cache) decoder ONNX on the host CPU, float"}


def render_markdown(ladder: Ladder) -> str:
    """The ladder as a Markdown table (console, report.md)."""
    chunked = "cut at the window and joined" if ladder.long_policy == "chunk" else "skipped"
    skipped = ", ".join(f"{k}: {v}" for k, v in ladder.skipped.items()) or "none"
    lines = [
        f"Accuracy ladder on {ladder.used} utterances from {ladder.eval_root} ({ladder.layout} layout); "
        f"skipped: {skipped}; longer than the window: {chunked}. Decoder: {DECODER_TEXT[ladder.decoder]}. "
        f"WER/CER in %, {ladder.bootstrap}; text normalized with {ladder.normalizer}.",
        "",
        "| row | WER % | 95% CI | CER % | 95% CI | WER diff to onnx | 95% CI | words changed vs onnx % | s/utt | optimize SNR | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in ladder.rows:
        if not row.available:
            lines.append(f"| {row.name} | not available | | | | | | | | | {row.why} |")
            continue
        lines.append(
            f"| {row.name} | {_pct(row.wer)} | {_ci(row.wer_ci)} | {_pct(row.cer)} | {_ci(row.cer_ci)} | "
            f"{'' if row.wer_diff_to_onnx is None else f'{100 * row.wer_diff_to_onnx:+.2f}'} | {_ci(row.wer_diff_ci)} | "
            f"{_pct(row.changed_vs_onnx)} | "
            f"{row.seconds_per_utterance:.3f} | {_snr_text(row.snr_db)} | {row.note} |")
    return "\n".join(lines) + "\n"


def wer_increase(ladder: Ladder, row: str = "quantized") -> Optional[float]:
    """Quantized WER minus onnx WER, in points (None when either row did not run)."""
    names = {r.name for r in ladder.rows}
    if row not in names or BASELINE not in names:
        return None
    a, b = ladder.row(row), ladder.row(BASELINE)
    return 100 * (a.wer - b.wer) if a.available and b.available else None


# --- `invoke evaluate` --------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalOptions:
    """Where the evaluation speech comes from and how it is used (made once by the entry point)."""

    eval_dir: Optional[Path] = None  # LibriSpeech layout or transcripts.tsv
    download: bool = False  # LibriSpeech test-clean into `download_dest`
    download_dest: Path = Path("build/eval-download")
    long: str = "skip"  # utterances longer than the window: "skip" | "chunk"
    limit: Optional[int] = None  # first N usable utterances
    threads: Optional[int] = None
    decoder: Optional[str] = None  # "fixed" | "cached"; None: the build's own

    def __post_init__(self):
        if (self.eval_dir is None) == (not self.download):
            raise ToolchainError("Pass exactly one of --eval DIR and --eval-download.",
                                 "--eval takes a LibriSpeech-style folder or one with transcripts.tsv; "
                                 "--eval-download fetches LibriSpeech test-clean (346 MB).")
        if self.limit is not None and self.limit < 1:
            raise ToolchainError(f"--limit {self.limit} is not positive.", "Pass 1 or more.")


def build_window_seconds(build_dir: Path) -> float:
    layout = Layout(Path(build_dir))
    if not layout.export_json.is_file():
        raise ToolchainError(f"{layout.root} has no finished export ({layout.export_json} is missing): every "
                             "ladder row needs it.", "Run `invoke build` (or `invoke export`) into this directory first.")
    return float(json.loads(layout.export_json.read_text())["seconds"])


def evaluate_build(build_dir: str | Path, options: EvalOptions, rows: Sequence[str] = ROWS,
                   log: Callable[[str], None] = lambda m: None,
                   emulate_in_image: Optional["ImageEmulation"] = None) -> Ladder:
    """Load the evaluation speech for the build's window and run the ladder."""
    seconds = build_window_seconds(Path(build_dir))
    root = options.eval_dir
    if options.download:
        root = eval_speech.download_test_clean(options.download_dest)
    eval_set = eval_speech.load_eval_set(root, seconds=seconds, long=options.long, limit=options.limit)
    log(f"{len(eval_set.utterances)} utterances from {eval_set.root} ({len(eval_set.skipped)} skipped)")
    return run_ladder(build_dir, eval_set, rows, threads=options.threads, decoder=options.decoder, log=log,
                      emulate_in_image=emulate_in_image)
