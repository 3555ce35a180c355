"""The ladder's emulator rows in the build's DFC image, for Docker mode where this process has no
DFC: the host computes the mel windows exactly as the transcriber does, the emulate stage
(pipeline/dfc/emulate.py) decodes them in a stage container, and the host turns its tokens into
text (or, for the cached decoder, decodes the encoder states the stage returns).

    <build>/eval/emulate/<row>/mel.npy        [windows, frames, 80] float32, every utterance's windows in order
    <build>/eval/emulate/<row>/emulate.json   the stage's tokens per window (or the states file's name)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from pipeline.dfc.emulate import RESULT_NAME, EmulateConfig, EmulatedRow, Half
from pipeline.errors import ToolchainError
from pipeline.files import atomic_path
from pipeline.layout import Layout

STAGE_PREFIX = "gate-"  # stage names (and logs/<name>.log) of the rows' containers


@dataclass(frozen=True)
class ImageEmulation:
    """How the ladder starts the emulate stage in the build's DFC image."""

    launch: Callable[[str, EmulateConfig], None]  # (stage name, config): runs it, raises when it fails
    dfc_version: str  # the image's DFC (its wheel's version), for the rows' note


def _half(context: Optional[str], har: Optional[Path]) -> Half:
    return Half(context, har) if context else Half()


def image_row(name: str, layout: Layout, files, encoder: tuple, decoder: tuple, decoder_kind: str,
              emulation: ImageEmulation, threads: Optional[int]):
    """The ladder row `name` as one emulate container: every utterance's audio -> its text. `encoder` / `decoder`:
    (context or None for the float ONNX, HAR); with the cached decoder the host decodes."""
    from pipeline.host.transcriber import Transcriber, cached_decoding

    cached = decoder_kind == "cached"
    row = EmulatedRow(name, _half(*encoder), None if cached else _half(*decoder))
    transcriber = Transcriber(files, None, cached_decoding(files, "float", threads) if cached else None)
    out_dir = layout.eval_dir / "emulate" / name

    def transcribe_all(audios: Sequence[np.ndarray]) -> list[str]:
        windows = [transcriber.windows(audio) for audio in audios]
        mel_path = out_dir / "mel.npy"
        with atomic_path(mel_path) as tmp, open(tmp, "wb") as stream:
            np.save(stream, np.stack([w for utterance in windows for w in utterance]).astype(np.float32))
        (out_dir / RESULT_NAME).unlink(missing_ok=True)  # an earlier run's answer is not this one's
        emulation.launch(f"{STAGE_PREFIX}{name}", EmulateConfig(layout.export_dir, mel_path, (row,), out_dir))
        tokens = iter(_window_tokens(out_dir, name, sum(map(len, windows)), transcriber))
        return [transcriber.text_of_windows([next(tokens) for _ in utterance]) for utterance in windows]

    return transcribe_all


def _window_tokens(out_dir: Path, name: str, windows: int, transcriber) -> list[list[int]]:
    """The stage's tokens per window; for a row whose decoder runs here, its states decoded."""
    result_path = out_dir / RESULT_NAME
    try:
        result = json.loads(result_path.read_text())
        answer = result["rows"][name]
    except (OSError, ValueError, KeyError) as err:
        raise ToolchainError(f"The emulate stage of ladder row {name} left no readable answer in {result_path} "
                             f"({err}).", f"See logs/{STAGE_PREFIX}{name}.log in the build directory.") from None
    if result.get("windows") != windows:
        raise ToolchainError(f"The emulate stage of row {name} answered for {result.get('windows')} windows, "
                             f"the host sent {windows}.", "Rebuild the DFC image with this toolchain version.")
    if "tokens" in answer:
        return answer["tokens"]
    return [transcriber.token_decoder(states) for states in np.load(out_dir / answer["states"])]

