"""pipeline.host.hang_probe: JIT warm-up (the CUDA cache grows, nothing printed) is not a hang; silence
without growth is, and the message says which. Native mode with small stand-in probes; the Docker
probe tests are in test_docker_engine.py."""

import io

import pytest

from pipeline.errors import ToolchainError
from pipeline.host.hang_probe import HangProbe, run_hang_probe

# Writes 4 KiB into the CUDA cache folder every 0.25 s, as a driver JIT-compiling PTX does, printing
# nothing until the end (or never, with forever=True).
GROWING_CACHE = """\
import os, sys, time
forever = sys.argv[1] == "forever"
cache = os.environ["CUDA_CACHE_PATH"]
for i in range(10 ** 6 if forever else 16):
    with open(os.path.join(cache, f"module-{i}.bin"), "wb") as f:
        f.write(b"x" * 4096)
    time.sleep(0.25)
print("hang probe: matmul finished", flush=True)
"""


def _probe(tmp_path, argv, **kw):
    return HangProbe(image="dfc-cuda11", gpu_device_ids=("GPU-h100",), gpu_name="NVIDIA H100 80GB HBM3",
                     advice="Use an A100 or --cpu.", build_dir=tmp_path / "b", log_path=tmp_path / "probe.log",
                     argv=tuple(argv), jit_cache_dir=tmp_path / "jit", **kw)


def test_a_silent_probe_whose_cache_grows_is_not_stopped(tmp_path):
    probe = _probe(tmp_path, ["python", "-c", GROWING_CACHE, "once"], timeout_s=1.5, ceiling_s=120,
                   jit_expected="~251 MB of kernels, ~12 CPU-minutes (800 s measured on an H100), once")
    console = io.StringIO()
    took = run_hang_probe(probe, native=True, image_tag=None, console=console)
    assert took > probe.timeout_s  # it ran silently for longer than the stall limit and was left alone
    text = console.getvalue()
    assert text.startswith("[whisper-hailo] hang probe: NVIDIA H100 80GB HBM3 has no native code in the "
                           "dfc-cuda11 image: ~251 MB of kernels")  # said up front
    assert ("is growing: compiling GPU kernels for NVIDIA H100 80GB HBM3 once; later runs reuse them" in text)
    assert "hang probe: matmul finished" in text
    assert len(list((tmp_path / "jit").iterdir())) == 16


def test_a_probe_that_neither_prints_nor_grows_the_cache_is_stopped_as_a_hang(tmp_path):
    probe = _probe(tmp_path, ["sleep", "600"], timeout_s=1.5, ceiling_s=120)
    with pytest.raises(ToolchainError) as err:
        run_hang_probe(probe, native=True, image_tag=None, console=io.StringIO())
    assert err.value.problem.startswith(
        "NVIDIA H100 80GB HBM3: the GPU probe (a short TensorFlow matmul) printed nothing and its GPU kernel "
        "cache did not grow for 2 s in the dfc-cuda11 image: a hang, not kernel compilation.")
    assert err.value.fix == "Use an A100 or --cpu."
    assert "stopped: stall" in probe.log_path.read_text()


def test_a_cache_that_grows_past_the_ceiling_is_stopped_as_still_compiling(tmp_path):
    probe = _probe(tmp_path, ["python", "-c", GROWING_CACHE, "forever"], timeout_s=1.5, ceiling_s=4)
    with pytest.raises(ToolchainError) as err:
        run_hang_probe(probe, native=True, image_tag=None, console=io.StringIO())
    assert err.value.problem.startswith("NVIDIA H100 80GB HBM3: the GPU probe was still compiling GPU kernels "
                                        "(its cache kept growing) after 4 s, the ceiling for the dfc-cuda11 image.")
    assert "what was compiled stays in the cache" in err.value.fix


def test_without_a_cache_folder_only_output_counts(tmp_path):
    probe = HangProbe(image="dfc-cuda11", gpu_device_ids=(), gpu_name="NVIDIA A100", advice="",
                      build_dir=tmp_path, log_path=tmp_path / "probe.log", argv=("sleep", "600"), timeout_s=1)
    with pytest.raises(ToolchainError, match="printed nothing for 1 s in the dfc-cuda11 image: a hang"):
        run_hang_probe(probe, native=True, image_tag=None, console=io.StringIO())
