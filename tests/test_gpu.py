"""GPU gate: decisions from recorded NVML / nvidia-smi answers, device choice, `invoke gpu-check`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pynvml
import pytest

from pipeline.errors import ToolchainError
from pipeline.host.gpu import (
    SMI_ARGV,
    Gpu,
    GpuInventory,
    Status,
    check_card,
    choose_devices,
    judge,
    parse_nvidia_smi,
    read_gpus,
)
from pipeline.tables import IMAGES, get_arch

REPO = Path(__file__).resolve().parents[1]
DFC3 = IMAGES["dfc3"]
DFC5 = IMAGES["dfc5"]
MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class RecordedCard:
    """What NVML answered for one card (names and sizes as NVML reports them)."""

    name: str
    compute: tuple[int, int]
    memory_mib: int
    uuid: str


CARDS = {
    "A100 80GB": RecordedCard("NVIDIA A100-SXM4-80GB", (8, 0), 81920, "GPU-4b7e1c2a-0d39-6c55-a1f0-9c1d2e3f4a50"),
    "A10G": RecordedCard("NVIDIA A10G", (8, 6), 23028, "GPU-0a10a10a-1111-2222-3333-444455556666"),
    "L4": RecordedCard("NVIDIA L4", (8, 9), 23034, "GPU-1d4c0ffe-aaaa-bbbb-cccc-ddddeeeeffff"),
    "L40S": RecordedCard("NVIDIA L40S", (8, 9), 46068, "GPU-140540aa-1234-5678-9abc-def012345678"),
    # Recorded on the real H100 through the device tool (see README, GPUs section).
    "H100": RecordedCard("NVIDIA H100 80GB HBM3", (9, 0), 81559, "GPU-e61725ce-c2c3-69e4-7eae-f728cc4dc973"),
    "RTX 4090": RecordedCard("NVIDIA GeForce RTX 4090", (8, 9), 24564, "GPU-40904090-aaaa-4090-aaaa-409040904090"),
    "RTX 3090": RecordedCard("NVIDIA GeForce RTX 3090", (8, 6), 24576, "GPU-30903090-bbbb-3090-bbbb-309030903090"),
    "T4": RecordedCard("Tesla T4", (7, 5), 15360, "GPU-7e574e57-cccc-dddd-eeee-7e577e577e57"),
    "V100": RecordedCard("Tesla V100-SXM2-16GB", (7, 0), 16384, "GPU-7100a100-9999-8888-7777-666655554444"),
}


class FakeNvml:
    """Stands in for the pynvml module with recorded answers.

    Uses pynvml's real exception classes, and fails loudly when called out of order (a query
    before nvmlInit, a handle it did not hand out, a missing nvmlShutdown is checked by tests).
    """

    NVMLError = pynvml.NVMLError
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound

    def __init__(self, cards=(), driver="535.104.05", init_error=None, bytes_strings=False):
        self.cards = list(cards)
        self.driver = driver
        self.init_error = init_error
        self.bytes_strings = bytes_strings  # nvidia-ml-py < 11.5 answered bytes
        self.initialised = 0
        self.shutdowns = 0

    def _str(self, value):
        return value.encode() if self.bytes_strings else value

    def _require_init(self):
        if self.initialised <= self.shutdowns:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _card(self, handle):
        assert isinstance(handle, tuple) and handle[0] == "handle", f"not a handle: {handle!r}"
        return self.cards[handle[1]]

    def nvmlInit(self):
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self):
        self._require_init()
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self):
        self._require_init()
        return self._str(self.driver)

    def nvmlDeviceGetCount(self):
        self._require_init()
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index):
        self._require_init()
        if not 0 <= index < len(self.cards):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return ("handle", index)

    def nvmlDeviceGetName(self, handle):
        return self._str(self._card(handle).name)

    def nvmlDeviceGetUUID(self, handle):
        return self._str(self._card(handle).uuid)

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return self._card(handle).compute

    def nvmlDeviceGetMemoryInfo(self, handle):
        return dataclasses.make_dataclass("Memory", ["total", "free", "used"])(
            self._card(handle).memory_mib * MIB, self._card(handle).memory_mib * MIB, 0
        )


def no_smi(argv):
    raise AssertionError(f"nvidia-smi must not run when NVML answers: {argv}")


def smi_absent(argv):
    raise FileNotFoundError(2, "No such file or directory", "nvidia-smi")


def smi_recorded(output):
    def run(argv):
        assert list(argv) == SMI_ARGV
        return output

    return run


def inventory_of(*names, driver="535.104.05"):
    nvml = FakeNvml([CARDS[n] for n in names], driver=driver)
    inventory = read_gpus(nvml=nvml, smi=no_smi)
    assert nvml.initialised == nvml.shutdowns == 1
    return inventory


# --- decisions per card (DFC 3.x: hailo8 / hailo8l) -----------------------------------------------

DFC3_DECISIONS = [
    ("A100 80GB", Status.SUPPORTED, "compute capability 8.0 is documented to work"),
    ("A10G", Status.SUPPORTED, "compute capability 8.6 is documented to work"),
    ("L4", Status.REFUSED, "the optimizer hangs on it"),
    ("L40S", Status.UNKNOWN, "compute capability 8.9 is not among those known to work"),
    ("H100", Status.UNKNOWN, "compute capability 9.0 is not among those known to work"),
    ("RTX 4090", Status.UNKNOWN, "compute capability 8.9 is not among those known to work"),
    ("RTX 3090", Status.SUPPORTED, "compute capability 8.6 is documented to work"),
    ("T4", Status.SUPPORTED, "compute capability 7.5 is documented to work"),
    ("V100", Status.UNKNOWN, "compute capability 7.0 is not among those known to work"),
]


@pytest.mark.parametrize("card, status, reason", DFC3_DECISIONS, ids=[d[0] for d in DFC3_DECISIONS])
def test_gate_decides_each_recorded_card_for_dfc3(card, status, reason):
    inventory = inventory_of(card)
    (gpu,) = inventory.gpus
    rec = CARDS[card]
    assert (gpu.index, gpu.uuid, gpu.name, gpu.compute, gpu.memory_mib, gpu.driver) == (
        0, rec.uuid, rec.name, rec.compute, rec.memory_mib, "535.104.05"
    )
    assert inventory.source == "nvml"

    verdict = judge(gpu, get_arch("hailo8l").dfc)
    assert verdict.status is status
    assert reason in verdict.reason

    if status is Status.SUPPORTED:
        choice = choose_devices(inventory, DFC3)
        assert (choice.mode, choice.device_ids, choice.indices, choice.warnings) == ("gpu", (rec.uuid,), (0,), ())
    else:
        assert verdict.advice  # a refused or unknown card always says what to do
        with pytest.raises(ToolchainError) as err:
            choose_devices(inventory, DFC3)
        message = str(err.value)
        assert "No supported GPU for the dfc3 image" in message
        assert f"{rec.name} (compute {gpu.compute_str}) is {status.value}: {reason}" in message
        assert "--allow-gpu" in message and "--cpu" in message


def test_l4_message_reads_like_the_style_guide():
    gpu, verdict = check_card("NVIDIA L4", "8.9", "hailo8l")
    assert verdict.message(gpu, DFC3) == (
        "NVIDIA L4 (compute 8.9) is refused for the dfc3 image (DFC 3.x): the optimizer hangs on it "
        "(field report: endless hang on an L4 while an A100 works). Use an A100/A10/RTX 30xx, or "
        "--cpu (hours), or --allow-gpu to try anyway."
    )


def test_l4_is_only_unknown_for_dfc5_because_the_hang_was_seen_with_dfc3():
    gpu, verdict = check_card("NVIDIA L4", "8.9", "hailo10h")
    assert verdict.status is Status.UNKNOWN
    assert "hangs" not in verdict.reason
    assert check_card("NVIDIA A100-SXM4-80GB", "8.0", "hailo10h")[1].status is Status.SUPPORTED


def test_policy_comes_from_the_image_table_not_from_card_names():
    l4 = inventory_of("L4").gpus[0]
    without_report = dataclasses.replace(DFC3, known_bad=())
    assert judge(l4, without_report).status is Status.UNKNOWN
    with_ada = dataclasses.replace(without_report, supported_compute=DFC3.supported_compute + ((8, 9),))
    assert judge(l4, with_ada).status is Status.SUPPORTED
    stricter_driver = dataclasses.replace(DFC3, min_driver=550)
    a100 = inventory_of("A100 80GB").gpus[0]
    assert judge(a100, stricter_driver).status is Status.REFUSED


def test_driver_below_the_image_minimum_is_refused():
    inventory = inventory_of("A100 80GB", driver="470.82.01")
    verdict = judge(inventory.gpus[0], DFC3)
    assert verdict.status is Status.REFUSED
    assert verdict.reason == "driver 470.82.01 is older than 525, the minimum for this image (CUDA 11.8)"
    assert verdict.advice == "Update the NVIDIA driver to 525 or newer."
    with pytest.raises(ToolchainError, match="driver 470.82.01 is older than 525"):
        choose_devices(inventory, DFC3)


def test_known_bad_and_old_driver_give_both_reasons():
    verdict = judge(inventory_of("L4", driver="470.82.01").gpus[0], DFC3)
    assert verdict.status is Status.REFUSED
    assert "the optimizer hangs on it" in verdict.reason and "driver 470.82.01" in verdict.reason


# --- multi-GPU hosts, flags ---------------------------------------------------------------------------


def test_mixed_host_uses_only_the_a100():
    inventory = inventory_of("L4", "A100 80GB")
    choice = choose_devices(inventory, DFC3)
    assert choice.mode == "gpu"
    assert choice.device_ids == (CARDS["A100 80GB"].uuid,)
    assert choice.indices == (1,)
    assert [v.status for _, v in choice.verdicts] == [Status.REFUSED, Status.SUPPORTED]
    (warning,) = choice.warnings
    assert warning.startswith("Not using GPU 0 NVIDIA L4 (compute 8.9) is refused")
    assert "the optimizer hangs on it" in warning


def test_host_with_several_supported_cards_uses_all_of_them():
    choice = choose_devices(inventory_of("A100 80GB", "T4", "A100 80GB"), DFC3)
    assert choice.indices == (0, 1, 2)


def test_allow_gpu_uses_an_unknown_card_with_a_loud_warning():
    inventory = inventory_of("L4", "H100")
    choice = choose_devices(inventory, DFC3, allow_gpu=True)
    assert choice.device_ids == (CARDS["H100"].uuid,)  # unknown beats known-bad
    (warning,) = choice.warnings
    assert warning.startswith("--allow-gpu: USING GPU 1 NVIDIA H100 80GB HBM3 (compute 9.0) ANYWAY")
    assert "may hang" in warning


def test_allow_gpu_uses_a_refused_card_when_nothing_else_is_there():
    choice = choose_devices(inventory_of("L4"), DFC3, allow_gpu=True)
    assert choice.device_ids == (CARDS["L4"].uuid,)
    assert "ANYWAY although it is refused for the dfc3 image: the optimizer hangs on it" in choice.warnings[0]


def test_allow_gpu_changes_nothing_when_a_supported_card_exists():
    choice = choose_devices(inventory_of("L4", "A100 80GB"), DFC3, allow_gpu=True)
    assert choice.indices == (1,)


def test_cpu_mode_uses_no_device_and_warns_about_hours():
    choice = choose_devices(inventory_of("A100 80GB"), DFC3, cpu=True)
    assert (choice.mode, choice.devices) == ("cpu", ())
    assert "takes hours" in choice.warnings[0] and "2 h 18 min per epoch" in choice.warnings[0]


def test_cpu_and_allow_gpu_contradict():
    with pytest.raises(ToolchainError, match="--cpu and --allow-gpu contradict each other"):
        choose_devices(inventory_of("A100 80GB"), DFC3, cpu=True, allow_gpu=True)


# --- hosts without GPU, without NVML ---------------------------------------------------------------


def test_no_gpu_is_a_clear_state_and_refused_without_cpu():
    nvml = FakeNvml([])
    inventory = read_gpus(nvml=nvml, smi=no_smi)
    assert (inventory.gpus, inventory.source, inventory.note) == ((), "nvml", "NVML answered but lists no GPUs")
    with pytest.raises(ToolchainError) as err:
        choose_devices(inventory, DFC3)
    assert str(err.value).startswith("No NVIDIA GPU found (NVML answered but lists no GPUs).")
    assert "supported GPU" in err.value.fix and "--cpu" in err.value.fix
    assert choose_devices(inventory, DFC3, cpu=True).mode == "cpu"


RECORDED_SMI = (
    # The H100's real answer to SMI_ARGV, plus an L4 line to exercise several rows.
    "0, GPU-e61725ce-c2c3-69e4-7eae-f728cc4dc973, NVIDIA H100 80GB HBM3, 9.0, 81559, 580.159.04\n"
    "1, GPU-1d4c0ffe-aaaa-bbbb-cccc-ddddeeeeffff, NVIDIA L4, 8.9, 23034, 580.159.04\n"
)


def test_nvml_library_missing_falls_back_to_nvidia_smi():
    nvml = FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    inventory = read_gpus(nvml=nvml, smi=smi_recorded(RECORDED_SMI))
    assert inventory.source == "nvidia-smi"
    assert inventory.note == (
        "NVML unavailable (LibraryNotFound: NVML Shared Library Not Found); read with nvidia-smi"
    )
    assert inventory.gpus == (
        Gpu(0, "GPU-e61725ce-c2c3-69e4-7eae-f728cc4dc973", "NVIDIA H100 80GB HBM3", (9, 0), 81559, "580.159.04"),
        Gpu(1, "GPU-1d4c0ffe-aaaa-bbbb-cccc-ddddeeeeffff", "NVIDIA L4", (8, 9), 23034, "580.159.04"),
    )
    assert [judge(g, DFC3).status for g in inventory.gpus] == [Status.UNKNOWN, Status.REFUSED]


def test_nvml_and_nvidia_smi_both_missing_is_no_gpu_with_the_reason():
    nvml = FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    inventory = read_gpus(nvml=nvml, smi=smi_absent)
    assert (inventory.gpus, inventory.source) == ((), "none")
    assert inventory.note == (
        "NVML unavailable (LibraryNotFound: NVML Shared Library Not Found), and nvidia-smi is not "
        "installed: no NVIDIA GPU on this host"
    )
    with pytest.raises(ToolchainError, match="No NVIDIA GPU found .NVML unavailable"):
        choose_devices(inventory, DFC3)


def test_driver_not_loaded_and_nvidia_smi_failing_is_reported():
    def smi_fails(argv):
        raise subprocess.CalledProcessError(
            9, argv, "", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"
        )

    inventory = read_gpus(nvml=FakeNvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED), smi=smi_fails)
    assert inventory.gpus == ()
    assert inventory.note == (
        "NVML unavailable (DriverNotLoaded: Driver Not Loaded), and nvidia-smi failed: NVIDIA-SMI has "
        "failed because it couldn't communicate with the NVIDIA driver."
    )


def test_old_nvml_bytes_answers_are_decoded():
    inventory = read_gpus(nvml=FakeNvml([CARDS["T4"]], bytes_strings=True), smi=no_smi)
    assert (inventory.gpus[0].name, inventory.gpus[0].uuid, inventory.driver) == (
        "Tesla T4", CARDS["T4"].uuid, "535.104.05"
    )


def test_parse_nvidia_smi_rejects_an_unexpected_line_and_tolerates_na_memory():
    assert parse_nvidia_smi("0, GPU-x, Tesla T4, 7.5, [N/A], 535.54\n\n")[0].memory_mib is None
    with pytest.raises(ValueError, match="unexpected nvidia-smi line"):
        parse_nvidia_smi("0, GPU-x, Tesla T4\n")


def test_reading_this_host_never_crashes():
    inventory = read_gpus()
    assert isinstance(inventory, GpuInventory)
    if not inventory.gpus:
        assert inventory.note  # says why there is none


# --- answering without the card --------------------------------------------------------------------


def test_check_card_validates_its_input():
    with pytest.raises(ToolchainError, match=r"Compute capability '9' is not of the form MAJOR.MINOR"):
        check_card("NVIDIA H100", "9", "hailo8l")
    with pytest.raises(ToolchainError, match="Choose one of: hailo8, hailo8l, hailo10h"):
        check_card("NVIDIA A100", "8.0", "hailo9")
    with pytest.raises(ToolchainError, match="The GPU name is empty"):
        check_card(" ", "8.0", "hailo8l")
    gpu, verdict = check_card("NVIDIA A100", 8.0, "hailo8", driver=515)
    assert (gpu.compute, gpu.driver_major, verdict.status) == ((8, 0), 515, Status.REFUSED)


def _gpu_check(*args):
    invoke = Path(sys.executable).with_name("invoke")
    return subprocess.run([str(invoke), "gpu-check", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_invoke_gpu_check_exit_codes():
    l4 = _gpu_check("--name", "NVIDIA L4", "--compute", "8.9", "--arch", "hailo8l")
    assert l4.returncode == 1, l4.stderr
    assert l4.stdout.startswith("refused: NVIDIA L4 (compute 8.9) is refused for the dfc3 image")
    assert "the optimizer hangs on it" in l4.stdout

    a100 = _gpu_check("--name", "NVIDIA A100-SXM4-80GB", "--compute", "8.0", "--arch", "hailo8l", "--driver", "535")
    assert a100.returncode == 0, a100.stderr
    assert a100.stdout.startswith("supported: NVIDIA A100-SXM4-80GB (compute 8.0) is supported")

    h100 = _gpu_check("--name", "NVIDIA H100 80GB HBM3", "--compute", "9.0", "--arch", "hailo10h")
    assert h100.returncode == 1
    assert h100.stdout.startswith("unknown: NVIDIA H100 80GB HBM3 (compute 9.0) is not known to work")

    old_driver = _gpu_check("--name", "NVIDIA A100", "--compute", "8.0", "--driver", "470")
    assert old_driver.returncode == 1 and "driver 470 is older than 525" in old_driver.stdout

    bad = _gpu_check("--name", "NVIDIA L4", "--compute", "eight")
    assert bad.returncode == 2
    assert "error: Compute capability 'eight' is not of the form MAJOR.MINOR." in bad.stderr


def test_check_card_refuses_a_driver_that_is_not_a_version():
    with pytest.raises(ToolchainError, match="Driver version 'banana' is not a version number"):
        check_card("NVIDIA A100-SXM4-80GB", "8.0", "hailo8l", driver="banana")
    assert check_card("NVIDIA A100-SXM4-80GB", "8.0", "hailo8l", driver="535.104.05")[1].supported
