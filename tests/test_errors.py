"""pipeline/errors.py: filesystem errors a rented host sees become ToolchainErrors with the path
and the fix, in every stage CLI (run_cli)."""

import errno
import os

import pytest

from pipeline.errors import ToolchainError, filesystem_error, filesystem_errors, run_cli


@pytest.mark.parametrize("code,problem,fix", [
    (errno.EROFS, "is on a read-only filesystem", "writable folder"),
    (errno.EACCES, "permission denied", "permissions"),
    (errno.ENOSPC, "no space left on device", "Free space"),
    (errno.EDQUOT, "disk quota exceeded", "quota"),
])
def test_filesystem_errors_name_the_path_and_the_fix(code, problem, fix):
    err = filesystem_error(OSError(code, os.strerror(code), "/data/build/export/x.onnx"), "Exporting")
    assert isinstance(err, ToolchainError)
    assert err.problem.startswith("Exporting: /data/build/export/x.onnx ") and problem in err.problem
    assert fix in err.fix


def test_an_error_without_a_file_name_names_the_folder_and_others_stay_bugs():
    err = filesystem_error(OSError(errno.ENOSPC, "No space left on device"), where="/data/build")
    assert "a file under /data/build cannot be written: no space left on device" in err.problem
    assert filesystem_error(OSError(errno.ENOENT, "No such file", "/x")) is None
    with pytest.raises(FileNotFoundError):
        with filesystem_errors():
            raise FileNotFoundError(errno.ENOENT, "No such file", "/x")


def test_a_stage_cli_reports_a_full_disk_as_an_error_line_not_a_traceback(capsys):
    def fill():
        raise OSError(errno.ENOSPC, "No space left on device", "/b/calib/.decoder_calib.partial-7.npz")

    assert run_cli(fill) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: /b/calib/.decoder_calib.partial-7.npz cannot be written: no space left")
    assert "Traceback" not in err
