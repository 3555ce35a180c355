"""Export parity: our Hailo-friendly modules and their ONNX files against transformers' Whisper.

Three comparisons on reproducible random inputs (`ParityInputs`): our torch modules vs
transformers (same weights), the ONNX files under ONNX Runtime vs our modules, and greedy ONNX
decoding vs transformers' `generate`. `check_parity` fails the export, naming every figure, when
one misses its tolerance; nothing is written then.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from pipeline.errors import ToolchainError
from pipeline.tables import N_MELS


@dataclass(frozen=True)
class ParityTolerances:
    """Largest accepted max-abs differences (float32 throughout)."""

    encoder_states: float = 1e-4  # torch vs ONNX Runtime, ours vs transformers
    logits: float = 1e-3  # torch vs ONNX Runtime, ours + host embedding vs transformers


def hf_generation_config(tokens: Mapping, max_new_tokens: int, multilingual: bool):
    """A GenerationConfig under which transformers' Whisper `generate` decodes greedily from our prompt."""
    from transformers import GenerationConfig

    prompt = tokens["prompt"]
    gen = GenerationConfig(
        decoder_start_token_id=prompt[0],
        eos_token_id=tokens["end_of_text"],
        pad_token_id=tokens["end_of_text"],
        bos_token_id=tokens["end_of_text"],
        no_timestamps_token_id=tokens["no_timestamps"],
        suppress_tokens=list(tokens["suppress"]) or None,
        begin_suppress_tokens=list(tokens["suppress_at_begin"]) or None,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
    )
    if multilingual:
        gen.lang_to_id = {"<|en|>": prompt[1]}
        gen.task_to_id = {"transcribe": prompt[2], "translate": prompt[2] - 1}
        gen.is_multilingual = True
        gen.language = "en"
        gen.task = "transcribe"
    return gen


def check_parity(figures: Mapping[str, float], tolerances: ParityTolerances) -> None:
    """Raise ToolchainError listing every figure when one misses its tolerance."""
    limits = {
        "encoder_torch_vs_onnx": tolerances.encoder_states,
        "encoder_vs_hf": tolerances.encoder_states,
        "decoder_torch_vs_onnx": tolerances.logits,
        "decoder_vs_hf": tolerances.logits,
        "greedy_token_mismatches": 0,
        "cached_decoder_vs_hf": tolerances.logits,  # pipeline/export/cached_export.py
        "cached_greedy_token_mismatches": 0,
    }
    failed = [k for k, limit in limits.items() if k in figures and not figures[k] <= limit]
    if failed:
        table = ", ".join(f"{k}={figures[k]:.3g} (limit {limits[k]:g})" for k in limits if k in figures)
        raise ToolchainError(
            f"Export parity check failed for {', '.join(failed)}: {table}.",
            "The Hailo rewrite does not compute what Whisper computes; nothing was written. "
            "Check pipeline/export/whisper_hailo.py (or the checkpoint) before compiling.",
        )


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


@dataclass(frozen=True)
class ParityInputs:
    """Reproducible random inputs: log-mel [1, 80, frames] in Whisper's normalised range (about
    -1..1.5), a token sequence [1, seq_len] that starts with the prompt, and its host embedding."""

    mel: np.ndarray
    tokens: np.ndarray
    embedded: np.ndarray

    @classmethod
    def make(cls, meta: Mapping, token_embedding: np.ndarray, positional_embedding: np.ndarray, seed: int):
        rng = np.random.default_rng(seed)
        mel = rng.uniform(-1.0, 1.5, size=(1, N_MELS, meta["frames"])).astype(np.float32)
        tokens = rng.integers(0, meta["vocab_size"], size=(1, meta["seq_len"]))
        prompt = meta["tokens"]["prompt"]
        tokens[0, : len(prompt)] = prompt
        return cls(mel, tokens, (token_embedding[tokens] + positional_embedding).astype(np.float32))


def measure_torch_parity(reference, encoder, decoder, inputs: ParityInputs) -> tuple[dict, dict]:
    """Our modules vs transformers (same weights, same tokens and encoder states).

    Returns (figures, our outputs) so the ONNX comparison reuses our outputs.
    """
    import torch

    with torch.no_grad():
        ours_states = encoder(torch.from_numpy(inputs.mel[:, :, None, :])).numpy()
        hf_states = reference.model.encoder(torch.from_numpy(inputs.mel)).last_hidden_state.numpy()
        parts = decoder(torch.from_numpy(hf_states), torch.from_numpy(inputs.embedded))
        ours_logits = np.concatenate([t.numpy() for t in parts], -1)
        hf_logits = reference(encoder_outputs=(torch.from_numpy(hf_states),),
                              decoder_input_ids=torch.from_numpy(inputs.tokens)).logits.numpy()
    figures = {"encoder_vs_hf": max_abs(ours_states, hf_states), "decoder_vs_hf": max_abs(ours_logits, hf_logits)}
    return figures, {"encoder_states": ours_states, "hf_states": hf_states, "logits": ours_logits}


def measure_onnx_parity(reference, work: Path, meta: dict, inputs: ParityInputs, ours: Mapping,
                        token_embedding: np.ndarray, positional_embedding: np.ndarray,
                        parity_mel: Optional[np.ndarray], tolerance: float) -> dict:
    """The ONNX files under ONNX Runtime vs our modules, and greedy ONNX decoding vs transformers' generate.

    greedy_token_mismatches counts the tokens from the first divergence on; a divergence where
    the two candidates' logits are within `tolerance` (the logits tolerance) is a near-tie,
    recorded under greedy_near_ties instead.
    """
    import torch

    from pipeline.export import onnx_greedy

    encoder_session, decoder_session = onnx_greedy.load_sessions(work, meta)
    decoder_inputs = [i["name"] for i in meta["decoder"]["inputs"]]
    onnx_states = onnx_greedy.encode(encoder_session, meta, inputs.mel)
    onnx_logits = np.concatenate(decoder_session.run(
        [o["name"] for o in meta["decoder"]["outputs"]],
        {decoder_inputs[0]: ours["hf_states"], decoder_inputs[1]: inputs.embedded}), -1)
    figures = {"encoder_torch_vs_onnx": max_abs(ours["encoder_states"], onnx_states),
               "decoder_torch_vs_onnx": max_abs(ours["logits"], onnx_logits)}

    mel = inputs.mel if parity_mel is None else onnx_greedy.as_encoder_input(parity_mel, meta["frames"])[:, :, 0, :]
    rows = onnx_greedy.greedy_decode(encoder_session, decoder_session, meta, token_embedding, positional_embedding, mel)
    prompt = meta["tokens"]["prompt"]
    gen = hf_generation_config(meta["tokens"], meta["seq_len"] - len(prompt), len(prompt) > 2)
    with torch.no_grad():
        hf_rows = reference.generate(torch.from_numpy(mel), generation_config=gen).numpy()
    mismatches, ties, greedy = 0, [], []
    states = onnx_greedy.encode(encoder_session, meta, mel)
    end = meta["tokens"]["end_of_text"]
    for our_row, hf_row, sample_states in zip(rows, hf_rows, states):
        our_tokens, hf_tokens = onnx_greedy.generated_tokens(our_row, meta), hf_generated_tokens(hf_row, meta)
        greedy.append(our_tokens)
        diverged = next((i for i, (a, b) in enumerate(zip(our_tokens + [end], hf_tokens + [end])) if a != b), None)
        if diverged is None:
            continue
        # A near-tie is not a defect: when the two candidates' logits under the ONNX decoder
        # differ by less than the logits tolerance, either choice is within numerical noise.
        last = len(prompt) + diverged - 1
        logits = onnx_greedy.next_token_logits(decoder_session, meta, token_embedding, positional_embedding,
                                               sample_states, our_row, last)
        ours_token = ([*our_tokens, end])[diverged]
        hf_token = ([*hf_tokens, end])[diverged]
        gap = float(logits[ours_token] - logits[hf_token])
        if abs(gap) <= tolerance:
            ties.append({"sample": len(greedy) - 1, "step": diverged, "logit_gap": gap})
        else:
            mismatches += max(len(our_tokens), len(hf_tokens)) - diverged
    figures["greedy_token_mismatches"] = mismatches
    figures["greedy_tokens"] = greedy
    if ties:
        figures["greedy_near_ties"] = ties
    return figures


def hf_generated_tokens(row, meta) -> list[int]:
    """transformers 5.x returns the generated tokens without the prompt; 4.x included it."""
    row = [int(t) for t in row]
    prompt = meta["tokens"]["prompt"]
    if row[: len(prompt)] == prompt:
        row = row[len(prompt):]
    end = meta["tokens"]["end_of_text"]
    return row[: row.index(end)] if end in row else row
