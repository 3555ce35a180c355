"""Host-side Whisper transcriber: an encoder on one of three backends and one of two decoders.
Runs from a bundle (or an export directory) with numpy, soundfile/soxr, the `tokenizers` package
and ONNX Runtime or HailoRT: no torch, so it runs on a Raspberry Pi next to a Hailo-8L.

    python -m pipeline.host.transcriber --model DIR [--backend onnx|har|hailort]
                                        [--decoder fixed|cached] [--precision float|int8] AUDIO...

Backends (each gives an encoder [frames, 80] -> [positions, d] and, for the fixed decoder, a
decoder ([positions, d], [seq_len, d]) -> logits [seq_len, vocab]):
  onnx     the exported ONNX pair under ONNX Runtime (float; what the Hailo networks compute)
  har      the DFC emulator on HARs (pipeline.dfc.client.Emulator: SDK_NATIVE or SDK_QUANTIZED)
  hailort  the HEFs on an attached Hailo device (hailo_platform), the way Hailo's speech-recognition
           app drives them (hailo-ai/Hailo-Application-Code-Examples,
           runtime/hailo-8/python/speech_recognition/app/hailo_whisper_pipeline.py, commit 0764642):
           FLOAT32 in/out, decoder inputs `<net>/input_layer1` (encoder states) and
           `<net>/input_layer2` (embedded tokens, NHWC [1, 1, seq_len, d]), outputs in
           `HEF.get_sorted_output_names()` order concatenated on the last axis.

Decoders:
  fixed    the fixed-length decoder on the backend: the prompt from export.json,
           `embedded[t] = token_embedding[token_t] + positional_embedding[t]`, next token = argmax
           of the logits at the last filled position with the suppressed tokens masked, until
           end-of-text or seq_len (pipeline/export/onnx_greedy.greedy_row).
  cached   the export's KV-cache decoder ONNX on the host CPU, whatever the encoder backend
           (pipeline/export/cached_greedy.py; float or its int8 copy): not cut at seq_len, encoder
           states padded to Whisper's 1500 positions with the export's silence states.
The default is the bundle's own: `cached` for a bundle built with `--decoder cpu`, else `fixed`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from pipeline.errors import ToolchainError, run_cli
from pipeline.tables import SAMPLE_RATE

BACKENDS = ("onnx", "har", "hailort")
DECODERS = ("fixed", "cached")
PRECISIONS = ("float", "int8")
EXPORT_JSON = "export.json"
BUNDLE_CONFIG = "config.json"

Encoder = Callable[[np.ndarray], np.ndarray]  # mel [frames, 80] -> states [positions, d]
Decoder = Callable[[np.ndarray, np.ndarray], np.ndarray]  # states, embedded [seq, d] -> logits [seq, vocab]
TokenDecoder = Callable[[np.ndarray], list]  # states [positions, d] -> generated tokens (no prompt, no end)


@dataclass(frozen=True)
class ModelFiles:
    """What decoding needs, read from an export directory (export.json) or a bundle (config.json)."""

    root: Path
    kind: str  # "export" | "bundle"
    variant: str
    seconds: float
    frames: int
    seq_len: int
    tokens: Mapping
    token_embedding: Optional[Path]  # fixed decoder's host embedding; None in a bundle whose decoder runs on the CPU
    positional_embedding: Optional[Path]
    tokenizer_json: Optional[Path]
    onnx: Mapping[str, Path]  # {"encoder": path, "decoder": path}; what is shipped
    hefs: Mapping[str, Path]  # bundle only
    io: Mapping[str, Mapping]  # {"encoder"|"decoder": {"inputs": [names], "outputs": [names], "layers": {layer: input}}}
    cached: Optional[Mapping] = None  # export.json's "cached_decoder" entry (files relative to root); None if absent
    default_decoder: str = "fixed"  # "cached" for a bundle built with --decoder cpu

    @property
    def samples(self) -> int:
        return int(round(self.seconds * SAMPLE_RATE))


def _names(values) -> list[str]:
    return [v["name"] for v in values]


def read_model_files(path: str | Path) -> ModelFiles:
    """ModelFiles of a bundle directory (config.json) or an export directory (export.json)."""
    root = Path(path)
    if (root / BUNDLE_CONFIG).is_file() and not (root / EXPORT_JSON).is_file():
        return _from_bundle(root)
    if (root / EXPORT_JSON).is_file():
        from pipeline.export.meta import read_export_json

        meta = read_export_json(root)
        assets = meta["host_assets"]
        io = {m: {"inputs": _names(meta[m]["inputs"]), "outputs": _names(meta[m]["outputs"]),
                  "layers": dict(meta[m].get("dfc_input_layers", {}))} for m in ("encoder", "decoder")}
        return ModelFiles(root, "export", meta["variant"], float(meta["seconds"]), int(meta["frames"]),
                          int(meta["seq_len"]), meta["tokens"], root / assets["token_embedding"],
                          root / assets["positional_embedding"], _tokenizer_path(root, assets),
                          {m: root / meta[m]["onnx"] for m in ("encoder", "decoder")}, {}, io,
                          meta.get("cached_decoder"))
    raise ToolchainError(f"{root} is neither a bundle (no {BUNDLE_CONFIG}) nor an export directory (no {EXPORT_JSON}).",
                         "Pass build/<variant>-<arch>/bundle or build/<variant>-<arch>/export.")


def _tokenizer_path(root: Path, assets: Mapping) -> Optional[Path]:
    return root / "tokenizer.json" if "tokenizer.json" in assets.get("tokenizer_files", []) else None


def _from_bundle(root: Path) -> ModelFiles:
    try:
        config = json.loads((root / BUNDLE_CONFIG).read_text())
        assets = config["host_assets"]
        decoder = config["decoder"]
        on_cpu = decoder.get("runs_on") == "cpu"
        models = ("encoder",) if on_cpu else ("encoder", "decoder")
        io = {m: {"inputs": _names(config[m]["onnx_inputs"]), "outputs": _names(config[m]["onnx_outputs"]),
                  "layers": dict(config[m].get("hef_input_layers", {}))} for m in models}
        cached = None
        if on_cpu:
            cached = {"files": decoder["onnx"], "encoder_padding": decoder["encoder_padding"],
                      "self_cache": decoder["self_cache"], "cross_cache": decoder["cross_cache"],
                      "cache_shape": decoder["cache_shape"], "max_positions": decoder["max_positions"]}
        return ModelFiles(root, "bundle", config["variant"], float(config["input_seconds"]),
                          int(config["mel"]["frames"]), int(config["seq_len"]), config["tokens"],
                          None if on_cpu else root / assets["token_embedding"],
                          None if on_cpu else root / assets["positional_embedding"],
                          _tokenizer_path(root, assets),
                          {m: root / p for m, p in (config.get("onnx") or {}).items()},
                          {m: root / config[m]["hef"] for m in models}, io, cached,
                          "cached" if on_cpu else "fixed")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ToolchainError(f"{root / BUNDLE_CONFIG} is not a bundle config this transcriber reads ({err}).",
                             "Build the bundle again with this version of the toolchain.") from None


# --- backends -----------------------------------------------------------------------------------


def onnx_backend(files: ModelFiles, threads: Optional[int] = None,
                 with_decoder: bool = True) -> tuple[Encoder, Optional[Decoder]]:
    """The ONNX pair (or the encoder alone, `with_decoder=False`) under ONNX Runtime."""
    import onnxruntime as ort

    models = ("encoder", "decoder") if with_decoder else ("encoder",)
    missing = [f"{m} ({files.onnx[m] if m in files.onnx else 'not shipped'})" for m in models
               if m not in files.onnx or not files.onnx[m].is_file()]
    if missing:
        raise ToolchainError(f"The onnx backend needs the ONNX files; missing in {files.root}: {', '.join(missing)}.",
                             "Use the export directory or a bundle built with this toolchain version.")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    sessions = {m: ort.InferenceSession(str(files.onnx[m]), options, providers=["CPUExecutionProvider"])
                for m in models}
    enc_io = files.io["encoder"]

    def encode(mel):
        return sessions["encoder"].run([enc_io["outputs"][0]], {enc_io["inputs"][0]: mel.T[None, :, None, :]})[0][0]

    def decode(states, embedded):
        dec_io = files.io["decoder"]
        feed = dict(zip(dec_io["inputs"], (states[None], embedded[None])))
        return np.concatenate([p[0] for p in sessions["decoder"].run(dec_io["outputs"], feed)], axis=-1)

    return encode, (decode if with_decoder else None)


def hailort_backend(files: ModelFiles, with_decoder: bool = True) -> tuple[Encoder, Optional[Decoder]]:
    """The HEFs (or the encoder HEF alone) on the attached Hailo device (hailo_platform); a clear
    error when there is none."""
    try:
        from hailo_platform import HEF, FormatType, VDevice
    except ImportError as err:
        raise ToolchainError(f"The hailort backend is not available: HailoRT's Python package "
                             f"(hailo_platform) is not importable ({err}).",
                             "Install HailoRT and its pyhailort wheel from Hailo's Developer Zone on the "
                             "machine with the Hailo device, or use --backend onnx.") from None
    wanted = ("encoder", "decoder") if with_decoder else ("encoder",)
    missing = [m for m in wanted if m not in files.hefs]
    if missing:
        raise ToolchainError(f"{files.root} has no {' or '.join(missing)} HEF.",
                             "Pass the bundle directory of a finished build (a bundle built with --decoder cpu "
                             "has no decoder HEF: use --decoder cached).")
    try:
        vdevice = VDevice()
    except Exception as err:  # HailoRT raises its own types when no device is attached
        raise ToolchainError(f"No Hailo device is available: {type(err).__name__}: {err}.",
                             "Attach a Hailo-8/8L (and load its PCIe driver), or use --backend onnx.") from None
    models = {m: vdevice.create_infer_model(str(files.hefs[m])) for m in wanted}
    for model in models.values():
        for name in model.input_names:
            model.input(name).set_format_type(FormatType.FLOAT32)
        for name in model.output_names:
            model.output(name).set_format_type(FormatType.FLOAT32)
    configured = {m: models[m].configure() for m in models}

    def run(model: str, feed: Mapping[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
        bindings = configured[model].create_bindings()
        for name, array in feed.items():
            bindings.input(name).set_buffer(np.ascontiguousarray(array, dtype=np.float32))
        buffers = [np.empty(models[model].output(n).shape, dtype=np.float32) for n in names]
        for name, buffer in zip(names, buffers):
            bindings.output(name).set_buffer(buffer)
        configured[model].run([bindings], 100_000)
        return buffers

    def encode(mel):
        enc = models["encoder"]
        states = run("encoder", {enc.input_names[0]: mel[None]}, enc.output_names)[0]  # [1, positions, d]
        return states.reshape(-1, states.shape[-1])

    if not with_decoder:
        return encode, None
    outputs = HEF(str(files.hefs["decoder"])).get_sorted_output_names()
    layers, inputs = files.io["decoder"]["layers"], files.io["decoder"]["inputs"]
    states_layer = next(layer for layer, name in layers.items() if name == inputs[0])
    embed_layer = next(layer for layer, name in layers.items() if name == inputs[1])

    def decode(states, embedded):
        parts = run("decoder", {states_layer: states[None], embed_layer: embedded[None]}, outputs)
        return np.concatenate([p.reshape(embedded.shape[0], -1) for p in parts], axis=-1)

    return encode, decode


# --- decoding -----------------------------------------------------------------------------------


def fixed_decoding(files: ModelFiles, decoder: Decoder) -> TokenDecoder:
    """Greedy decoding with a fixed-length decoder (any backend) and the host-side embedding."""
    from pipeline.export.onnx_greedy import fixed_length_tokens

    token_embedding, positional_embedding = np.load(files.token_embedding), np.load(files.positional_embedding)
    return lambda states: fixed_length_tokens(decoder, states, token_embedding, positional_embedding, files.tokens,
                                              files.seq_len)


def cached_decoding(files: ModelFiles, precision: str = "float", threads: Optional[int] = None) -> TokenDecoder:
    """Greedy decoding with the export's KV-cache decoder ONNX on the host CPU (pipeline/export/cached_greedy.py),
    encoder states padded to Whisper's 1500 positions with the export's silence states."""
    from pipeline.export import cached_greedy

    if files.cached is None:
        raise ToolchainError(f"{files.root} has no cached (KV-cache) decoder.",
                             "Use --decoder fixed, or the export directory / a bundle built with --decoder cpu "
                             "(an export made before the cached decoder existed: run the export stage again).")
    if precision not in PRECISIONS:
        raise ToolchainError(f"Unknown precision {precision!r}.", f"Choose one of: {', '.join(PRECISIONS)}.")
    meta = {"cached_decoder": dict(files.cached), "tokens": files.tokens}
    decoder = cached_greedy.load_cached_decoder(files.root, meta, precision=precision, threads=threads)
    padding = cached_greedy.load_encoder_padding(files.root, meta)

    def decode(states: np.ndarray) -> list:
        return cached_greedy.transcribe_tokens(np.asarray(states)[None], decoder, meta, encoder_padding=padding)[0]

    return decode


class Transcriber:
    """Greedy Whisper: an encoder (any backend) and a token decoder (fixed_decoding or cached_decoding)."""

    def __init__(self, files: ModelFiles, encoder: Encoder, token_decoder: TokenDecoder, decoder_name: str = "fixed"):
        self.files, self.encoder, self.token_decoder = files, encoder, token_decoder
        self.decoder_name = decoder_name
        self._tokenizer = None

    def tokens(self, mel: np.ndarray) -> list[int]:
        """Generated tokens (no prompt, no end-of-text) for one mel window [frames, 80]."""
        states = np.asarray(self.encoder(np.asarray(mel, dtype=np.float32)), dtype=np.float32)
        return [int(t) for t in self.token_decoder(states)]

    def text(self, tokens: Sequence[int]) -> str:
        if self._tokenizer is None:
            if self.files.tokenizer_json is None or not self.files.tokenizer_json.is_file():
                raise ToolchainError(f"{self.files.root} has no tokenizer.json, so tokens cannot become text.",
                                     "Export from a checkpoint with tokenizer files (e.g. the CTranslate2 "
                                     "package or an openai/whisper-* id).")
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.files.tokenizer_json))
        return self._tokenizer.decode(list(tokens), skip_special_tokens=True).strip()

    def windows(self, audio: np.ndarray) -> list[np.ndarray]:
        """16 kHz audio -> mel windows [frames, 80], one per window length (the last zero-padded)."""
        from calib.mel import log_mel

        samples = self.files.samples
        count = max(1, -(-len(audio) // samples))
        padded = np.zeros(count * samples, dtype=np.float32)
        padded[: len(audio)] = audio
        return [log_mel(padded[i * samples:(i + 1) * samples]) for i in range(count)]

    def text_of_windows(self, window_tokens: Sequence[Sequence[int]]) -> str:
        """One utterance's text from the tokens of its windows (see `windows`), texts joined."""
        return " ".join(t for t in map(self.text, window_tokens) if t)

    def transcribe(self, audio: np.ndarray) -> str:
        """Text of 16 kHz mono audio; longer than the window: cut at the window, texts joined."""
        return self.text_of_windows([self.tokens(mel) for mel in self.windows(audio)])


def make_transcriber(model_dir: str | Path, backend: str = "onnx", *, decoder: Optional[str] = None,
                     precision: str = "float", threads: Optional[int] = None,
                     hars: Optional[Mapping[str, Path]] = None, context: str = "native") -> Transcriber:
    """A Transcriber for a bundle or export directory. `decoder`: "fixed" or "cached" (None: the
    bundle's own); `precision` picks the cached decoder's float or int8 copy. Backend "har" needs
    `hars` ({"encoder": path, "decoder": path}; the decoder HAR only for the fixed decoder) and
    `context` ("native" | "quantized")."""
    files = read_model_files(model_dir)
    decoder = decoder or files.default_decoder
    if decoder not in DECODERS:
        raise ToolchainError(f"Unknown decoder {decoder!r}.", f"Choose one of: {', '.join(DECODERS)}.")
    fixed = decoder == "fixed"
    if fixed and files.token_embedding is None:
        raise ToolchainError(f"{files.root} has no fixed-length decoder: it was built with --decoder cpu.",
                             "Use --decoder cached (the default for this bundle).")
    if backend == "onnx":
        encoder, fixed_decoder = onnx_backend(files, threads, with_decoder=fixed)
    elif backend == "har":
        from pipeline.dfc.emulate import har_decoder, har_encoder  # the emulator's feeding lives with its stage

        if not hars or not hars.get("encoder") or (fixed and not hars.get("decoder")):
            raise ToolchainError("The har backend needs the encoder HAR (and the decoder HAR for the fixed decoder).",
                                 "Pass --encoder-har (and --decoder-har).")
        encoder = har_encoder(hars["encoder"], context)
        dec_io = files.io["decoder"]
        fixed_decoder = har_decoder(hars["decoder"], context, dec_io["layers"], dec_io["inputs"]) if fixed else None
    elif backend == "hailort":
        encoder, fixed_decoder = hailort_backend(files, with_decoder=fixed)
    else:
        raise ToolchainError(f"Unknown backend {backend!r}.", f"Choose one of: {', '.join(BACKENDS)}.")
    token_decoder = fixed_decoding(files, fixed_decoder) if fixed else cached_decoding(files, precision, threads)
    return Transcriber(files, encoder, token_decoder, decoder if fixed else f"cached-{precision}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.host.transcriber", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="bundle directory (config.json) or export directory (export.json)")
    parser.add_argument("--backend", choices=BACKENDS, default="onnx", help="where the encoder (and the fixed decoder) runs")
    parser.add_argument("--decoder", choices=DECODERS, default=None,
                        help="fixed: the fixed-length decoder on the backend; cached: the KV-cache decoder ONNX on "
                             "this CPU (default: the bundle's own)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float", help="cached decoder: float or its int8 copy")
    parser.add_argument("--encoder-har", type=Path, help="har backend: the encoder HAR")
    parser.add_argument("--decoder-har", type=Path, help="har backend: the decoder HAR (fixed decoder)")
    parser.add_argument("--context", choices=("native", "quantized"), default="native", help="har backend: emulation")
    parser.add_argument("audio", nargs="+", help="audio files (any format libsndfile reads)")
    args = parser.parse_args(argv)

    def action():
        from calib.audio import load_audio

        hars = {"encoder": args.encoder_har, "decoder": args.decoder_har} if args.encoder_har else None
        transcriber = make_transcriber(args.model, args.backend, decoder=args.decoder, precision=args.precision,
                                       hars=hars, context=args.context)
        for path in args.audio:
            print(f"{path}\t{transcriber.transcribe(load_audio(path))}", flush=True)

    return run_cli(action)


if __name__ == "__main__":
    sys.exit(main())
