"""The accuracy gate inside `invoke build`: with `--eval DIR` or `--eval-download`, the ladder's
float and quantized rows (pipeline/host/ladder.py GATE_ROWS) run after optimize and before
compile; the table is printed and kept in <build>/eval/ladder.json for the manifest and
report.md. With `--max-wer-increase POINTS`, a quantized WER more than POINTS above the onnx WER
stops the build there: `GateFailed` (exit 1), nothing compiled.

The emulator rows run the DFC (`hailo_sdk_client`) in the build's own process where it imports
there: natively (`--no-docker`) or with the test double on the path. In Docker mode, where only the
DFC image has it, each emulator row runs as the emulate stage (pipeline/dfc/emulate.py) in the
build's DFC image through the build's stage runner: the host sends the mel windows and reads back
the tokens (or the encoder states, for the cached decoder), so the table is the same either way
(logs/gate-<row>.log; s/utt then includes the container's start). A quantized row that still
cannot run (e.g. a native build without the DFC) makes --max-wer-increase refuse rather than guess.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Callable, Optional

from pipeline.errors import ToolchainError
from pipeline.files import write_json_atomic
from pipeline.layout import Layout

if TYPE_CHECKING:
    from pipeline.host.ladder_in_image import ImageEmulation


class GateFailed(ToolchainError):
    """The quantized networks lose more WER than --max-wer-increase allows (the build exits 1)."""


def run_gate(options, layout: Layout, print_table: Callable[[str], None],
             emulate_in_image: Optional["ImageEmulation"] = None) -> Optional[dict]:
    """Run the gate rows when the build has evaluation speech; returns the ladder JSON (None without).
    `emulate_in_image`: how the emulator rows reach the DFC image (Docker mode; None natively)."""
    if options.eval_dir is None and not options.eval_download:
        layout.ladder_json.unlink(missing_ok=True)  # an earlier build's table is not this build's
        return None
    from pipeline.host.ladder import GATE_ROWS, EvalOptions, evaluate_build, render_markdown, wer_increase

    eval_options = EvalOptions(eval_dir=options.eval_dir, download=options.eval_download,
                               download_dest=layout.eval_dir / "download",
                               decoder="cached" if options.decoder == "cpu" else "fixed")
    ladder = evaluate_build(layout.root, eval_options, GATE_ROWS, log=lambda m: None,
                            emulate_in_image=emulate_in_image)
    table = render_markdown(ladder)
    print_table(table)
    increase = wer_increase(ladder)
    data = {**ladder.to_json(), "table_markdown": table, "max_wer_increase": options.max_wer_increase,
            "wer_increase_points": increase}
    write_json_atomic(layout.ladder_json, data)
    limit = options.max_wer_increase
    if limit is None:
        return data
    if increase is None:
        why = next((r.why for r in ladder.rows if r.name == "quantized" and not r.available), "it did not run")
        raise ToolchainError(f"The WER gate cannot compare the quantized networks with onnx: the quantized row is not "
                             f"available ({why}).", "Let the build reach optimize (in Docker mode the row runs in the DFC image; "
                             "natively, --no-docker, the DFC must be installed in this environment), "
                             "or leave out --max-wer-increase.")
    if increase > limit:
        raise GateFailed(
            f"Quantized WER {100 * ladder.row('quantized').wer:.2f} % is {increase:.2f} points above the onnx "
            f"row's {100 * ladder.row('onnx').wer:.2f} %, more than --max-wer-increase "
            f"{limit:g}: stopped before compile, nothing compiled (table above, {layout.ladder_json}).",
            "See which half loses accuracy (quantized-encoder / quantized-decoder rows), then mark its layers "
            "16-bit in a --model-script (quantization_param(<layer>, precision_mode=a16_w16)), use more "
            "calibration data or --profile full, and build again.")
    return data


def ladder_of(layout: Layout) -> Optional[dict]:
    """The ladder this build recorded (for the manifest), or None."""
    return json.loads(layout.ladder_json.read_text()) if layout.ladder_json.is_file() else None
