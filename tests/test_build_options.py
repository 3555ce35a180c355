"""pipeline/host/build_options.py: what a build is asked to do, checked when it is made."""

from pathlib import Path

import pytest

from pipeline.errors import ToolchainError
from pipeline.host.build_options import BuildOptions


def test_options_refuse_bad_combinations_with_the_fix(tmp_path):
    with pytest.raises(ToolchainError, match="--calib and --calib-download"):
        BuildOptions(calib_dir=tmp_path, calib_download=True)
    with pytest.raises(ToolchainError, match="Unknown profile 'fast'"):
        BuildOptions(calib_dir=tmp_path, profile="fast")
    with pytest.raises(ToolchainError, match="'optimise' is not a stage"):
        BuildOptions(calib_dir=tmp_path, force=("optimise",))
    with pytest.raises(ToolchainError, match="Unknown Whisper variant 'small'"):
        BuildOptions(calib_dir=tmp_path, variant="small").spec
    options = BuildOptions(calib_dir=tmp_path, variant="base", arch="hailo10h")
    assert options.build_dir == Path("build/base-hailo10h").absolute()
    assert (options.spec.seconds, options.spec.seq_len) == (5, 24)


def test_paths_are_resolved_once_so_relative_ones_survive_a_container(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "speech").mkdir()
    monkeypatch.chdir(work)
    options = BuildOptions(calib_dir=Path("../speech"), model="../model", out=Path("../build"),
                           model_script=Path("scripts/x.alls"), vendor_dir=Path("vendor"))
    assert options.calib_dir == tmp_path / "speech"
    assert options.model == str(tmp_path / "model")
    assert options.build_dir == tmp_path / "build"
    assert options.model_script == work / "scripts" / "x.alls" and options.vendor_dir == work / "vendor"
    assert BuildOptions(calib_dir=tmp_path, model="openai/whisper-tiny").model == "openai/whisper-tiny"


def test_stall_limits_take_stages_or_kinds_in_minutes_and_refuse_the_rest():
    from pipeline.host.build_options import parse_stall_limits

    assert parse_stall_limits(["optimize=90", "encoder-compile=0.5"]) == {"optimize": 5400.0,
                                                                          "encoder-compile": 30.0}
    for bad, message in (("optimise=3", "'optimise', which is not a stage"),
                         ("bundle=3", "'bundle', which is not a stage"),
                         ("optimize=-1", "minutes must be positive"), ("optimize=0", "minutes must be positive"),
                         ("optimize=soon", "is not a number"), ("optimize", "is not STAGE=MINUTES")):
        with pytest.raises(ToolchainError, match=message):
            parse_stall_limits([bad])
    with pytest.raises(ToolchainError, match="not a positive number"):
        BuildOptions(stall_timeouts={"optimize": -5})


def test_numeric_flags_are_refused_with_the_flag_and_the_text():
    from pipeline.host.build_options import parse_number

    assert parse_number("--seconds", "7.5") == 7.5 and parse_number("--seq-len", "24", int) == 24
    with pytest.raises(ToolchainError, match="--seconds 'banana' is not a number"):
        parse_number("--seconds", "banana")
    with pytest.raises(ToolchainError, match="--seq-len 'x' is not an integer"):
        parse_number("--seq-len", "x", int)
    with pytest.raises(ToolchainError, match="--seconds 'nan' is not a finite number"):
        parse_number("--seconds", "nan")
    with pytest.raises(ToolchainError, match="--min-free-gb -1 is not a number of GiB >= 0"):
        BuildOptions(min_free_disk_gib=-1)


def test_the_decoder_target_is_checked_and_a_cpu_decoder_refuses_to_force_hailo_decoder_stages(tmp_path):
    assert BuildOptions(calib_dir=tmp_path).dfc_models == ("encoder", "decoder")
    assert BuildOptions(calib_dir=tmp_path, decoder="cpu").dfc_models == ("encoder",)
    assert BuildOptions(calib_dir=tmp_path, decoder="cpu", force=("optimize", "all")).force == ("optimize", "all")
    with pytest.raises(ToolchainError, match="Unknown decoder target 'gpu'.*--decoder hailo.*--decoder cpu"):
        BuildOptions(calib_dir=tmp_path, decoder="gpu")
    for stage in ("decoder-optimize", "decoder-calib", "decoder"):
        with pytest.raises(ToolchainError, match=rf"--force {stage} asks to rerun the Hailo decoder's stages, but "
                                                 r"--decoder cpu builds no Hailo decoder.*Drop --force"):
            BuildOptions(calib_dir=tmp_path, decoder="cpu", force=(stage,))


def test_invoke_build_refuses_a_cpu_decoder_with_a_forced_decoder_stage(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([str(Path(sys.executable).with_name("invoke")), "build", "--decoder", "cpu", "--force",
                           "decoder-optimize", "--calib", str(tmp_path), "--out", str(tmp_path / "build")],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert proc.returncode != 0
    assert "--force decoder-optimize asks to rerun the Hailo decoder's stages" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "build").exists()


def test_build_flags_become_options_with_numbers_paths_and_the_environment(tmp_path):
    from pipeline.host.build_options import options_from_flags

    environ = {"HF_TOKEN": "hf_x", "HAILO_DOUBLE_FAIL_AT": "optimize", "UNRELATED": "1"}
    options = options_from_flags(environ, variant="tiny.en", seconds="7.5", seq_len="24", calib=str(tmp_path),
                                 eval=str(tmp_path), max_wer_increase="2", stall_limit=["optimize=45"], min_free_gb="3", verbose=True,
                                 force=["export"])
    assert (options.variant, options.seconds, options.seq_len) == ("tiny.en", 7.5, 24)
    assert options.calib_dir == tmp_path and options.max_wer_increase == 2.0 and options.min_free_disk_gib == 3.0
    assert options.export_env == {"HF_TOKEN": "hf_x"}  # the token reaches the export stage only
    assert options.stage_env == {"HAILO_DOUBLE_FAIL_AT": "optimize"}
    assert options.stall_timeouts["optimize"] == 45 * 60 and options.stream_logs and options.force == ("export",)
    with pytest.raises(ToolchainError, match="--seq-len 'long' is not an integer"):
        options_from_flags({}, calib=str(tmp_path), seq_len="long")


def test_matrix_flags_become_options_and_a_bad_model_dir_is_named(tmp_path):
    from pipeline.host.matrix import MatrixOptions

    options = MatrixOptions.from_flags({}, variants="tiny,base", archs="hailo8l", models="encoder",
                                       store=str(tmp_path), calib=str(tmp_path), model_dir=["tiny=/models/tiny"],
                                       max_retries="3")
    assert [cell.name for cell in options.cells] == ["tiny-hailo8l", "base-hailo8l"]
    assert options.models == ("encoder",) and options.max_retries == 3
    assert options.model_dirs == {"tiny": Path("/models/tiny")} and options.build.calib_dir == tmp_path
    with pytest.raises(ToolchainError, match="is not VARIANT=FOLDER"):
        MatrixOptions.from_flags({}, variants="tiny", archs="hailo8l", models="encoder", store=str(tmp_path),
                                 model_dir=["tiny"])
