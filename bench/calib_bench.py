"""Benchmark of the calibration sets (figures for the issue; not a test).

    .venv/bin/python bench/calib_bench.py [--entries 4000] [--seconds 10] [--workers 2] [--data DIR]
                                          [--rate 16000] [--decoder-samples 64] [--skip-decoder]

Audio: real generated speech. espeak-ng speaks a set of sentences (several voices and speeds);
the utterances are concatenated in seeded random order, with short pauses and random gains,
into LibriSpeech-like FLAC files of 5-25 s at --rate (16 kHz = LibriSpeech; 22050 exercises the
resampler), enough for --entries windows. They are cached in --data between runs.

Encoder set: `python -m calib encoder` runs as a child process; the figures are entries/s (wall
clock of the whole command, process start included) and peak RSS: the CLI process itself and
its largest worker (resource.getrusage RUSAGE_SELF / RUSAGE_CHILDREN inside it), and their sum
bound (main + workers x largest worker).

Decoder set: a random-init tiny (real dims: d_model 384, 4+4 layers, vocab 51865) exported at
--seconds with seq_len 32, then `build_decoder_set` over the first --decoder-samples entries.
A random model never emits end-of-text, so every sample runs all 28 decoding steps: worst case.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SENTENCES = [
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
]
VOICES = [("en", 150), ("en-us", 175), ("en+f3", 140), ("en-gb", 190), ("en+m3", 160)]


def _utterances(work: Path) -> list[np.ndarray]:
    """Every sentence in every voice, as 16 kHz float32 arrays (espeak-ng at 22.05 kHz -> sox)."""
    out = []
    for vi, (voice, speed) in enumerate(VOICES):
        for si, sentence in enumerate(SENTENCES):
            raw, wav = work / f"r{vi}_{si}.wav", work / f"u{vi}_{si}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), sentence], check=True)
            subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(wav)], check=True)
            audio, _ = soundfile.read(wav, dtype="float32")
            out.append(audio)
    return out


def make_audio(data: Path, entries: int, seconds: float, rate: int) -> Path:
    """LibriSpeech-like tree of FLAC files with at least `entries` windows of `seconds`."""
    folder = data / f"speech-{entries}x{seconds:g}s-{rate}"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        utterances = _utterances(Path(tmp))
    rng = np.random.default_rng(0)
    windows, index = 0, 0
    while windows < entries:
        target = rng.uniform(5, 25)
        parts, length = [], 0.0
        while length < target:
            utt = utterances[rng.integers(len(utterances))] * rng.uniform(0.3, 1.0)
            pause = np.zeros(int(rng.uniform(0.1, 0.6) * 16000), dtype=np.float32)
            parts += [utt, pause]
            length += (len(utt) + len(pause)) / 16000
        audio = np.concatenate(parts).astype(np.float32)
        audio += 1e-4 * rng.standard_normal(len(audio)).astype(np.float32)  # room noise: no digital silence
        if rate != 16000:
            import soxr

            audio = soxr.resample(audio, 16000, rate)
        speaker, chapter = index // 100, index // 20
        path = folder / str(speaker) / str(chapter) / f"{speaker}-{chapter}-{index:04d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, np.clip(audio, -1, 1), rate, subtype="PCM_16")
        windows += int(np.ceil(length / seconds))
        index += 1
    (folder / ".complete").write_text(f"{index} files, {windows} windows\n")
    return folder


CHILD = r"""
import json, resource, sys, time
from calib.__main__ import main
started = time.monotonic()
code = main(sys.argv[1:])
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"code": code, "wall_s": time.monotonic() - started,
                  "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
                  "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def bench_encoder(audio: Path, out: Path, entries: int, seconds: float, workers: int) -> dict:
    argv = ["encoder", "--audio", str(audio), "--seconds", f"{seconds:g}", "--size", str(entries),
            "--min-entries", str(entries), "--out", str(out), "--workers", str(workers), "--no-progress"]
    load_before = round(os.getloadavg()[0], 2)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"encoder set failed:\n{done.stdout}\n{done.stderr}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    manifest = json.loads(out.with_name(out.stem + ".manifest.json").read_text())
    main_mb, worker_mb = figures["self_maxrss_kb"] / 1024, figures["children_maxrss_kb"] / 1024
    return {
        "entries": manifest["count"], "shape": manifest["shape"], "workers": workers,
        "wall_s": round(wall, 2), "entries_per_s": round(manifest["count"] / wall, 1),
        "peak_rss_main_mb": round(main_mb), "peak_rss_largest_worker_mb": round(worker_mb),
        "peak_rss_bound_mb": round(main_mb + workers * worker_mb),
        "output_gb": round(out.stat().st_size / 1e9, 3),
        # CPU seconds of the CLI and its workers: independent of other load on the machine;
        # entries per CPU-second x workers is the rate on idle cores.
        "cpu_s": round(figures["cpu_s"], 2),
        "entries_per_cpu_s": round(manifest["count"] / figures["cpu_s"], 1),
        "load_avg_1m_before": load_before,
    }


def bench_decoder(encoder_set: Path, data: Path, seconds: float, samples: int, workers: int) -> dict:
    export_dir = data / f"export-random-tiny-{seconds:g}s-seq32"
    if not (export_dir / "export.json").exists():
        import torch
        from transformers import WhisperConfig, WhisperForConditionalGeneration

        from pipeline.export.export import export_whisper, make_config

        torch.manual_seed(0)
        config = WhisperConfig(vocab_size=51865, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
                               encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536,
                               decoder_ffn_dim=1536, suppress_tokens=None, begin_suppress_tokens=None)
        model_dir = data / "random-tiny"
        WhisperForConditionalGeneration(config).save_pretrained(model_dir)
        export_whisper(make_config("tiny", seconds, 32, str(model_dir), str(export_dir)))
    from calib.decoder_set import DecoderSetConfig, build_decoder_set

    out = data / "decoder_calib.npz"
    result = build_decoder_set(DecoderSetConfig(encoder_set, export_dir, out, size=samples, workers=workers,
                                                progress=False))
    return {"samples": result.count, "workers": workers,
            "load_avg_1m_after": round(os.getloadavg()[0], 2), "wall_s": round(result.elapsed_s, 2),
            "samples_per_s": round(result.count / result.elapsed_s, 2),
            "generated_tokens_mean": result.manifest["generated_tokens_mean"], "shapes": result.shapes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=int, default=16000, help="sample rate of the generated FLAC files")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "calib-bench")
    parser.add_argument("--decoder-samples", type=int, default=64)
    parser.add_argument("--skip-decoder", action="store_true")
    parser.add_argument("--skip-encoder", action="store_true", help="reuse the encoder set of the last run")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    audio = make_audio(args.data, args.entries, args.seconds, args.rate)
    print(f"audio: {audio} ({(audio / '.complete').read_text().strip()}, made/cached in "
          f"{time.monotonic() - started:.0f} s)", flush=True)
    out = args.data / "encoder_calib.npy"
    report = {"cpus": len(os.sched_getaffinity(0)), "rate": args.rate}
    if not args.skip_encoder:
        report["encoder"] = bench_encoder(audio, out, args.entries, args.seconds, args.workers)
        print(json.dumps(report["encoder"]), flush=True)
    if not args.skip_decoder:
        report["decoder"] = bench_decoder(out, args.data, args.seconds, args.decoder_samples, args.workers)
        print(json.dumps(report["decoder"]), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
