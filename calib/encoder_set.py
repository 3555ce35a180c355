"""Encoder calibration set: Whisper log-mels of speech windows, NHWC [N, 1, frames, 80] float32.

How a set is made (deterministic for the same files, seconds, size and seed):
1. find audio files under the root (sorted relative paths) and read their headers;
2. cut every file into `seconds`-long windows at 16 kHz (the last one zero-padded) and shuffle
   the list of all windows with `seed`;
3. take the first `size` windows of that order; worker processes (one per core) decode only
   those spans, resample when needed and compute the mel, a few windows per task, so memory
   stays bounded whatever the file lengths;
4. the main process writes each mel into its slot of a preallocated .npy under a temporary name
   (numpy.lib.format.open_memmap), flushing and dropping written pages as it goes;
5. windows that turn out silent, and all windows of files that fail to decode, leave holes
   that the next windows of the shuffled order fill; if the audio runs out the set is compacted
   to what there is (never repeated) and fails only below `min_entries` or at zero;
6. the file is renamed into place and `<name>.manifest.json` written beside it.

About 410 lines: the steps above share the slot writer and the worker protocol; split further
they would only pass those between modules.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import mmap
import multiprocessing
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from calib.audio import AudioInfo, Skip, file_list_sha256, find_audio_files, is_silent, probe, read_span, resolve_workers
from calib.config import EncoderSetConfig
from calib.mel import log_mel
from pipeline.errors import ToolchainError
from pipeline.files import temp_path_for, write_json_atomic
from pipeline.tables import HOP_LENGTH, N_MELS, SAMPLE_RATE

MANIFEST_FORMAT = 1

# Written rows are flushed and dropped from this process's memory every this many bytes, so the
# set's size never shows up in RSS (the data stays in the page cache / on disk).
_FLUSH_BYTES = 64 << 20


@dataclass
class EncoderSetResult:
    path: Path
    manifest_path: Path
    count: int
    shape: tuple[int, ...]
    skipped: list[Skip]
    elapsed_s: float
    manifest: dict = field(repr=False, default_factory=dict)


def manifest_path_for(out: str | os.PathLike) -> Path:
    """`<dir>/<stem>.manifest.json` for `<dir>/<stem>.npy`."""
    out = Path(out)
    return out.with_name(f"{out.stem}.manifest.json")


def _check_config(config: EncoderSetConfig) -> None:
    if config.seconds <= 0 or abs(config.seconds * SAMPLE_RATE / HOP_LENGTH - config.frames) > 1e-6:
        raise ToolchainError(
            f"--seconds {config.seconds:g} does not give a whole number of mel frames.",
            "Use a multiple of 0.01 s, the same length the encoder is exported with (e.g. 10).",
        )
    if config.size < 1:
        raise ToolchainError(f"--size {config.size} is not a positive number of entries.", "Use 1 or more.")
    if config.min_entries > config.size:
        raise ToolchainError(
            f"--min-entries {config.min_entries} is larger than --size {config.size}.",
            f"Ask for at least --size {config.min_entries}.",
        )
    if config.out.suffix != ".npy":
        raise ToolchainError(f"Output {str(config.out)!r} must end in .npy.", "Name it e.g. encoder_calib.npy.")


# --- worker side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    """Contiguous windows [first, first + count) of one file."""

    file_index: int
    first_window: int
    count: int


def _mel_task(root: str, info: AudioInfo, task: _Task, window_samples: int):
    """Decode a task's span and mel each window. Runs in a worker process.

    Returns ("ok", task, [mel [frames, 80] float32 or None for a silent window, ...]) or
    ("error", task, reason) when the file cannot be decoded.
    """
    try:
        audio = read_span(root, info, task.first_window * window_samples, task.count * window_samples)
    except Exception as err:  # corrupt data past a good header: libsndfile raises various types
        text = str(err).strip().splitlines()
        return ("error", task, f"corrupt: {(text[0] if text else type(err).__name__)[:200]}")
    windows = np.zeros((task.count, window_samples), dtype=np.float32)  # pads the last window
    flat = windows.reshape(-1)
    flat[: audio.size] = audio
    keep = [not is_silent(w) for w in windows]
    mels = log_mel(windows[keep]) if any(keep) else np.empty((0,))
    out, k = [], 0
    for kept in keep:
        if kept:
            out.append(mels[k])
            k += 1
        else:
            out.append(None)
    return ("ok", task, out)


# --- main side -----------------------------------------------------------------------------


class _SlotWriter:
    """Rows of a preallocated .npy memmap, with bounded resident memory and running stats."""

    def __init__(self, path: Path, capacity: int, frames: int):
        self.path = path
        self.array = open_memmap(path, mode="w+", dtype=np.float32, shape=(capacity, 1, frames, N_MELS))
        # Reserve the blocks now: a full disk is a clear error here, not a SIGBUS mid-write.
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
            except OSError as err:
                raise ToolchainError(
                    f"Cannot reserve {os.path.getsize(path) / 1e9:.2f} GB for {str(path)!r}: {err.strerror}.",
                    "Free disk space there, or pass a smaller --size / another --out folder.",
                ) from None
        self.row_bytes = frames * N_MELS * 4
        self.filled = np.zeros(capacity, dtype=bool)
        self.stats = np.zeros((capacity, 3), dtype=np.float64)  # min, max, sum per row
        self._unflushed = 0

    def write(self, slot: int, mel: np.ndarray) -> None:
        self.array[slot, 0] = mel
        self.filled[slot] = True
        self.stats[slot] = (mel.min(), mel.max(), mel.sum(dtype=np.float64))
        self._unflushed += self.row_bytes
        if self._unflushed >= _FLUSH_BYTES:
            self.release()

    def release(self) -> None:
        """Write dirty pages back and drop them from this process's resident set."""
        self.array.flush()
        raw = getattr(self.array, "_mmap", None)
        if raw is not None and hasattr(mmap, "MADV_DONTNEED"):
            raw.madvise(mmap.MADV_DONTNEED)
        self._unflushed = 0

    def close(self) -> None:
        self.release()
        del self.array


# Workers do the parallelism; a multi-threaded BLAS inside each of them would only fight over the
# same cores (measured on 2 cores: a [1000, 201] x [201, 80] matmul took 3.2 ms with 2 OpenBLAS
# threads, 0.3 ms with 1). The mel itself avoids BLAS (calib.mel._mel_projection).
_SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _worker_pool(workers: int) -> cf.ProcessPoolExecutor:
    """Spawned worker processes with single-threaded BLAS (set in the environment they start with)."""
    saved = {k: os.environ.get(k) for k in _SINGLE_THREADED}
    os.environ.update(_SINGLE_THREADED)
    try:
        executor = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        # Start every worker now, while the environment says so (they are otherwise started lazily).
        list(executor.map(_warm_up, range(workers)))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return executor


def _warm_up(_: int) -> int:
    return os.getpid()


def _tasks_for(assignments: list[tuple[int, int, int]], windows_per_task: int) -> list[tuple[_Task, list[int]]]:
    """Group (file, window, slot) assignments into tasks of contiguous windows of one file."""
    by_file: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for file_index, window, slot in assignments:
        by_file[file_index].append((window, slot))
    tasks = []
    for file_index in sorted(by_file):
        items = sorted(by_file[file_index])
        run: list[tuple[int, int]] = []
        for window, slot in items:
            if run and (window != run[-1][0] + 1 or len(run) >= windows_per_task):
                tasks.append((_Task(file_index, run[0][0], len(run)), [s for _, s in run]))
                run = []
            run.append((window, slot))
        tasks.append((_Task(file_index, run[0][0], len(run)), [s for _, s in run]))
    return tasks


def _run_tasks(executor, root: str, infos: list[AudioInfo], tasks, window_samples: int) -> Iterable:
    """Yield task results, keeping a bounded number in flight (results hold mels)."""
    if executor is None:
        for task, slots in tasks:
            yield _mel_task(root, infos[task.file_index], task, window_samples), slots
        return
    pending: dict[cf.Future, list[int]] = {}
    queue = iter(tasks)
    max_in_flight = 4 * executor._max_workers
    try:
        while True:
            while len(pending) < max_in_flight:
                nxt = next(queue, None)
                if nxt is None:
                    break
                task, slots = nxt
                pending[executor.submit(_mel_task, root, infos[task.file_index], task, window_samples)] = slots
            if not pending:
                return
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in done:
                yield future.result(), pending.pop(future)
    finally:
        for future in pending:
            future.cancel()


def build_encoder_set(config: EncoderSetConfig) -> EncoderSetResult:
    """Build the encoder calibration set described by `config`; see the module docstring."""
    _check_config(config)
    started = time.monotonic()
    root = str(config.audio_dir)
    files = find_audio_files(config.audio_dir)
    if not files:
        raise ToolchainError(
            f"No audio files under {root!r} (looked for {', '.join(sorted({'.wav', '.flac', '.ogg', '.mp3'}))} and other "
            "formats libsndfile reads, recursively).",
            "Point --audio at a folder of speech recordings, or run `python -m calib download --dest DIR`.",
        )

    infos: list[AudioInfo] = []
    skipped: dict[str, Skip] = {}
    for rel in files:
        result = probe(root, rel)
        if isinstance(result, Skip):
            skipped[rel] = result
        else:
            infos.append(result)

    win = config.window_samples
    candidates = np.array(
        [(i, w) for i, info in enumerate(infos) for w in range(math.ceil(info.samples_16k / win))],
        dtype=np.int64,
    ).reshape(-1, 2)
    order = np.random.default_rng(config.seed).permutation(len(candidates))
    capacity = min(config.size, len(candidates))
    if capacity == 0 or capacity < config.min_entries:  # not even counting silent windows: fail early
        raise _too_few(config, capacity, len(files), skipped)

    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(out)
    workers = resolve_workers(config.workers)
    slot_file = np.full(capacity, -1, dtype=np.int64)
    bad_files: set[int] = set()
    windows_done: dict[int, int] = defaultdict(int)
    windows_silent: dict[int, int] = defaultdict(int)
    silent_dropped = 0
    writer = None
    executor = None
    try:
        writer = _SlotWriter(tmp, capacity, config.frames)
        if workers > 1:
            executor = _worker_pool(workers)
        bar = tqdm(total=capacity, unit="entry", desc="encoder calib", disable=not config.progress, dynamic_ncols=True)
        next_candidate = 0
        holes = list(range(capacity))
        while holes and next_candidate < len(order):
            assignments = []
            for slot in holes:
                while next_candidate < len(order) and candidates[order[next_candidate]][0] in bad_files:
                    next_candidate += 1
                if next_candidate == len(order):
                    break
                file_index, window = candidates[order[next_candidate]]
                assignments.append((int(file_index), int(window), slot))
                slot_file[slot] = file_index
                next_candidate += 1
            for (status, task, payload), slots in _run_tasks(
                executor, root, infos, _tasks_for(assignments, config.windows_per_task), win
            ):
                if status == "error":
                    if task.file_index not in bad_files:
                        bad_files.add(task.file_index)
                        rel = infos[task.file_index].path
                        skipped[rel] = Skip(rel, payload)
                        lost = np.flatnonzero((slot_file == task.file_index) & writer.filled)
                        writer.filled[lost] = False
                        bar.update(-len(lost))
                    continue
                if task.file_index in bad_files:
                    continue
                for slot, mel in zip(slots, payload):
                    windows_done[task.file_index] += 1
                    if mel is None:
                        windows_silent[task.file_index] += 1
                        silent_dropped += 1
                    else:
                        writer.write(slot, mel)
                        bar.update(1)
            holes = [int(s) for s in np.flatnonzero(~writer.filled)]
        bar.close()
        if executor is not None:
            executor.shutdown()
            executor = None

        for file_index, done in windows_done.items():
            if file_index not in bad_files and windows_silent[file_index] == done:
                rel = infos[file_index].path
                skipped[rel] = Skip(rel, f"silent: no sample above {20 * math.log10(1e-4):.0f} dBFS")

        count = int(writer.filled.sum())
        if count == 0 or count < config.min_entries:
            raise _too_few(config, count, len(files), skipped)
        rows = np.flatnonzero(writer.filled)
        stats = writer.stats[rows]
        writer.release()
        if count < capacity:
            tmp = _compact(writer, rows, out)
        else:
            writer.close()
        os.replace(tmp, out)
    except BaseException:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        if writer is not None and hasattr(writer, "array"):
            del writer.array
        for leftover in (tmp, temp_path_for(out.with_name(out.name + ".compact"))):
            leftover.unlink(missing_ok=True)
        raise

    used_files = sorted({infos[i].path for i in slot_file[rows]})
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "whisper-encoder-calibration",
        "file": out.name,
        "shape": [count, 1, config.frames, N_MELS],
        "dtype": "float32",
        "layout": "NHWC",
        "count": count,
        "requested_size": config.size,
        "min_entries": config.min_entries,
        "seconds": config.seconds,
        "sample_rate": SAMPLE_RATE,
        "seed": config.seed,
        "audio_dir": str(config.audio_dir),
        "source_files": len(files),
        "source_list_sha256": file_list_sha256(files),
        "files_used": len(used_files),
        "windows_available": int(len(candidates)),
        "silent_windows_dropped": silent_dropped,
        "skipped": [s.as_json() for s in sorted(skipped.values(), key=lambda s: s.path)],
        "min": float(stats[:, 0].min()),
        "max": float(stats[:, 1].max()),
        "mean": float(stats[:, 2].sum() / (count * config.frames * N_MELS)),
    }
    manifest_path = write_json_atomic(manifest_path_for(out), manifest)
    return EncoderSetResult(
        path=out,
        manifest_path=manifest_path,
        count=count,
        shape=tuple(manifest["shape"]),
        skipped=sorted(skipped.values(), key=lambda s: s.path),
        elapsed_s=time.monotonic() - started,
        manifest=manifest,
    )


def _compact(writer: _SlotWriter, rows: np.ndarray, out: Path) -> Path:
    """Copy the filled rows, in slot order, into a right-sized temporary .npy; return its path."""
    tmp = temp_path_for(out.with_name(out.name + ".compact"))
    source = writer.array
    target = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(rows),) + source.shape[1:])
    step = max(1, _FLUSH_BYTES // writer.row_bytes)
    for start in range(0, len(rows), step):
        target[start : start + step] = source[rows[start : start + step]]
        target.flush()
    del target
    writer.close()
    writer.path.unlink()
    return tmp


def _too_few(config: EncoderSetConfig, count: int, n_files: int, skipped: dict[str, Skip]) -> ToolchainError:
    reasons = defaultdict(int)
    for s in skipped.values():
        reasons[s.reason.split(":")[0]] += 1
    why = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "none skipped"
    need = max(1, config.min_entries)
    return ToolchainError(
        f"Only {count} usable {config.seconds:g}-second calibration windows in {str(config.audio_dir)!r} "
        f"({n_files} audio files; skipped: {why}); at least {need} are needed.",
        f"Add more speech audio (about {math.ceil(need * config.seconds / 60)} minutes for {need} entries), "
        "or run `python -m calib download --dest DIR` for LibriSpeech dev-clean (5.4 hours).",
    )
