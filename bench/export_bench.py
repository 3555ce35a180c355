"""Benchmark of the export stage: export + simplify + parity, wall time and peak memory.

    .venv/bin/python bench/export_bench.py [--cases tiny:10 base:5] [--keep DIR]

Each case runs in a fresh subprocess (so peak RSS is per case) on a random-init model with the
variant's real dimensions, saved like a hub snapshot. Goals on the 2-core CI machine:
tiny 10 s <= 60 s, base 5 s <= 120 s. Times cover the whole stage (load, rewrite, parity
against transformers, ONNX export, onnxslim, checker, ONNX Runtime parity, greedy decoding
vs transformers generate, hashing); building the random model is not counted.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS_S = {"tiny": 60.0, "base": 120.0}


def make_random_model(variant: str, out: Path) -> Path:
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    from pipeline.tables import VARIANTS

    v = VARIANTS[variant]
    offset = 1 if v.multilingual else 0
    config = WhisperConfig(vocab_size=v.vocab_size, num_mel_bins=v.n_mels, d_model=v.d_model,
                           encoder_layers=v.encoder_layers, decoder_layers=v.decoder_layers,
                           encoder_attention_heads=v.attention_heads, decoder_attention_heads=v.attention_heads,
                           encoder_ffn_dim=4 * v.d_model, decoder_ffn_dim=4 * v.d_model,
                           decoder_start_token_id=50257 + offset, eos_token_id=50256 + offset,
                           pad_token_id=50256 + offset, bos_token_id=50256 + offset)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(decoder_start_token_id=50257 + offset, eos_token_id=50256 + offset,
                                               pad_token_id=50256 + offset, no_timestamps_token_id=50362 + offset)
    model.save_pretrained(out)
    return out


def run_case(variant: str, seconds: float, model_dir: str, out_dir: str) -> dict:
    """One export in this process; returns the figures."""
    from pipeline.export.export import export_whisper, make_config

    config = make_config(variant, seconds, None, model_dir, out_dir, offline=True)
    started = time.perf_counter()
    result = export_whisper(config)
    wall = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    parity = {k: v for k, v in result.meta["parity"].items() if k not in ("greedy_tokens", "tolerances")}
    return {"variant": variant, "seconds": seconds, "seq_len": result.meta["seq_len"], "wall_s": round(wall, 1),
            "peak_rss_mib": round(peak_kib / 1024), "goal_s": GOALS_S.get(variant), "parity": parity}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["tiny:10", "base:5"], help="variant:seconds")
    parser.add_argument("--keep", default=None, help="keep the exports under this directory")
    parser.add_argument("--_case", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._case:
        variant, seconds, model_dir, out_dir = args._case
        print(json.dumps(run_case(variant, float(seconds), model_dir, out_dir)))
        return 0

    root = Path(args.keep or tempfile.mkdtemp(prefix="export-bench-"))
    results = []
    for case in args.cases:
        variant, seconds = case.split(":")
        model_dir = make_random_model(variant, root / f"random-{variant}")
        proc = subprocess.run([sys.executable, __file__, "--_case", variant, seconds, str(model_dir),
                               str(root / f"export-{variant}-{seconds}s")], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(figures)
        verdict = "ok" if figures["goal_s"] is None or figures["wall_s"] <= figures["goal_s"] else "OVER GOAL"
        print(f"{variant} {seconds} s (seq {figures['seq_len']}): {figures['wall_s']} s wall "
              f"(goal {figures['goal_s']} s, {verdict}), peak RSS {figures['peak_rss_mib']} MiB, "
              f"parity {figures['parity']}", flush=True)
    print(json.dumps(results, indent=2))
    return 0 if all(r["goal_s"] is None or r["wall_s"] <= r["goal_s"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
