"""pipeline/host/stop_signals.py: SIGTERM and SIGHUP stop a build like Ctrl-C; a stage dies with a
SIGKILLed build (parent-death signal). The whole flow: tests/test_build.py::_check_stop_signals."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.host.stop_signals import BuildStopped, stop_on_signals

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_raises_build_stopped_once_and_the_handlers_come_back(sig):
    before = signal.getsignal(sig)
    with pytest.raises(BuildStopped) as caught:
        with stop_on_signals():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # interrupted by the handler
    assert caught.value.signum == sig and caught.value.exit_code == 128 + sig
    assert signal.getsignal(sig) is before


def test_a_second_signal_during_the_cleanup_does_not_interrupt_it():
    cleaned = False
    with pytest.raises(BuildStopped):
        with stop_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                os.kill(os.getpid(), signal.SIGHUP)  # ignored: the stop is already under way
                time.sleep(0.1)
                cleaned = True
    assert cleaned


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_child_started_with_the_parent_death_signal_dies_with_a_sigkilled_parent():
    parent = (
        "import subprocess, sys, time\n"
        "from pipeline.host.stop_signals import parent_death_signal\n"
        "child = subprocess.Popen(['sleep', '60'], start_new_session=True, preexec_fn=parent_death_signal())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    child = int(proc.stdout.readline())
    assert _alive(child)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the stage outlived its SIGKILLed build"
