"""pipeline/host/probe.py: the parse-only probe, with the DFC test double standing in for the wheel."""

import json

import pytest

from pipeline.errors import ToolchainError
from pipeline.host import probe
from pipeline.tables import ARCHS


def test_probe_parses_and_resolves_every_arch_and_reports_the_cell_the_dfc_cannot_do(
        dfc_double, random_whisper_dir, tmp_path):
    results = probe.probe(["tiny"], list(ARCHS), tmp_path, model=str(random_whisper_dir("tiny")),
                          seconds=1, seq_len=8, log=lambda message: None)
    by_arch = {cell.arch: cell for cell in results}
    for arch in ("hailo8", "hailo8l"):
        cell = by_arch[arch]
        assert cell.ok and cell.step == "done" and cell.dfc_version == "3.31.0+testdouble"
        encoder = cell.models["encoder"]
        assert encoder["gemm"] == 0 and encoder["graph_ok"]
        assert encoder["resolved"]["conv4"] == ["conv6"]  # hailo-whisper's block-0 attention output
        assert cell.models["decoder"]["resolved"]
    # a 3.x DFC cannot target Hailo-10H: that cell fails at parse, the others still ran
    failed = by_arch["hailo10h"]
    assert not failed.ok and failed.step == "encoder: parse and layer names"
    assert "hailo10h needs the Dataflow Compiler 5.x" in failed.error
    saved = json.loads((tmp_path / "probe.json").read_text())["cells"]
    assert [(c["arch"], c["ok"]) for c in saved] == [("hailo8", True), ("hailo8l", True), ("hailo10h", False)]
    table = probe.render(results)
    assert "hailo10h  FAIL" in table and "script names resolved" in table


def test_an_export_failure_fails_every_cell_of_the_variant(tmp_path):
    results = probe.probe(["tiny"], ["hailo8l"], tmp_path, model=str(tmp_path / "missing"), log=lambda m: None)
    assert [(c.ok, c.step) for c in results] == [(False, "export")]
    assert "does not exist" in results[0].error


@pytest.mark.parametrize("variant,arch,all_cells,message", [
    (None, None, False, "Say which cell to probe"),
    ("tiny", "hailo9", False, "Unknown arch 'hailo9'"),
    ("small", "hailo8l", False, "Unknown variant 'small'"),
])
def test_cell_choice_is_checked(variant, arch, all_cells, message):
    with pytest.raises(ToolchainError, match=message):
        probe.cells(variant, arch, all_cells)


def test_all_means_every_variant_and_arch():
    variants, archs = probe.cells(None, None, True)
    assert len(variants) * len(archs) == 12
