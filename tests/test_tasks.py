"""tasks.py: bad values for the invoke flags are clear errors (exit 2, no traceback), and nothing
starts."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _invoke(*args, cwd):
    done = subprocess.run([str(Path(sys.executable).with_name("invoke")), "-r", str(REPO), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("args,message", [
    (("--seconds", "banana"), "--seconds 'banana' is not a number"),
    (("--seq-len", "x"), "--seq-len 'x' is not an integer"),
    (("--calib-size", "many"), "--calib-size 'many' is not an integer"),
    (("--stall-limit", "optimise=30"), "--stall-limit names 'optimise', which is not a stage"),
    (("--stall-limit", "compile=-5"), "minutes must be positive"),
    (("--min-free-gb", "lots"), "--min-free-gb 'lots' is not a number"),
    (("--min-memory-gb", "-1"), "--min-memory-gb -1.0 is not a number of GiB >= 0"),
])
def test_bad_build_flags_are_refused_before_anything_runs(tmp_path, args, message):
    code, output = _invoke("build", "--out", "out", *args, cwd=tmp_path)
    assert code == 2 and message in output and "Traceback" not in output
    assert not (tmp_path / "out").exists()


def test_gpu_check_refuses_a_driver_that_is_not_a_version(tmp_path):
    code, output = _invoke("gpu-check", "--name", "NVIDIA A100-SXM4-80GB", "--compute", "8.0",
                           "--dfc-version", "3.33.1", "--driver", "banana", cwd=tmp_path)
    assert code == 2 and "Driver version 'banana' is not a version number" in output


def test_doctor_takes_the_builds_resource_minimums(tmp_path):
    code, output = _invoke("doctor", "--cpu", "--no-docker", "--min-free-gb", "100000", "--json", cwd=tmp_path)
    assert code == 1 and "100000" in output  # no disk here has 100 TB free: the check names the minimum
    code, output = _invoke("doctor", "--min-free-gb", "lots", cwd=tmp_path)
    assert code == 2 and "--min-free-gb 'lots' is not a number" in output and "Traceback" not in output


def test_every_task_explains_itself_with_help_and_names_a_missing_required_flag(tmp_path):
    code, listing = _invoke("--list", cwd=tmp_path)
    tasks = [line.split()[0] for line in listing.splitlines()[1:] if line.startswith("  ") and line.split()
             and not line.startswith("    ")]
    assert {"build", "evaluate", "gpu-check", "graph-check", "doctor"} <= set(tasks)
    for name in tasks:
        code, output = _invoke(name, "--help", cwd=tmp_path)
        assert code == 0 and "usage" in output.lower() and "Traceback" not in output, (name, output[-500:])
    code, output = _invoke("evaluate", "--eval", str(tmp_path), cwd=tmp_path)
    assert code == 2 and "--build-dir is required" in output
