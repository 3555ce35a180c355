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
    Basis,
    Gpu,
    GpuInventory,
    Status,
    check_card,
    choose_devices,
    judge,
    parse_nvidia_smi,
    read_gpus,
)
from pipeline.tables import IMAGES

REPO = Path(__file__).resolve().parents[1]
CUDA11 = IMAGES["dfc-cuda11"]  # TensorFlow 2.12: DFC 3.25-3.31, 5.0
CUDA12 = IMAGES["dfc-cuda12"]  # TensorFlow 2.18/2.19: DFC 3.33, 5.1-5.4
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
    # Names as NVML reports them; UUIDs made up.
    "H200": RecordedCard("NVIDIA H200", (9, 0), 143771, "GPU-4200a200-1111-2222-3333-420042004200"),
    "B200": RecordedCard("NVIDIA B200", (10, 0), 183359, "GPU-b200b200-4444-5555-6666-b200b200b200"),
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


# --- decisions per card and image ----------------------------------------------------------------

_FIELD = "field report: the optimizer hung endlessly on an L4 (DFC 3.32, seed log) while an A100 works; cause unknown"
_JIT = ("JIT: TensorFlow 2.12 has no code for compute 9.0, only PTX (compute_80); the first start JIT-compiles its "
        "kernels: ~251 MB of kernels, ~12 CPU-minutes (800 s measured on an H100), once")
_NOT_LISTED = " (not in Hailo's documented Pascal/Turing/Ampere list; the code is there)"

# (card, image, status, basis, reason prefix): what each card runs in each image's TensorFlow.
DECISIONS = [
    ("A100 80GB", "dfc-cuda11", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.12 ships sm_80 code, which runs on compute 8.0"),
    ("A10G", "dfc-cuda11", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.12 ships sm_80 code, which runs on compute 8.6"),
    ("RTX 3090", "dfc-cuda11", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.12 ships sm_80 code, which runs on compute 8.6"),
    ("T4", "dfc-cuda11", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.12 ships sm_75 code, which runs on compute 7.5"),
    ("V100", "dfc-cuda11", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.12 ships sm_70 code, which runs on compute 7.0" + _NOT_LISTED),
    ("L4", "dfc-cuda11", Status.REFUSED, Basis.FIELD_REPORT, _FIELD),
    ("L40S", "dfc-cuda11", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.12 ships sm_80 code, which runs on compute 8.9" + _NOT_LISTED),
    ("RTX 4090", "dfc-cuda11", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.12 ships sm_80 code, which runs on compute 8.9" + _NOT_LISTED),
    ("H100", "dfc-cuda11", Status.SUPPORTED, Basis.JIT, _JIT),
    ("H200", "dfc-cuda11", Status.SUPPORTED, Basis.JIT, _JIT),
    ("B200", "dfc-cuda11", Status.REFUSED, Basis.UNSUPPORTED,
     "unsupported: TensorFlow 2.12 has no code that runs on compute 10.0: cuDNN 8.9 has no PTX for most of its kernels"),
    ("A100 80GB", "dfc-cuda12", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.18/2.19 ships sm_80 code, which runs on compute 8.0"),
    ("A10G", "dfc-cuda12", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.18/2.19 ships sm_80 code, which runs on compute 8.6"),
    ("RTX 3090", "dfc-cuda12", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.18/2.19 ships sm_80 code, which runs on compute 8.6"),
    ("T4", "dfc-cuda12", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.18/2.19 ships sm_70 code, which runs on compute 7.5"),
    ("V100", "dfc-cuda12", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.18/2.19 ships sm_70 code, which runs on compute 7.0" + _NOT_LISTED),
    ("L4", "dfc-cuda12", Status.REFUSED, Basis.FIELD_REPORT, _FIELD),
    ("L40S", "dfc-cuda12", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.18/2.19 ships sm_89 code, which runs on compute 8.9" + _NOT_LISTED),
    ("RTX 4090", "dfc-cuda12", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.18/2.19 ships sm_89 code, which runs on compute 8.9" + _NOT_LISTED),
    ("H100", "dfc-cuda12", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.18/2.19 ships sm_90 code, which runs on compute 9.0" + _NOT_LISTED),
    ("H200", "dfc-cuda12", Status.SUPPORTED, Basis.NATIVE, "native: TensorFlow 2.18/2.19 ships sm_90 code, which runs on compute 9.0" + _NOT_LISTED),
    ("B200", "dfc-cuda12", Status.REFUSED, Basis.UNSUPPORTED,
     "unsupported: TensorFlow 2.18/2.19 has no code that runs on compute 10.0: its generated kernels carry PTX for "
     "sm_90a only"),
]


@pytest.mark.parametrize("card, image, status, basis, reason", DECISIONS,
                         ids=[f"{d[0]}-{d[1]}" for d in DECISIONS])
def test_gate_decides_each_recorded_card_per_image_with_its_reason(card, image, status, basis, reason):
    inventory = inventory_of(card)
    (gpu,) = inventory.gpus
    rec = CARDS[card]
    assert (gpu.index, gpu.uuid, gpu.name, gpu.compute, gpu.memory_mib, gpu.driver) == (
        0, rec.uuid, rec.name, rec.compute, rec.memory_mib, "535.104.05"
    )
    assert inventory.source == "nvml"

    verdict = judge(gpu, IMAGES[image])
    assert (verdict.status, verdict.basis) == (status, basis)
    assert verdict.reason.startswith(reason)

    if status is Status.SUPPORTED:
        choice = choose_devices(inventory, IMAGES[image])
        assert (choice.mode, choice.device_ids, choice.indices) == ("gpu", (rec.uuid,), (0,))
        # the JIT warm-up is stated before the build starts; native cards get no warning
        assert len(choice.warnings) == (basis is Basis.JIT)
    else:
        assert verdict.advice  # a refused card always says what to do
        with pytest.raises(ToolchainError) as err:
            choose_devices(inventory, IMAGES[image])
        message = str(err.value)
        assert f"No supported GPU for the {image} image" in message
        assert f"{rec.name} (compute {gpu.compute_str}) is refused: {reason}" in message
        assert "--cpu" in message


def test_h100_with_the_tf212_image_is_allowed_with_the_warm_up_stated_up_front():
    choice = choose_devices(inventory_of("H100"), CUDA11)
    (warning,) = choice.warnings
    assert warning == (
        "GPU 0 NVIDIA H100 80GB HBM3 (compute 9.0) needs a one-time JIT warm-up in the dfc-cuda11 image: "
        "~251 MB of kernels, ~12 CPU-minutes (800 s measured on an H100), once. The GPU hang probe allows up "
        "to 30 min while the GPU kernel cache grows; later runs reuse the compiled kernels."
    )
    verdict = choice.to_json()["verdicts"][0]
    assert (verdict["basis"], verdict["jit_ceiling_s"]) == ("JIT", 1800)
    assert "The dfc-cuda12 image (another DFC release) runs it natively." in verdict["advice"]


def test_a_native_card_is_preferred_to_a_jit_card_on_the_same_host():
    choice = choose_devices(inventory_of("H100", "A100 80GB"), CUDA11)
    assert choice.indices == (1,)
    assert choice.warnings[0].startswith("Not using GPU 0 NVIDIA H100 80GB HBM3 (compute 9.0) is supported")


def test_l4_message_reads_like_the_style_guide():
    gpu, verdict = check_card("NVIDIA L4", "8.9", "3.31.0")
    assert verdict.message(gpu, CUDA11) == (
        "NVIDIA L4 (compute 8.9) is refused for the dfc-cuda11 image (TensorFlow 2.12, CUDA 11.8): field report: "
        "the optimizer hung endlessly on an L4 (DFC 3.32, seed log) while an A100 works; cause unknown (an L4 runs "
        "the same native sm_80 code as an A100, so not JIT). Use an A100/A10/RTX 30xx, or --cpu (hours), or "
        "--allow-gpu to try anyway."
    )


def test_check_card_judges_for_the_image_of_the_dfc_version():
    assert check_card("NVIDIA H100 80GB HBM3", "9.0", "3.31.0")[1].basis is Basis.JIT
    assert check_card("NVIDIA H100 80GB HBM3", "9.0", "3.33.1")[1].basis is Basis.NATIVE
    assert check_card("NVIDIA H100 80GB HBM3", "9.0", "5.0.0")[1].basis is Basis.JIT
    assert check_card("NVIDIA H100 80GB HBM3", "9.0", "5.3.0")[1].basis is Basis.NATIVE
    with pytest.raises(ToolchainError, match="DFC 3.32 needs is unknown"):
        check_card("NVIDIA A100", "8.0", "3.32.0")


def test_policy_comes_from_the_image_table_not_from_card_names():
    l4 = inventory_of("L4").gpus[0]
    without_report = dataclasses.replace(CUDA11, known_bad=())
    assert judge(l4, without_report).basis is Basis.NATIVE
    no_ptx = dataclasses.replace(CUDA11, gpu_code=dataclasses.replace(CUDA11.gpu_code, no_jit_from=(9, 0)))
    assert judge(inventory_of("H100").gpus[0], no_ptx).basis is Basis.UNSUPPORTED
    stricter_driver = dataclasses.replace(CUDA11, min_driver=550)
    a100 = inventory_of("A100 80GB").gpus[0]
    assert judge(a100, stricter_driver).status is Status.REFUSED


def test_a_card_older_than_every_cubin_and_the_ptx_is_unsupported():
    maxwell = Gpu(-1, "", "NVIDIA GeForce GTX 980", (5, 2))
    assert judge(maxwell, CUDA11).basis is Basis.NATIVE  # sm_50 runs on 5.2
    verdict = judge(maxwell, CUDA12)
    assert verdict.basis is Basis.UNSUPPORTED
    assert verdict.reason.endswith("its oldest code is sm_60 and its PTX (compute_90) needs a newer card")


def test_driver_below_the_image_minimum_is_refused():
    inventory = inventory_of("A100 80GB", driver="470.82.01")
    verdict = judge(inventory.gpus[0], CUDA11)
    assert (verdict.status, verdict.basis) == (Status.REFUSED, Basis.DRIVER)
    assert verdict.reason == "driver 470.82.01 is older than 525, the minimum for this image (CUDA 11.8)"
    assert verdict.advice == "Update the NVIDIA driver to 525 or newer."
    with pytest.raises(ToolchainError, match="driver 470.82.01 is older than 525"):
        choose_devices(inventory, CUDA11)


def test_known_bad_and_old_driver_give_both_reasons():
    verdict = judge(inventory_of("L4", driver="470.82.01").gpus[0], CUDA11)
    assert verdict.status is Status.REFUSED
    assert "field report: the optimizer hung endlessly" in verdict.reason and "driver 470.82.01" in verdict.reason


# --- multi-GPU hosts, flags ---------------------------------------------------------------------------


def test_mixed_host_uses_only_the_a100():
    inventory = inventory_of("L4", "A100 80GB")
    choice = choose_devices(inventory, CUDA11)
    assert choice.mode == "gpu"
    assert choice.device_ids == (CARDS["A100 80GB"].uuid,)
    assert choice.indices == (1,)
    assert [v.status for _, v in choice.verdicts] == [Status.REFUSED, Status.SUPPORTED]
    (warning,) = choice.warnings
    assert warning.startswith("Not using GPU 0 NVIDIA L4 (compute 8.9) is refused")
    assert "field report: the optimizer hung endlessly" in warning


def test_host_with_several_supported_cards_uses_all_of_them():
    choice = choose_devices(inventory_of("A100 80GB", "T4", "A100 80GB"), CUDA11)
    assert choice.indices == (0, 1, 2)


def test_allow_gpu_uses_a_reported_card_but_not_one_without_code():
    inventory = inventory_of("B200", "L4")
    with pytest.raises(ToolchainError, match="No supported GPU for the dfc-cuda11 image"):
        choose_devices(inventory, CUDA11)
    choice = choose_devices(inventory, CUDA11, allow_gpu=True)
    assert choice.device_ids == (CARDS["L4"].uuid,)  # the B200 has nothing it could run
    (warning,) = choice.warnings
    assert warning.startswith("--allow-gpu: USING GPU 1 NVIDIA L4 (compute 8.9) ANYWAY")
    assert "may hang" in warning


def test_allow_gpu_uses_a_refused_card_when_nothing_else_is_there():
    choice = choose_devices(inventory_of("L4"), CUDA11, allow_gpu=True)
    assert choice.device_ids == (CARDS["L4"].uuid,)
    assert "ANYWAY although it is refused for the dfc-cuda11 image: field report: the optimizer hung" in choice.warnings[0]


def test_allow_gpu_changes_nothing_when_a_supported_card_exists():
    choice = choose_devices(inventory_of("L4", "A100 80GB"), CUDA11, allow_gpu=True)
    assert choice.indices == (1,)


def test_cpu_mode_uses_no_device_and_warns_about_hours():
    choice = choose_devices(inventory_of("A100 80GB"), CUDA11, cpu=True)
    assert (choice.mode, choice.devices) == ("cpu", ())
    assert "takes hours" in choice.warnings[0] and "2 h 18 min per epoch" in choice.warnings[0]


def test_cpu_and_allow_gpu_contradict():
    with pytest.raises(ToolchainError, match="--cpu and --allow-gpu contradict each other"):
        choose_devices(inventory_of("A100 80GB"), CUDA11, cpu=True, allow_gpu=True)


# --- hosts without GPU, without NVML ---------------------------------------------------------------


def test_no_gpu_is_a_clear_state_and_refused_without_cpu():
    nvml = FakeNvml([])
    inventory = read_gpus(nvml=nvml, smi=no_smi)
    assert (inventory.gpus, inventory.source, inventory.note) == ((), "nvml", "NVML answered but lists no GPUs")
    with pytest.raises(ToolchainError) as err:
        choose_devices(inventory, CUDA11)
    assert str(err.value).startswith("No NVIDIA GPU found (NVML answered but lists no GPUs).")
    assert "a GPU the dfc-cuda11 image runs natively" in err.value.fix and "--cpu" in err.value.fix
    assert choose_devices(inventory, CUDA11, cpu=True).mode == "cpu"


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
    assert [judge(g, CUDA11).basis for g in inventory.gpus] == [Basis.JIT, Basis.FIELD_REPORT]


def test_nvml_and_nvidia_smi_both_missing_is_no_gpu_with_the_reason():
    nvml = FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    inventory = read_gpus(nvml=nvml, smi=smi_absent)
    assert (inventory.gpus, inventory.source) == ((), "none")
    assert inventory.note == (
        "NVML unavailable (LibraryNotFound: NVML Shared Library Not Found), and nvidia-smi is not "
        "installed: no NVIDIA GPU on this host"
    )
    with pytest.raises(ToolchainError, match="No NVIDIA GPU found .NVML unavailable"):
        choose_devices(inventory, CUDA11)


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
        check_card("NVIDIA H100", "9", "3.33.1")
    with pytest.raises(ToolchainError, match="DFC version 'hailo9' is not a version number"):
        check_card("NVIDIA A100", "8.0", "hailo9")
    with pytest.raises(ToolchainError, match="The GPU name is empty"):
        check_card(" ", "8.0", "3.33.1")
    gpu, verdict = check_card("NVIDIA A100", 8.0, "3.31.0", driver=515)
    assert (gpu.compute, gpu.driver_major, verdict.status) == ((8, 0), 515, Status.REFUSED)


def _gpu_check(*args, cwd=REPO):
    invoke = Path(sys.executable).with_name("invoke")
    return subprocess.run([str(invoke), "--search-root", str(REPO), "gpu-check", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_invoke_gpu_check_says_native_jit_unsupported_or_field_report():
    h100_tf212 = _gpu_check("--name", "NVIDIA H100 80GB HBM3", "--compute", "9.0", "--dfc-version", "3.31.0")
    assert h100_tf212.returncode == 0, h100_tf212.stderr
    assert h100_tf212.stdout.startswith("supported: NVIDIA H100 80GB HBM3 (compute 9.0) is supported for the "
                                        "dfc-cuda11 image (TensorFlow 2.12, CUDA 11.8): JIT: ")
    assert "~251 MB of kernels, ~12 CPU-minutes" in h100_tf212.stdout
    assert h100_tf212.stdout.rstrip().endswith("(DFC 3.31.0)")

    h100_tf218 = _gpu_check("--name", "NVIDIA H100 80GB HBM3", "--compute", "9.0", "--dfc-version", "3.33.1")
    assert h100_tf218.returncode == 0 and "dfc-cuda12 image (TensorFlow 2.18/2.19, CUDA 12.5.1): native: " in h100_tf218.stdout

    b200 = _gpu_check("--name", "NVIDIA B200", "--compute", "10.0", "--dfc-version", "5.3.0")
    assert b200.returncode == 1 and ": unsupported: TensorFlow 2.18/2.19 has no code" in b200.stdout

    l4 = _gpu_check("--name", "NVIDIA L4", "--compute", "8.9", "--dfc-version", "3.33.1")
    assert l4.returncode == 1, l4.stderr
    assert l4.stdout.startswith("refused: NVIDIA L4 (compute 8.9) is refused for the dfc-cuda12 image")
    assert ": field report: " in l4.stdout and "cause unknown" in l4.stdout

    old_driver = _gpu_check("--name", "NVIDIA A100", "--compute", "8.0", "--driver", "470", "--dfc-version", "3.33.1")
    assert old_driver.returncode == 1 and "driver 470 is older than 525" in old_driver.stdout

    bad = _gpu_check("--name", "NVIDIA L4", "--compute", "eight", "--dfc-version", "3.33.1")
    assert bad.returncode == 2
    assert "error: Compute capability 'eight' is not of the form MAJOR.MINOR." in bad.stderr

    unknown = _gpu_check("--name", "NVIDIA A100", "--compute", "8.0", "--dfc-version", "3.32.0")
    assert unknown.returncode == 2 and "DFC 3.32 needs is unknown" in unknown.stderr


def test_invoke_gpu_check_defaults_to_the_wheel_in_vendor(tmp_path):
    (tmp_path / "hailo_dataflow_compiler-3.33.1-py3-none-linux_x86_64.whl").write_bytes(b"w")
    (tmp_path / "hailo_dataflow_compiler-5.0.0-py3-none-linux_x86_64.whl").write_bytes(b"w")
    h100 = ("--name", "NVIDIA H100 80GB HBM3", "--compute", "9.0")
    hailo8l = _gpu_check(*h100, "--vendor", str(tmp_path))  # --arch hailo8l: the 3.x wheel
    assert "dfc-cuda12" in hailo8l.stdout and ": native: " in hailo8l.stdout and "(DFC 3.33.1)" in hailo8l.stdout
    hailo10h = _gpu_check(*h100, "--vendor", str(tmp_path), "--arch", "hailo10h")  # 5.0: TensorFlow 2.12
    assert "dfc-cuda11" in hailo10h.stdout and ": JIT: " in hailo10h.stdout and "(DFC 5.0.0)" in hailo10h.stdout
    missing = _gpu_check(*h100, "--vendor", str(tmp_path / "none"))
    assert missing.returncode == 2 and "No DFC 3.x wheel in" in missing.stderr


def test_check_card_refuses_a_driver_that_is_not_a_version():
    with pytest.raises(ToolchainError, match="Driver version 'banana' is not a version number"):
        check_card("NVIDIA A100-SXM4-80GB", "8.0", "3.33.1", driver="banana")
    assert check_card("NVIDIA A100-SXM4-80GB", "8.0", "3.33.1", driver="535.104.05")[1].supported
