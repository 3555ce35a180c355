"""Benchmarks of the accuracy ladder.

    .venv/bin/python bench/ladder_bench.py onnx-speed --export DIR [--utterances 10] [--threads 2] [--decoder fixed|cached]
    .venv/bin/python bench/ladder_bench.py ladder --build DIR [--utterances 100] [--threads 2] [--rows ...] [--decoder ...]

onnx-speed  utterances per second of the `onnx` row (the host-side transcriber on ONNX Runtime,
            greedy decoding with the fixed-length decoder, or the cached decoder with `--decoder
            cached`) on `--threads` intra-op threads, over
            espeak-ng sentences (3-5 s each, padded to the export's window). For a random-init
            model the decoder rarely emits end-of-text, so every utterance runs all seq_len steps:
            that is the worst case, reported as such.
ladder      total wall time of `run_ladder` (every row asked for) on N espeak-ng utterances.

Speech is generated with espeak-ng + sox before timing (not counted). The machine is shared:
quote the figures with the load they ran under.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WORDS = ("river morning station garden window yellow silver market travel paper mountain quiet "
         "number table letter kitchen office summer winter doctor teacher city village bridge").split()


def make_speech(folder: Path, count: int) -> Path:
    """`count` espeak-ng sentences (16 kHz WAV) with transcripts.tsv."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        w = [WORDS[(i * k + k) % len(WORDS)] for k in (1, 3, 5, 7)]
        sentence = f"The {w[0]} {w[1]} was near the {w[2]} and the {w[3]} this morning."
        raw = folder / ".raw.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), sentence], check=True, capture_output=True)
        subprocess.run(["sox", "-q", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(folder / f"u{i:03d}.wav")],
                       check=True, capture_output=True)
        lines.append(f"u{i:03d}.wav\t{sentence}\n")
    (folder / ".raw.wav").unlink(missing_ok=True)
    (folder / "transcripts.tsv").write_text("".join(lines))
    return folder


def load_ratio() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def onnx_speed(args) -> dict:
    from calib.audio import load_audio
    from pipeline.host.eval_speech import load_eval_set
    from pipeline.host.transcriber import make_transcriber

    with tempfile.TemporaryDirectory() as tmp:
        speech = make_speech(Path(tmp) / "speech", args.utterances)
        model = make_transcriber(args.export, "onnx", decoder=args.decoder, threads=args.threads)
        eval_set = load_eval_set(speech, seconds=model.files.seconds)
        audio = [load_audio(speech / u.audio.path) for u in eval_set.utterances]
        # Mel + greedy decoding (tokens to text is negligible, and a random-init export has no tokenizer).
        decode = lambda a: [model.tokens(mel) for mel in model.windows(a)]
        decode(audio[0])  # warm-up: session initialisation is not per utterance
        started = time.monotonic()
        for a in audio:
            decode(a)
        elapsed = time.monotonic() - started
    return {"export": str(args.export), "variant": model.files.variant, "window_s": model.files.seconds,
            "seq_len": model.files.seq_len, "decoder": model.decoder_name, "threads": args.threads,
            "utterances": len(audio),
            "seconds": round(elapsed, 2), "utterances_per_s": round(len(audio) / elapsed, 3), "load": load_ratio()}


def ladder_time(args) -> dict:
    from pipeline.host import eval_speech, ladder

    sys.path.insert(0, str(REPO / "tests" / "dfc_double"))  # the emulator rows on a rehearsal build
    with tempfile.TemporaryDirectory() as tmp:
        speech = make_speech(Path(tmp) / "speech", args.utterances)
        seconds = ladder.build_window_seconds(args.build)
        eval_set = eval_speech.load_eval_set(speech, seconds=seconds)
        started = time.monotonic()
        result = ladder.run_ladder(args.build, eval_set, args.rows.split(","), threads=args.threads,
                                   decoder=args.decoder, log=lambda m: print(f"[{time.monotonic() - started:7.1f}s] {m}", flush=True))
        elapsed = time.monotonic() - started
    print(ladder.render_markdown(result))
    return {"build": str(args.build), "utterances": result.used, "rows": args.rows, "decoder": result.decoder,
            "threads": args.threads,
            "total_s": round(elapsed, 1),
            "per_row_s_per_utterance": {r.name: r.seconds_per_utterance for r in result.rows if r.available},
            "load": load_ratio()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    speed = sub.add_parser("onnx-speed")
    speed.add_argument("--export", type=Path, required=True, help="export directory (export.json)")
    speed.add_argument("--utterances", type=int, default=10)
    speed.add_argument("--threads", type=int, default=2)
    total = sub.add_parser("ladder")
    total.add_argument("--build", type=Path, required=True, help="build directory")
    total.add_argument("--utterances", type=int, default=100)
    total.add_argument("--threads", type=int, default=2)
    total.add_argument("--rows", default=",".join(("reference", "onnx", "native", "quantized", "quantized-encoder",
                                                   "quantized-decoder", "device")))
    for command in (speed, total):
        command.add_argument("--decoder", choices=("fixed", "cached"), default=None,
                             help="fixed-length or cached decoder (default: fixed for an export, the build's own)")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        print("needs espeak-ng and sox", file=sys.stderr)
        return 2
    result = onnx_speed(args) if args.command == "onnx-speed" else ladder_time(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
