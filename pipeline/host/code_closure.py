"""Which of our source files a stage actually runs: the import closure of its entry modules.

Two places need it: the image build (only the modules stage containers run go into the image, so
editing a host-only module such as pipeline/report code does not rebuild images and rerun hours
of DFC stages) and the native-mode stage keys (an edit of pipeline/export/export.py reruns the export,
an edit of pipeline/host/build.py reruns nothing). Files are found under a source root by name and read
with `ast`; nothing is imported (whisper_hailo would import torch).
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path
from typing import Optional, Sequence

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding pipeline/ and calib/
PACKAGES = ("pipeline", "calib")

# What stage containers run (`python -m <module>`): export and calibration in the export image,
# parse/optimize/compile/emulate in the DFC images. Both images carry the closure of all of them.
STAGE_ENTRY_MODULES = (
    "pipeline.export.export",
    "calib.__main__",
    "pipeline.dfc.parse",
    "pipeline.dfc.optimize",
    "pipeline.dfc.compile",
    "pipeline.dfc.emulate",  # the WER gate's emulator rows in Docker mode
)


def module_file(name: str, root: Path = SOURCE_ROOT) -> Optional[Path]:
    """`root/a/b.py` or `root/a/b/__init__.py` for module `a.b`; None when neither exists."""
    base = Path(root).joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path, module: str) -> list[str]:
    """Module names `path` (the source of `module`) imports, relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]  # `from pkg import module`
    return names


def module_closure(
    entry_modules: Sequence[str], root: Path = SOURCE_ROOT, packages: Sequence[str] = PACKAGES
) -> dict[str, Path]:
    """{module name: source file} for the entry modules, everything of `packages` they import,
    and the `__init__.py` of every package on the way."""
    seen: dict[str, Path] = {}
    todo = list(entry_modules)
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in packages:
            continue
        path = module_file(name, root)
        if path is None:  # `from pkg import function`: not a module
            continue
        seen[name] = path
        parents = name.split(".")[:-1]
        todo += [".".join(parents[: i + 1]) for i in range(len(parents))]
        todo += _imported_names(path, name)
    return seen


def code_fingerprint(
    entry_modules: Sequence[str], root: Path = SOURCE_ROOT, packages: Sequence[str] = PACKAGES
) -> str:
    """sha256 over the source of the closure of `entry_modules`."""
    closure = module_closure(entry_modules, root, packages)
    digest = hashlib.sha256()
    for name in sorted(closure):
        digest.update(name.encode() + b"\0" + closure[name].read_bytes() + b"\0")
    return digest.hexdigest()
