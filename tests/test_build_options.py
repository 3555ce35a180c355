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
