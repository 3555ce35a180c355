"""The matrix summary: statuses derived from the task results, GPU-hours, SNR, JSON and markdown."""

import json

from pipeline.host.matrix_plan import Cell, cell_stages
from pipeline.host.matrix_summary import StageRun, summarize, write_summary

STAGES = cell_stages()


def _run(stage: str, start: float, seconds: float, gpus=()) -> dict:
    return StageRun(stage=stage, status="ran", node_id="n" + stage[:3], node_address="10.0.0.1", gpu_ids=tuple(gpus),
                    accelerator_type="A100" if gpus else None, started_at=start, finished_at=start + seconds,
                    stage_duration_s=seconds).to_json()


def test_summary_lists_every_cell_with_statuses_gpu_hours_and_snr(tmp_path):
    built, broken, refused = Cell("tiny", "hailo8l"), Cell("tiny", "hailo8"), Cell("tiny", "hailo10h")
    runs = {(built.name, s): _run(s, 100.0, 1800.0 if s.endswith("optimize") else 10.0,
                                  ("0",) if s.endswith("optimize") else ()) for s in STAGES}
    for stage in ("export", "encoder-calib", "decoder-calib", "decoder-parse"):
        runs[(broken.name, stage)] = _run(stage, 50.0, 5.0)
    errors = {(broken.name, "encoder-parse"): "Stage encoder-parse failed with exit code 1."}
    for model, snr in (("encoder", {"out1": 18.5, "out2": 12.25}), ("decoder", {"logits": 9.0})):
        folder = tmp_path / built.name / "dfc" / model
        folder.mkdir(parents=True)
        (folder / "optimize.json").write_text(json.dumps({"snr_db": snr}))

    summary = summarize((built, broken, refused), STAGES, runs, errors, {refused.name: "No supported GPU ..."},
                        tmp_path, started_at=0.0, finished_at=4000.0)
    cells = summary.cells
    assert list(cells) == ["tiny-hailo8l", "tiny-hailo8", "tiny-hailo10h"]
    assert cells["tiny-hailo8l"]["status"] == "built"
    assert cells["tiny-hailo8l"]["gpu_hours"] == 1.0  # two optimizes of half an hour on one GPU each
    assert cells["tiny-hailo8l"]["snr_db_lowest"] == {"encoder": 12.25, "decoder": 9.0}
    assert cells["tiny-hailo8l"]["seconds"] == 1800.0

    rows = cells["tiny-hailo8"]["stages"]
    assert cells["tiny-hailo8"]["status"] == "failed"
    assert rows["encoder-parse"] == {"status": "failed", "error": "Stage encoder-parse failed with exit code 1."}
    assert {s for s, r in rows.items() if r["status"] == "blocked"} == {
        "encoder-optimize", "encoder-compile", "bundle", "report"}
    assert rows["decoder-optimize"]["status"] == "not run"  # its task never answered (e.g. the driver stopped)
    assert cells["tiny-hailo8"]["error"].startswith("encoder-parse: Stage encoder-parse failed")
    assert cells["tiny-hailo10h"]["status"] == "refused"

    json_path, md_path = write_summary(summary, tmp_path)
    assert json.loads(json_path.read_text())["makespan_s"] == 4000.0
    markdown = md_path.read_text()
    for name in cells:
        assert f"| {name} |" in markdown
    assert "✓ ran 1800.0s GPU 0@A100" in markdown
    assert "| 1.0000 | 12.2 / 9.0 |" in markdown
    assert "**tiny-hailo8**: encoder-parse: Stage encoder-parse failed" in markdown
