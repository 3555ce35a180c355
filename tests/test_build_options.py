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
