"""Word error rate and repetition of the host decoders on speech with known text (figures for the
README and issue 12; not a test). Real tiny.en weights, espeak-ng speech, jiwer.

    .venv/bin/python bench/host_decoder_wer.py [--utterances 60] [--data DIR] [--export DIR]

Utterances: 1 to 3 of bench/calib_bench.SENTENCES (Harvard sentences) spoken by one of its
espeak-ng voices, seeded, kept when they fit the 10 s window (the window the encoder sees).
Each is transcribed with
- the fixed-length decoder ONNX (the Hailo decoder, seq_len 32), as pipeline/export/onnx_greedy does;
- the cached decoder (float and int8) with the encoder states as they are (500 positions), padded
  to 1500 positions with the export's silence states (Whisper's encoder on 30 s of silence), and
  padded with zeros.
Figures per decoder: WER over all utterances (jiwer, lower-case words without punctuation), the
insertions among the errors, utterances that ran to the token limit without end-of-text
("runaway": Whisper's repetition loop), and utterances whose words contain a 3-word phrase 3 times
or more ("repeated").
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

SECONDS = 10


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split())


def make_utterances(count: int, work: Path) -> tuple[list[str], np.ndarray]:
    """(reference texts, log-mel [N, 80, 1000]) of espeak-ng speech that fits SECONDS."""
    import soundfile
    from transformers import WhisperFeatureExtractor

    from calib_bench import SENTENCES, VOICES

    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=SECONDS)
    rng = np.random.default_rng(0)
    texts, mels = [], []
    while len(texts) < count:
        voice, speed = VOICES[rng.integers(len(VOICES))]
        text = " ".join(SENTENCES[i] for i in rng.choice(len(SENTENCES), size=rng.integers(1, 4), replace=False))
        raw, wav = work / "raw.wav", work / "utt.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True, capture_output=True)
        subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(wav)], check=True, capture_output=True)
        audio, _ = soundfile.read(wav, dtype="float32")
        if len(audio) > SECONDS * 16000 - 1600:  # keep 0.1 s of room: the whole sentence is in the window
            continue
        texts.append(text)
        mels.append(extractor(audio, sampling_rate=16000, return_tensors="np").input_features[0])
    return texts, np.stack(mels)


def figures(references: list[str], tokens: list[list[int]], tokenizer, limit: int) -> dict:
    import jiwer

    hypotheses = [normalise(tokenizer.decode(t, skip_special_tokens=True)) for t in tokens]
    refs = [normalise(r) for r in references]
    measures = jiwer.process_words(refs, hypotheses)
    repeated = sum(any(n >= 3 for n in Counter(zip(h.split(), h.split()[1:], h.split()[2:])).values())
                   for h in hypotheses)
    return {"wer": round(measures.wer, 4), "insertions": measures.insertions, "deletions": measures.deletions,
            "substitutions": measures.substitutions, "runaway": sum(len(t) >= limit for t in tokens),
            "repeated": repeated, "tokens_mean": round(float(np.mean([len(t) for t in tokens])), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=60)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cached-decoder-bench")
    parser.add_argument("--export", type=Path, default=None, help="a tiny.en 10 s export (default: made in --data)")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    from cached_decoder_bench import export_tiny_en
    from pipeline.export import cached_greedy, onnx_greedy
    from pipeline.export.meta import read_export_json

    export_dir = args.export or export_tiny_en(args.data, SECONDS)
    meta = read_export_json(export_dir)
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    with tempfile.TemporaryDirectory() as tmp:
        texts, mels = make_utterances(args.utterances, Path(tmp))
    encoder, fixed = onnx_greedy.load_sessions(export_dir, meta)
    states = onnx_greedy.encode(encoder, meta, mels)
    rows = onnx_greedy.greedy_decode(encoder, fixed, meta, *onnx_greedy.load_host_assets(export_dir, meta), mels,
                                     encoder_states=states)
    budget = int(meta["seq_len"]) - len(meta["tokens"]["prompt"])
    report = {"utterances": len(texts), "words": sum(len(normalise(t).split()) for t in texts),
              "fixed_seq32": figures(texts, [onnx_greedy.generated_tokens(r, meta) for r in rows], tokenizer, budget)}
    silence = cached_greedy.load_encoder_padding(export_dir, meta)
    paddings = {"unpadded": None, "silence_padded": silence, "zero_padded": np.zeros_like(silence)}
    limit = cached_greedy.WHISPER_SAMPLE_LEN
    for precision in ("float", "int8"):
        decoder = cached_greedy.load_cached_decoder(export_dir, meta, precision=precision)
        for name, padding in paddings.items():
            options = cached_greedy.DecodeOptions(max_new_tokens=limit, pad_encoder=padding is not None)
            tokens = cached_greedy.transcribe_tokens(states, decoder, meta, options=options, encoder_padding=padding)
            report[f"cached_{precision}_{name}"] = figures(texts, tokens, tokenizer, limit)
            print(name, precision, json.dumps(report[f"cached_{precision}_{name}"]), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
