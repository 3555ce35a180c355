"""Stage cache: keys, up-to-date checks, --force, damaged records; and the build lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from pipeline.host.build_lock import BuildLock, LockHolder, read_holder
from pipeline.errors import ToolchainError
from pipeline.host.stage_cache import (
    STAGE_ORDER,
    UPSTREAM,
    FileHasher,
    StageCache,
    StageInputs,
    downstream_of,
    resolve_force,
)


def test_dependency_table_is_in_build_order():
    seen = set()
    for stage in STAGE_ORDER:
        assert set(UPSTREAM[stage]) <= seen, stage
        seen.add(stage)
    assert seen == set(UPSTREAM)


def test_force_reaches_everything_downstream():
    assert resolve_force(["encoder-optimize"]) == {"encoder-optimize", "encoder-compile", "bundle", "report"}
    assert resolve_force(["optimize"]) == {
        "encoder-optimize", "decoder-optimize", "encoder-compile", "decoder-compile", "bundle", "report"}
    assert resolve_force(["export"]) == set(STAGE_ORDER)
    # The encoder set feeds the decoder set, so forcing it rebuilds the decoder side too.
    assert "decoder-optimize" in resolve_force(["encoder-calib"])
    assert "encoder-optimize" not in resolve_force(["decoder-calib"])
    assert resolve_force(["report"]) == {"report"}
    assert resolve_force(["bundle,report"]) == {"bundle", "report"}
    assert resolve_force([]) == frozenset()
    assert downstream_of(["decoder-parse"]) == {"decoder-parse", "decoder-optimize", "decoder-compile", "bundle", "report"}


def test_force_rejects_unknown_names_listing_choices():
    with pytest.raises(ToolchainError) as err:
        resolve_force(["optimise"])
    assert "'optimise' is not a stage" in str(err.value)
    assert "encoder-optimize" in str(err.value) and "optimize" in err.value.fix


def _run(cache: StageCache, stage: str, inputs: StageInputs, output_text: str):
    """What build.py does per stage: key, check, write outputs, record."""
    key, described = cache.key(stage, inputs)
    if cache.is_up_to_date(stage, key):
        return "up to date"
    out = cache.build_dir / f"{stage}.out"
    out.write_text(output_text)
    cache.save(stage, key, described, [out], duration_s=0.1)
    return "ran"


def test_stage_is_up_to_date_until_an_input_param_text_or_output_changes(tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(b"weights")
    cache = StageCache(tmp_path / "build")
    cache.build_dir.mkdir()

    def inputs(**kw):
        base = dict(files={"model": source}, params={"seconds": 2}, texts={"script": "a"}, tool={"dfc": "3.31.0"})
        base.update(kw)
        return StageInputs(**base)

    assert _run(cache, "export", inputs(), "x") == "ran"
    assert _run(cache, "export", inputs(), "x") == "up to date"
    # A fresh cache object (a new process) reads the same records.
    assert _run(StageCache(cache.build_dir), "export", inputs(), "x") == "up to date"
    assert _run(cache, "export", inputs(params={"seconds": 1}), "x") == "ran"
    assert _run(cache, "export", inputs(params={"seconds": 1}, texts={"script": "b"}), "x") == "ran"
    assert _run(cache, "export", inputs(params={"seconds": 1}, texts={"script": "b"}, tool={"dfc": "3.32.0"}), "x") == "ran"
    final = inputs(params={"seconds": 1}, texts={"script": "b"}, tool={"dfc": "3.32.0"})
    assert _run(cache, "export", final, "x") == "up to date"
    source.write_bytes(b"other weights")
    assert _run(cache, "export", final, "x") == "ran"
    # An output edited or removed after the fact makes the stage stale.
    (cache.build_dir / "export.out").write_text("tampered")
    assert _run(cache, "export", final, "x") == "ran"
    (cache.build_dir / "export.out").unlink()
    assert _run(cache, "export", final, "x") == "ran"
    record = json.loads((cache.build_dir / ".stages" / "export.json").read_text())
    assert record["outputs"] == {"export.out": __import__("hashlib").sha256(b"x").hexdigest()}
    assert record["inputs"]["params"] == {"seconds": 1}
    assert set(record) >= {"key", "outputs", "duration_s", "finished_at"}


def test_downstream_key_follows_upstream_key(tmp_path):
    cache = StageCache(tmp_path)
    empty = StageInputs()
    assert _run(cache, "encoder-parse", StageInputs(params={"p": 1}), "har") == "ran"
    assert _run(cache, "encoder-calib", empty, "calib") == "ran"
    assert _run(cache, "encoder-optimize", empty, "q") == "ran"
    assert _run(cache, "encoder-optimize", empty, "q") == "up to date"
    # Upstream reran with a new key (even with byte-identical outputs): downstream reruns.
    assert _run(cache, "encoder-parse", StageInputs(params={"p": 2}), "har") == "ran"
    assert _run(cache, "encoder-optimize", empty, "q") == "ran"


def test_invalidate_and_damaged_record(tmp_path):
    cache = StageCache(tmp_path)
    assert _run(cache, "report", StageInputs(), "r") == "ran"
    assert cache.invalidate(resolve_force(["bundle"])) == ["report"]
    assert cache.load("report") is None
    assert _run(cache, "report", StageInputs(), "r") == "ran"
    cache.record_path("report").write_text("{not json")
    assert cache.load("report") is None
    assert _run(cache, "report", StageInputs(), "r") == "ran"


def test_missing_output_is_an_error_not_a_record(tmp_path):
    cache = StageCache(tmp_path)
    with pytest.raises(ToolchainError, match="output .*nothing.hef is missing"):
        cache.save("encoder-compile", "k", {}, [tmp_path / "nothing.hef"], 1.0)
    assert cache.load("encoder-compile") is None


def test_file_hasher_remembers_by_stat_and_notices_replacement(tmp_path):
    path = tmp_path / "big.npy"
    path.write_bytes(b"a" * 100)
    memo = tmp_path / "memo.json"
    hasher = FileHasher(memo)
    first = hasher.sha256(path)
    hasher.save()
    remembered = json.loads(memo.read_text())[str(path)]
    assert remembered["sha256"] == first
    # Same stat -> the memo answers (proved by planting a different digest in it).
    memo.write_text(json.dumps({str(path): {**remembered, "sha256": "planted"}}))
    assert FileHasher(memo).sha256(path) == "planted"
    # A replaced file (new inode/size/mtime, as every atomic write gives) is hashed again.
    tmp = tmp_path / "new"
    tmp.write_bytes(b"b" * 101)
    os.replace(tmp, path)
    assert FileHasher(memo).sha256(path) != first


def test_lock_refuses_a_live_holder_naming_its_pid(tmp_path):
    with BuildLock(tmp_path) as held:
        assert read_holder(tmp_path / "build.lock") == held.holder
        with pytest.raises(ToolchainError) as err:
            BuildLock(tmp_path).acquire()
        assert f"pid {os.getpid()}" in str(err.value)
        assert "--out" in err.value.fix
    assert not (tmp_path / "build.lock").exists()


def test_lock_takes_over_a_dead_holder_with_a_warning(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = LockHolder(dead.pid, socket.gethostname(), "2026-01-01T00:00:00+00:00")
    (tmp_path / "build.lock").write_text(json.dumps(stale.to_json()))
    warnings = []
    with BuildLock(tmp_path, warn=warnings.append) as lock:
        assert lock.holder.pid == os.getpid()
    assert len(warnings) == 1 and f"pid {dead.pid}" in warnings[0] and "stale" in warnings[0]


def test_lock_from_another_host_is_never_taken_over(tmp_path):
    other = LockHolder(1, "some-other-host", "2026-01-01T00:00:00+00:00")
    (tmp_path / "build.lock").write_text(json.dumps(other.to_json()))
    with pytest.raises(ToolchainError) as err:
        BuildLock(tmp_path, is_running=lambda pid: False).acquire()
    assert "pid 1 on host some-other-host" in str(err.value)


def test_unreadable_lock_is_not_guessed_at(tmp_path):
    (tmp_path / "build.lock").write_text("garbage")
    with pytest.raises(ToolchainError, match="not a readable build lock"):
        BuildLock(tmp_path).acquire()
