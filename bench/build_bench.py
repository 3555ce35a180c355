"""Benchmark of `invoke build`: a full build without the DFC, then a no-op rebuild (goal <= 3 s).

    .venv/bin/python bench/build_bench.py [--variant tiny] [--seconds 10] [--seq-len 32]
                                          [--profile quick] [--out DIR] [--keep] [--docker]
    (or `invoke bench`)

Both builds run the real user command, `invoke build --no-docker --cpu ...`, as a child process
(process start, invoke, the doctor and every stage included), natively, with the DFC test double
(tests/dfc_double) on PYTHONPATH in place of the licensed DFC, so the DFC stages cost what the
double costs: the figures are everything *but* the DFC. `--docker` runs the same through the
images (the containers' test images; building them is not counted). Inputs: a random-init Whisper with the
variant's real dimensions (saved like a hub snapshot) and speech generated with espeak-ng + sox
(enough for the calibration set the profile needs); making them is not counted.

Prints the wall times, each stage's duration from the stage records, and the no-op verdict.
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
NOOP_GOAL_S = 3.0
PARAGRAPHS = (
    "The quick brown fox jumps over the lazy dog near the quiet river bank, while a small boat drifts past "
    "the old mill and the children on the bridge count the ducks that swim below them in the evening light.",
    "Calibration data should sound like the audio the model will hear in the field, so we record people "
    "talking in kitchens, offices and cars, with the radio on, the window open and somebody laughing nearby.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells, although the "
    "tourists who buy them rarely ask where they came from or how long they lay in the sand before.",
    "Seven silver spoons were found under the old wooden table in the kitchen this morning, together with a "
    "letter that nobody could read, written in a hand so small that even the magnifying glass did not help.",
)


def make_random_model(variant: str, out: Path) -> Path:
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    sys.path.insert(0, str(REPO))
    from pipeline.tables import VARIANTS

    v = VARIANTS[variant]
    offset = 1 if v.multilingual else 0
    end_of_text, start = 50256 + offset, 50257 + offset
    config = WhisperConfig(
        vocab_size=v.vocab_size, num_mel_bins=v.n_mels, d_model=v.d_model, encoder_layers=v.encoder_layers,
        decoder_layers=v.decoder_layers, encoder_attention_heads=v.attention_heads,
        decoder_attention_heads=v.attention_heads, encoder_ffn_dim=4 * v.d_model, decoder_ffn_dim=4 * v.d_model,
        decoder_start_token_id=start, bos_token_id=end_of_text, eos_token_id=end_of_text, pad_token_id=end_of_text,
        suppress_tokens=None, begin_suppress_tokens=None,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start, bos_token_id=end_of_text, eos_token_id=end_of_text, pad_token_id=end_of_text,
        no_timestamps_token_id=50362 + offset)
    model.save_pretrained(out)
    return out


def make_speech(out: Path, seconds_needed: float) -> Path:
    """espeak-ng paragraphs at a few speeds, 16 kHz mono, until `seconds_needed` of audio exist."""
    out.mkdir(parents=True, exist_ok=True)
    total, index = 0.0, 0
    while total < seconds_needed:
        text = PARAGRAPHS[index % len(PARAGRAPHS)]
        raw, wav = out / f".raw{index}.wav", out / f"utt{index:03d}.wav"
        subprocess.run(["espeak-ng", "-s", str(130 + 10 * (index % 4)), "-w", str(raw), text], check=True,
                       capture_output=True)
        subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True,
                       capture_output=True)
        raw.unlink()
        total += wav.stat().st_size / (2 * 16000)
        index += 1
    return out


def docker_flags(vendor: Path) -> list[str]:
    """--docker: the containers' test images (debootstrapped base, host wheelhouse, the DFC double
    as a wheel in `vendor`), made before timing starts."""
    sys.path.insert(0, str(REPO))
    from tests import docker_fixtures

    for target in ("export", "dfc3"):
        docker_fixtures.build_test_image(target, vendor)
    return ["--base-image", docker_fixtures.ensure_test_base_image(),
            "--wheelhouse", str(docker_fixtures.ensure_wheelhouse())]


def invoke_build(args: argparse.Namespace, model: Path, speech: Path, build: Path,
                 mode_flags: list[str]) -> tuple[float, str]:
    cmd = [str(Path(sys.executable).with_name("invoke")), "build", "--variant", args.variant, "--arch", "hailo8l",
           "--seconds", str(args.seconds), "--seq-len", str(args.seq_len), "--model", str(model),
           "--calib", str(speech), "--profile", args.profile, "--cpu", "--out", str(build),
           "--vendor", str(build.parent / "vendor"), *mode_flags]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests" / "dfc_double"), "COLUMNS": "120"}
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"invoke build failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return wall, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--profile", default="quick", choices=("quick", "full"))
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--docker", action="store_true",
                        help="through Docker with the containers' test images instead of --no-docker")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from pipeline.dfc.model_scripts import resolve_model_script

    needed = max(resolve_model_script(args.variant, "hailo8l", m, args.profile).needs.entries
                 for m in ("encoder", "decoder"))
    scratch = Path(args.out or tempfile.mkdtemp(prefix="build-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        model = make_random_model(args.variant, scratch / "model")
        # Windows of `seconds` are cut from each file, the last one padded: 1.5x covers the losses.
        speech = make_speech(scratch / "speech", needed * args.seconds * 1.5)
        build = scratch / "build"
        shutil.rmtree(build, ignore_errors=True)

        mode_flags = docker_flags(scratch / "vendor") if args.docker else ["--no-docker"]
        full_s, _ = invoke_build(args, model, speech, build, mode_flags)
        stages = {p.stem: json.loads(p.read_text())["duration_s"]
                  for p in sorted((build / ".stages").glob("*.json")) if p.stem != "file_hashes"}
        noop_s, noop_out = invoke_build(args, model, speech, build, mode_flags)
        nothing_ran = "Every stage was up to date" in noop_out

        print(f"machine: {os.cpu_count()} cores; {args.variant} {args.seconds:g} s, seq {args.seq_len}, "
              f"profile {args.profile}, {needed} calibration entries, {'Docker' if args.docker else 'native'}, "
              "DFC test double")
        print(f"full build (invoke build, from scratch): {full_s:6.1f} s")
        for stage, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
            print(f"    {stage:<18} {seconds:6.2f} s")
        print(f"no-op rebuild (invoke build again):      {noop_s:6.2f} s  (goal <= {NOOP_GOAL_S:g} s: "
              f"{'met' if noop_s <= NOOP_GOAL_S else 'MISSED'}; every stage up to date: {nothing_ran})")
        if not nothing_ran:
            print(noop_out)
        return 0 if nothing_ran else 1
    finally:
        if not args.keep and args.out is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
