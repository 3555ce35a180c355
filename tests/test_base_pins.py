"""pipeline.host.base_pins (+ docker_engine.registry_digest / ensure_image): base digests pinned on first
use through a recorded registry answer, the lock file written atomically and reused, bad locks and
silent registries."""

import io
import json
import os

import docker.errors
import pytest

from pipeline.errors import ToolchainError
from pipeline.host import base_pins, docker_engine
from pipeline.host.base_pins import LOCKED, RESOLVED, TABLE, UNPINNED, lookup_pin, pin_base, read_lock
from pipeline.tables import IMAGES

CUDA12 = IMAGES["dfc-cuda12"].base_image
# The shape of docker-py's answer (RegistryData.id is the distribution descriptor's digest); value made up.
ANSWER = "sha256:" + "ab12" * 16
NEWER = "sha256:" + "cd34" * 16


class FakeImages:
    def __init__(self, answers):
        self.answers = answers  # tag -> digest, or an exception to raise
        self.asked = []

    def get_registry_data(self, name):
        self.asked.append(name)
        answer = self.answers[name]
        if isinstance(answer, BaseException):
            raise answer
        return type("RegistryData", (), {"id": answer})()


class FakeRegistryClient:
    """Stands in for docker.DockerClient where base pinning touches it; fails on anything else."""

    def __init__(self, answers):
        self.images = FakeImages(answers)


def registry(answers):
    """The lookup ensure_image passes in, over a fake docker-py client; `.asked` lists the tags."""
    client = FakeRegistryClient(answers)

    def resolve(tag):
        return docker_engine.registry_digest(client, tag)

    resolve.asked = client.images.asked
    return resolve


def never(tag):
    raise AssertionError(f"the registry must not be asked for {tag}")


def test_first_use_pins_loudly_writes_the_lock_and_the_second_use_reuses_it(tmp_path, monkeypatch):
    lock = tmp_path / "docker" / "images.lock"
    resolve = registry({CUDA12: ANSWER})
    writes = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (writes.append((str(src), str(dst))), real_replace(src, dst)))
    console = io.StringIO()

    pin = pin_base(CUDA12, "unknown", resolve=resolve, lock_path=lock, console=console)
    assert (pin.digest, pin.source, pin.ref) == (ANSWER, RESOLVED, f"{CUDA12}@{ANSWER}")
    assert resolve.asked == [CUDA12]
    assert f"*** PINNED base image {CUDA12} to {ANSWER}" in console.getvalue()
    assert "Commit that file" in console.getvalue()
    # written under a temporary name and renamed into place: never half-written
    assert len(writes) == 1 and writes[0][1] == str(lock) and writes[0][0] != str(lock)
    saved = json.loads(lock.read_text())
    assert saved["format"] == 1 and saved["bases"][CUDA12]["digest"] == ANSWER

    again = pin_base(CUDA12, "unknown", resolve=never, lock_path=lock, console=console)
    assert (again.digest, again.source) == (ANSWER, LOCKED)


def test_repin_asks_again_and_keeps_the_other_entries(tmp_path):
    lock = tmp_path / "images.lock"
    pin_base(CUDA12, "unknown", resolve=registry({CUDA12: ANSWER}), lock_path=lock)
    pin_base("python:3.11-slim-bookworm", "unknown", resolve=registry({"python:3.11-slim-bookworm": ANSWER}),
             lock_path=lock)
    console = io.StringIO()
    fresh = pin_base(CUDA12, "unknown", resolve=registry({CUDA12: NEWER}), lock_path=lock, repin=True,
                     console=console)
    assert fresh.digest == NEWER and f"(was {ANSWER}, from docker/images.lock)" in console.getvalue()
    assert set(read_lock(lock)) == {CUDA12, "python:3.11-slim-bookworm"}


def test_the_lock_wins_over_the_table_and_the_table_over_nothing(tmp_path):
    lock = tmp_path / "images.lock"
    assert lookup_pin(CUDA12, "unknown", lock).source == UNPINNED
    assert lookup_pin(CUDA12, NEWER, lock).source == TABLE
    base_pins.record_pin(CUDA12, ANSWER, lock)
    assert (lookup_pin(CUDA12, NEWER, lock).digest, lookup_pin(CUDA12, NEWER, lock).source) == (ANSWER, LOCKED)


@pytest.mark.parametrize("content, problem", [
    ('{"format": 1, "bases": {"nvidia/cuda:x": {"digest": "sha256:zz"}}}',
     "the digest for nvidia/cuda:x is 'sha256:zz', not sha256: followed by 64 hex digits"),
    ("{not json", "not readable JSON"),
    ('{"bases": {}}', "not a format-1 lock"),
])
def test_a_malformed_lock_is_a_clear_error_and_is_left_alone(tmp_path, content, problem):
    lock = tmp_path / "images.lock"
    lock.write_text(content)
    with pytest.raises(ToolchainError) as err:
        pin_base(CUDA12, "unknown", resolve=never, lock_path=lock)
    assert problem in err.value.problem and str(lock) in err.value.problem
    assert "invoke image --repin" in err.value.fix and "--base-image" in err.value.fix
    assert lock.read_text() == content


@pytest.mark.parametrize("answer, problem", [
    (docker.errors.APIError("500 Server Error", explanation='Get "https://registry-1.docker.io/v2/": dial tcp: '
                            "lookup registry-1.docker.io: no such host"),
     f"The registry did not answer for {CUDA12} (Get \"https://registry-1.docker.io/v2/\": dial tcp"),
    (docker.errors.NotFound("404", explanation="manifest unknown"), f"The registry does not know {CUDA12}"),
    ("sha256:short", f"The registry answered 'sha256:short' for {CUDA12}, which is not a sha256 digest"),
])
def test_a_registry_that_does_not_answer_writes_nothing(tmp_path, answer, problem):
    lock = tmp_path / "images.lock"
    with pytest.raises(ToolchainError) as err:
        pin_base(CUDA12, "unknown", resolve=registry({CUDA12: answer}), lock_path=lock)
    assert err.value.problem.startswith(problem)
    assert "--base-image" in err.value.fix
    assert not lock.exists() and list(tmp_path.iterdir()) == []


def test_ensure_image_pins_the_unpinned_base_before_it_builds(tmp_path, monkeypatch):
    (tmp_path / "hailo_dataflow_compiler-3.33.1-py3-none-linux_x86_64.whl").write_bytes(b"w")
    lock = tmp_path / "images.lock"

    class Built(Exception):
        pass

    class Client(FakeRegistryClient):
        def __init__(self):
            super().__init__({CUDA12: ANSWER})
            self.images.get = self.get  # the content tag does not exist yet

        def get(self, tag):
            raise docker.errors.ImageNotFound(tag)

    client = Client()
    seen = {}

    def fake_build(client, context, target, tag, build_args, labels, log_path, console=None):
        seen.update(target=target, base=build_args["BASE_IMAGE"], tag=tag)
        raise Built()

    monkeypatch.setattr(docker_engine, "build_image", fake_build)
    with pytest.raises(Built):
        docker_engine.ensure_image("dfc3", vendor_dir=tmp_path, client=client, lock_path=lock,
                                   log_dir=tmp_path / "logs", console=io.StringIO())
    assert seen["target"] == "dfc-cuda12" and seen["base"] == f"{CUDA12}@{ANSWER}"
    assert seen["tag"].startswith("whisper-hailo:dfc-cuda12-")
    assert read_lock(lock)[CUDA12]["digest"] == ANSWER
