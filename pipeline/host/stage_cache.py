"""The stage cache: which stages of a build are up to date, so a rerun only does what changed.

Every stage's outputs are keyed by a hash of everything that determines them: the sha256 of each
input file, the parameters, texts such as the model script, the tool that runs it (image id or
DFC version) and the keys of the stages it depends on. After a stage succeeds, a record
`<build>/.stages/<stage>.json` keeps that key and the sha256 of every output. A stage is up to
date when its key matches the record AND every recorded output still exists with its recorded
hash; otherwise it reruns (and, because downstream keys include upstream keys, so does what
depends on it).

Records are written atomically after the outputs, so a run killed mid-stage leaves no record and
the stage reruns next time. `--force STAGE` deletes the records of that stage and everything
downstream of it (`DOWNSTREAM`).

Hashing a 1.3 GB calibration set on every no-op rebuild would take seconds, so file hashes are
remembered by (size, mtime_ns, inode) in `.stages/file_hashes.json`, as git's index does; a file
rewritten in place with the same size and timestamp would fool it, which no stage does (every
artifact is renamed into place, giving a new inode).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from pipeline.errors import ToolchainError
from pipeline.files import sha256_file, write_json_atomic

STAGES_DIR = ".stages"
RECORD_FORMAT = 1

# Build order. Each stage's direct upstream stages: a forced stage reruns with all of its
# downstream stages; an upstream key change reaches downstream through the keys.
STAGE_ORDER: tuple[str, ...] = (
    "export",
    "encoder-calib",
    "decoder-calib",
    "encoder-parse",
    "decoder-parse",
    "encoder-optimize",
    "decoder-optimize",
    "encoder-compile",
    "decoder-compile",
    "bundle",
    "report",
)
UPSTREAM: Mapping[str, tuple[str, ...]] = {
    "export": (),
    # The encoder set only needs audio, but the table ties it to export so `--force export`
    # rebuilds every data file from scratch.
    "encoder-calib": ("export",),
    "decoder-calib": ("export", "encoder-calib"),
    "encoder-parse": ("export",),
    "decoder-parse": ("export",),
    "encoder-optimize": ("encoder-parse", "encoder-calib"),
    "decoder-optimize": ("decoder-parse", "decoder-calib"),
    "encoder-compile": ("encoder-optimize",),
    "decoder-compile": ("decoder-optimize",),
    "bundle": ("export", "encoder-compile", "decoder-compile"),
    "report": ("bundle",),
}
# Names `--force` accepts besides the stage names: each means every stage in its group.
FORCE_GROUPS: Mapping[str, tuple[str, ...]] = {
    "all": STAGE_ORDER,
    "calib": ("encoder-calib", "decoder-calib"),
    "parse": ("encoder-parse", "decoder-parse"),
    "optimize": ("encoder-optimize", "decoder-optimize"),
    "compile": ("encoder-compile", "decoder-compile"),
    "encoder": ("encoder-calib", "encoder-parse", "encoder-optimize", "encoder-compile"),
    "decoder": ("decoder-calib", "decoder-parse", "decoder-optimize", "decoder-compile"),
}


def downstream_of(stages: Iterable[str]) -> frozenset[str]:
    """The given stages plus every stage that depends on them, directly or not."""
    result = set(stages)
    for stage in STAGE_ORDER:  # build order: upstream stages are settled before their dependents
        if any(up in result for up in UPSTREAM[stage]):
            result.add(stage)
    return frozenset(result)


def resolve_force(names: Iterable[str]) -> frozenset[str]:
    """`--force` values (stage names, groups, comma-separated lists) -> the stages to rerun."""
    chosen: set[str] = set()
    for raw in names:
        for name in filter(None, (part.strip() for part in str(raw).split(","))):
            if name in UPSTREAM:
                chosen.add(name)
            elif name in FORCE_GROUPS:
                chosen.update(FORCE_GROUPS[name])
            else:
                raise ToolchainError(
                    f"--force {name!r} is not a stage.",
                    f"Use one of: {', '.join(STAGE_ORDER)}, or a group: {', '.join(FORCE_GROUPS)}.",
                )
    return downstream_of(chosen)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def canonical_json(value: Any) -> str:
    """Stable JSON for hashing: sorted keys, no whitespace, paths as strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


class FileHasher:
    """sha256 of files, remembered by (size, mtime_ns, inode) across runs in `memo_path`."""

    def __init__(self, memo_path: Optional[Path] = None):
        self.memo_path = memo_path
        self._memo: dict[str, dict] = {}
        self._dirty = False
        if memo_path is not None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                loaded = json.loads(Path(memo_path).read_text())
                if isinstance(loaded, dict):
                    self._memo = loaded

    def sha256(self, path: Path) -> str:
        path = Path(path).absolute()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = self._memo.get(str(path))
        if entry and entry.get("stat") == stamp:
            return entry["sha256"]
        digest = sha256_file(path)
        self._memo[str(path)] = {"stat": stamp, "sha256": digest}
        self._dirty = True
        return digest

    def matches(self, path: Path, expected_sha256: str) -> bool:
        try:
            return self.sha256(path) == expected_sha256
        except (FileNotFoundError, NotADirectoryError):
            return False

    def save(self) -> None:
        if self.memo_path is not None and self._dirty:
            # Drop entries of files that are gone so the memo does not grow forever.
            self._memo = {p: e for p, e in self._memo.items() if os.path.exists(p)}
            write_json_atomic(self.memo_path, self._memo)
            self._dirty = False


def files_under(directory: Path, suffixes: Optional[Sequence[str]] = None) -> list[Path]:
    """Regular files under `directory` (recursive, sorted; hidden names skipped)."""
    directory = Path(directory)
    found = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if suffixes is None or path.suffix.lower() in suffixes:
            found.append(path)
    return found


@dataclass(frozen=True)
class StageInputs:
    """Everything a stage's outputs depend on.

    files: label -> file (hashed); params: JSON-able values; texts: label -> text (hashed, e.g.
    the model script); tool: what runs the stage (image id, DFC version, code fingerprint).
    """

    files: Mapping[str, Path] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    texts: Mapping[str, str] = field(default_factory=dict)
    tool: Mapping[str, Any] = field(default_factory=dict)

    def describe(self, hasher: FileHasher) -> dict:
        """The JSON-able form that is hashed into the key (and kept in the record)."""
        return {
            "files": {label: hasher.sha256(path) for label, path in sorted(self.files.items())},
            "params": dict(self.params),
            "texts": {label: sha256_text(text) for label, text in sorted(self.texts.items())},
            "tool": dict(self.tool),
        }


@dataclass(frozen=True)
class StageRecord:
    stage: str
    key: str
    inputs: Mapping[str, Any]
    outputs: Mapping[str, str]  # path relative to the build dir -> sha256
    duration_s: float
    finished_at: str
    context: Mapping[str, Any] = field(default_factory=dict)  # e.g. GPU used, image tag: not keyed

    def to_json(self) -> dict:
        return {
            "format": RECORD_FORMAT,
            "stage": self.stage,
            "key": self.key,
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
            "duration_s": round(self.duration_s, 3),
            "finished_at": self.finished_at,
            "context": dict(self.context),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "StageRecord":
        return cls(
            stage=data["stage"],
            key=data["key"],
            inputs=data.get("inputs", {}),
            outputs=data["outputs"],
            duration_s=float(data["duration_s"]),
            finished_at=data["finished_at"],
            context=data.get("context", {}),
        )


class StageCache:
    """Stage records of one build directory."""

    def __init__(self, build_dir: Path):
        self.build_dir = Path(build_dir).absolute()
        self.dir = self.build_dir / STAGES_DIR
        self.hasher = FileHasher(self.dir / "file_hashes.json")

    def record_path(self, stage: str) -> Path:
        if stage not in UPSTREAM:
            raise ValueError(f"unknown stage {stage!r}")
        return self.dir / f"{stage}.json"

    def load(self, stage: str) -> Optional[StageRecord]:
        try:
            data = json.loads(self.record_path(stage).read_text())
            if data.get("format") != RECORD_FORMAT:
                return None
            return StageRecord.from_json(data)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None  # a damaged record: rerun the stage rather than trust it

    def key(self, stage: str, inputs: StageInputs) -> tuple[str, dict]:
        """(key, described inputs). The key covers the inputs and the upstream stages' keys."""
        upstream = {}
        for up in UPSTREAM[stage]:
            record = self.load(up)
            upstream[up] = record.key if record else None
        described = inputs.describe(self.hasher)
        key = hashlib.sha256(canonical_json({"stage": stage, "inputs": described, "upstream": upstream}).encode())
        return key.hexdigest(), described

    def outputs_intact(self, record: StageRecord) -> bool:
        return all(self.hasher.matches(self.build_dir / rel, sha) for rel, sha in record.outputs.items())

    def is_up_to_date(self, stage: str, key: str) -> bool:
        record = self.load(stage)
        return record is not None and record.key == key and self.outputs_intact(record)

    def invalidate(self, stages: Iterable[str]) -> list[str]:
        """Delete the records of `stages`; returns those that had one."""
        removed = []
        for stage in stages:
            with contextlib.suppress(FileNotFoundError):
                self.record_path(stage).unlink()
                removed.append(stage)
        return removed

    def save(
        self,
        stage: str,
        key: str,
        inputs: Mapping[str, Any],
        outputs: Iterable[Path],
        duration_s: float,
        context: Optional[Mapping[str, Any]] = None,
    ) -> StageRecord:
        """Record a finished stage. Call only after every output is in place."""
        hashed = {}
        for path in outputs:
            path = Path(path).absolute()
            if not path.is_file():
                raise ToolchainError(
                    f"Stage {stage} finished but its output {path} is missing.",
                    "The stage did not write what the build expects; see its log under logs/.",
                )
            hashed[str(path.relative_to(self.build_dir))] = self.hasher.sha256(path)
        record = StageRecord(
            stage=stage,
            key=key,
            inputs=inputs,
            outputs=hashed,
            duration_s=duration_s,
            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            context=dict(context or {}),
        )
        write_json_atomic(self.record_path(stage), record.to_json())
        self.hasher.save()
        return record

