"""The transcriber a bundle carries, so that a copy of the bundle folder alone transcribes on the
host that runs it (a Raspberry Pi with a Hailo-8L): its source, its packages, how to install them.

    bundle/
      runtime/pipeline/..., runtime/calib/...  the import closure of pipeline.host.transcriber,
                                               found by reading files (code_closure), never hand-listed
      requirements.txt                         its third-party packages: pyproject.toml's `transcribe` extra
      install.sh                               a venv (bundle/.venv) with those and HailoRT's wheel
      wheels/hailort-*.whl                     HailoRT's Python package, when the build's vendor folder has it

    cd bundle && sh install.sh && PYTHONPATH=runtime .venv/bin/python -m pipeline.host.transcriber --model . a.wav

HailoRT's wheel is licensed software from Hailo's Developer Zone, like the DFC wheel: it is never
downloaded here, only copied from vendor/ when the user put it there.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Mapping, Optional

from pipeline.errors import ToolchainError
from pipeline.files import write_text_atomic
from pipeline.host.code_closure import SOURCE_ROOT, module_closure

RUNTIME_DIR = "runtime"
RUNTIME_ENTRY_MODULES = ("pipeline.host.transcriber",)
REQUIREMENTS_NAME = "requirements.txt"
INSTALL_NAME = "install.sh"
WHEELS_DIR = "wheels"
HAILORT_WHEEL_GLOB = "hailort-*.whl"
# Where the requirement versions come from: the extra `pip install '.[transcribe]'` installs, and the
# exact versions the export image pins (the calibration there runs the same mel and audio code).
PYPROJECT = SOURCE_ROOT / "pyproject.toml"
EXPORT_IMAGE_CONSTRAINTS = SOURCE_ROOT / "docker" / "constraints-export.txt"
REQUIREMENTS_EXTRA = "transcribe"
# hailort-4.21.0-cp311-cp311-linux_aarch64.whl: distribution, version, optional build, python, abi, platform
_HAILORT_WHEEL_NAME = re.compile(r"^hailort-(?P<version>[^-]+)(-\d[^-]*)?-(?P<python>[^-]+)-[^-]+-(?P<platform>[^-]+)\.whl$")


def runtime_sources(root: Path = SOURCE_ROOT) -> dict[str, str]:
    """{bundle path: source file} of the carried transcriber, e.g.
    {"runtime/pipeline/host/transcriber.py": "/repo/pipeline/host/transcriber.py", ...}."""
    closure = module_closure(RUNTIME_ENTRY_MODULES, root)
    return {f"{RUNTIME_DIR}/{path.relative_to(root).as_posix()}": str(path) for path in closure.values()}


def extra_requirements(pyproject: Path = PYPROJECT, extra: str = REQUIREMENTS_EXTRA) -> list[str]:
    """The requirement strings of one optional-dependencies extra, e.g. ["numpy>=1.24", ...].

    Read as text (the host runs Python 3.10, which has no tomllib); our pyproject writes each
    extra as `name = [` followed by one quoted requirement a line."""
    text = Path(pyproject).read_text()
    block = re.search(rf"^{re.escape(extra)} = \[\n(.*?)^\]", text, re.M | re.S)
    requirements = re.findall(r'^\s*"([^"]+)"', block.group(1), re.M) if block else []
    if not requirements:
        raise ToolchainError(f"{pyproject} has no `{extra}` extra in [project.optional-dependencies] "
                             "(the packages the bundle's transcriber needs).",
                             f"Restore the `{extra} = [...]` list, one quoted requirement a line.")
    return requirements


def pinned_versions(constraints: Path = EXPORT_IMAGE_CONSTRAINTS) -> dict[str, str]:
    """{distribution (lower case): version} of a pip constraints file's `name==version` lines."""
    pins = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", Path(constraints).read_text(), re.M)
    return {name.lower(): version for name, version in pins}


def distribution_name(requirement: str) -> str:
    """'numpy>=1.24' -> 'numpy'."""
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]


def render_requirements(requirements: list[str], pins: Mapping[str, str]) -> str:
    """requirements.txt: each requirement with the version the export image pins beside it."""
    lines = [
        "# Packages of the transcriber under runtime/ (python -m pipeline.host.transcriber).",
        f"# The requirements are the `{REQUIREMENTS_EXTRA}` extra of the toolchain's pyproject.toml; the",
        f"# version after `pinned` is the one its export image pins ({EXPORT_IMAGE_CONSTRAINTS.relative_to(SOURCE_ROOT)}),",
        "# where the same mel and audio code runs. HailoRT's Python package (hailort, module hailo_platform)",
        "# is not on PyPI: install.sh installs it from wheels/ (see README.md).",
    ]
    for requirement in requirements:
        name = distribution_name(requirement)
        note = f"pinned {pins[name.lower()]}" if name.lower() in pins else "not in the export image"
        if name == "onnxruntime":
            note += "; --backend onnx (the CPU reference) and a decoder on the CPU: --backend hailort runs without it"
        lines.append(f"{requirement}  # {note}")
    return "\n".join(lines) + "\n"


def find_hailort_wheel(vendor_dir: Path) -> Optional[Path]:
    """The one HailoRT wheel (`hailort-*.whl`) in the build's vendor folder, or None."""
    wheels = sorted(Path(vendor_dir).glob(HAILORT_WHEEL_GLOB)) if Path(vendor_dir).is_dir() else []
    if len(wheels) > 1:
        raise ToolchainError(f"Several HailoRT wheels in {vendor_dir}/: {', '.join(w.name for w in wheels)}.",
                             "Keep the one for the host that runs the bundle (a Raspberry Pi 5: linux_aarch64 and "
                             "its Python, e.g. cp311) and move the others out.")
    if wheels and not _HAILORT_WHEEL_NAME.match(wheels[0].name):
        raise ToolchainError(f"{wheels[0]} is not named like a wheel (hailort-VERSION-PYTHON-ABI-PLATFORM.whl).",
                             "Keep the file name as downloaded from Hailo's Developer Zone.")
    return wheels[0] if wheels else None


def describe_hailort_wheel(name: str) -> str:
    """'hailort-4.21.0-cp311-cp311-linux_aarch64.whl' -> 'HailoRT 4.21.0 for cp311 on linux_aarch64'."""
    match = _HAILORT_WHEEL_NAME.match(name)
    return f"HailoRT {match['version']} for {match['python']} on {match['platform']}" if match else name


INSTALL_SCRIPT = """#!/bin/sh
# Installs what the transcriber under runtime/ needs into a venv: sh install.sh  (VENV=dir to choose where).
# Then: PYTHONPATH=runtime .venv/bin/python -m pipeline.host.transcriber --model . --backend hailort audio.wav
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
venv="${VENV:-$here/.venv}"
# --system-site-packages: a HailoRT Python package installed for the system Python stays importable.
"${PYTHON:-python3}" -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install -r "$here/requirements.txt"
set -- "$here"/wheels/hailort-*.whl
if [ -e "$1" ]; then
    "$venv/bin/python" -m pip install "$@"
fi
if "$venv/bin/python" -c "import hailo_platform" 2>/dev/null; then
    echo "HailoRT's Python package (hailo_platform) is importable: --backend hailort can run."
else
    echo "HailoRT's Python package (hailo_platform) is not importable: only --backend onnx runs." >&2
    echo "Put hailort-VERSION-cpXY-cpXY-linux_aarch64.whl from Hailo's Developer Zone into $here/wheels/" >&2
    echo "(the version of the HailoRT driver on this machine) and run this script again; see README.md." >&2
fi
"""


def runtime_names(hailort_wheel: Optional[Path]) -> list[str]:
    """Bundle paths of everything the carried transcriber brings."""
    wheel = [f"{WHEELS_DIR}/{Path(hailort_wheel).name}"] if hailort_wheel else []
    return [*runtime_sources(), REQUIREMENTS_NAME, INSTALL_NAME, *wheel]


def write_runtime(bundle_dir: Path, hailort_wheel: Optional[Path]) -> None:
    """Copy the transcriber's source (and HailoRT's wheel) into `bundle_dir`; write requirements.txt, install.sh."""
    for target, source in runtime_sources().items():
        (bundle_dir / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, bundle_dir / target)
    if hailort_wheel:
        (bundle_dir / WHEELS_DIR).mkdir(exist_ok=True)
        shutil.copyfile(hailort_wheel, bundle_dir / WHEELS_DIR / Path(hailort_wheel).name)
    write_text_atomic(bundle_dir / REQUIREMENTS_NAME, render_requirements(extra_requirements(), pinned_versions()))
    write_text_atomic(bundle_dir / INSTALL_NAME, INSTALL_SCRIPT)
    (bundle_dir / INSTALL_NAME).chmod(0o755)


def runtime_config(hailort_wheel: Optional[Path]) -> dict:
    """config.json's `runtime` entry: where the carried transcriber is and which HailoRT wheel came along."""
    return {"code": f"{RUNTIME_DIR}/", "entry": f"PYTHONPATH={RUNTIME_DIR} python -m {RUNTIME_ENTRY_MODULES[0]}",
            "requirements": REQUIREMENTS_NAME, "install": INSTALL_NAME,
            "packages": [distribution_name(r) for r in extra_requirements()],
            "hailort_wheel": f"{WHEELS_DIR}/{Path(hailort_wheel).name}" if hailort_wheel else None}


def render_runtime_readme(config: Mapping) -> str:
    """The README section on installing and running the carried transcriber."""
    runtime = config["runtime"]
    wheel = runtime["hailort_wheel"]
    if wheel:
        hailort = (f"HailoRT's Python package came with this bundle: `{wheel}` "
                   f"({describe_hailort_wheel(Path(wheel).name)}); `install.sh` installs it. Its version must "
                   "match the HailoRT driver and library installed on the machine (`hailortcli --version`).")
    else:
        hailort = ("HailoRT's Python package is **not** in this bundle (the build's vendor folder had no "
                   "`hailort-*.whl`; it is licensed software, never downloaded by the toolchain). From Hailo's "
                   "Developer Zone (Software Downloads, HailoRT), fetch the Python package wheel "
                   "`hailort-VERSION-cpXY-cpXY-linux_aarch64.whl` for a Raspberry Pi (`linux_x86_64` for a PC), "
                   "with VERSION the HailoRT driver's on that machine (`hailortcli --version`) and cpXY its "
                   "Python (`python3 --version`: 3.11 -> cp311). Put it in `wheels/` here and run "
                   "`sh install.sh` (again), or put it in the build's vendor folder (`vendor/`, `--vendor`) and "
                   "rebuild: the bundle then carries it. A `hailo_platform` already installed for the system "
                   "Python is used as it is (the venv sees the system's packages).")
    return f"""## Running the transcriber carried here

`runtime/` holds the toolchain's host transcriber (`pipeline/host/transcriber.py`) and every module
of ours it imports; no torch, no checkout of the toolchain needed. On the machine with the Hailo device:

```sh
sh install.sh      # .venv/ here: {', '.join(runtime['packages'])} (requirements.txt) + HailoRT's wheel from wheels/
PYTHONPATH=runtime .venv/bin/python -m pipeline.host.transcriber --model . --backend hailort audio.wav
PYTHONPATH=runtime .venv/bin/python -m pipeline.host.transcriber --model . --backend onnx audio.wav  # no device: CPU
```

{hailort}

What the toolchain's tests check (tests/test_bundle_runtime.py, on x86_64 with a small model, not
on this bundle): a copy of a bundle folder, with the toolchain itself not importable, transcribes
through `runtime/` to the same text as the toolchain's own transcriber (`--backend onnx`), importing
no torch. **Not checked anywhere by the toolchain:** `install.sh` on a Raspberry Pi, the aarch64
packages, and `--backend hailort` (no Hailo device and no HailoRT where it is built and tested).
"""

