"""pipeline/host/build_lock.py: filesystem errors while taking the lock are clear errors (the
lock's ownership rules are exercised end to end in tests/test_build.py)."""

import errno
import os

import pytest

from pipeline.errors import ToolchainError
from pipeline.host.build_lock import BuildLock


@pytest.mark.parametrize("code,text", [(errno.EROFS, "is on a read-only filesystem"),
                                       (errno.EACCES, "is not accessible (permission denied)"),
                                       (errno.ENOSPC, "cannot be written: no space left on device")])
def test_a_lock_that_cannot_be_written_says_where_and_what_to_do(tmp_path, monkeypatch, code, text):
    def refuse(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr(os, "link", refuse)
    with pytest.raises(ToolchainError) as caught:
        BuildLock(tmp_path / "build").acquire()
    assert str(caught.value).startswith(f"Taking the build lock: {tmp_path / 'build' / 'build.lock'} {text}")
    assert list((tmp_path / "build").iterdir()) == [], "no temporary lock file is left"


def test_a_temp_file_removed_under_our_feet_is_retried(tmp_path, monkeypatch):
    real_link, calls = os.link, []

    def vanish_once(src, dst):
        calls.append(src)
        if len(calls) == 1:
            os.unlink(src)  # another build's partial-file cleanup
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", vanish_once)
    lock = BuildLock(tmp_path)
    assert lock.acquire().pid == os.getpid() and len(calls) == 2
    lock.release()
