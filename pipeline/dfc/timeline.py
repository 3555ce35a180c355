"""Turn a Dataflow Compiler console log into a stage timeline and a summary.

The DFC reports its progress only as console text (Python logging plus tqdm/keras progress bars);
there is no structured log. This module reads that text, so the same parser works on a log a user
already has (`python -m pipeline.dfc.timeline LOGFILE`) and on the output our stages capture while the
DFC runs (`capture_console`).

Line shapes recognised (all seen in ../shared/reference/seed-dfc-conversion-log.txt, DFC 3.x):
  [info] Starting <Algorithm>
  [info] Model Optimization Algorithm <Algorithm> is done (completion time is 00:09:59.14)
  [info] <Algorithm> skipped
  [info] Restored ONNX model <net> (completion time: 00:00:00.11)      # any "(completion time: T)"
  [info] Using dataset with 1024 entries for calibration
  Calibration: 100%|████| 1024/1024 [09:55<00:00,  1.72entries/s]      # tqdm bars
  Epoch 1/6  /  24/417 ━━━━ 2:18:40 21s/step - ...                     # keras fine-tuning
  [info] <net>/output_layer1 SNR:	9.179 dB
  [info] Successfully built optimization options - 12m 31s 782ms
  Found valid partition to 9 contexts, Performance improved by 2.4%
  [info] Partitioner finished after 362 iterations, Time it took: 20m 58s 302ms
  [info] Applying selected partition to 9 contexts...
  [info] <net>_context_0 utilization:  ...  | Total | 57.8% | 27.7% | 39.1% |
  [warning] Training cut by the user, proceed at your own peril
A line the parser does not know is ignored, never an error: DFC versions word things differently.

Output:
  events: [{"name", "kind", "line", "duration_s" (float or None), "details" {...}}, ...] in log order
  summary: {"snr_db": {layer: dB}, "contexts": int|None, "algorithm_durations_s": {name: s},
            "optimization_s": float, "warnings": [...], "errors": [...], "calibration_entries": int|None,
            "finetune_entries": int|None, "device": "cpu"|None, "partitioner": {...}|None,
            "utilization": {context: {"control": %, "compute": %, "memory": %}}, "saved_hars": [...]}
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import Iterable, Iterator, Optional

from pipeline.files import final_path_for

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_LEVEL = re.compile(r"^\s*\[(?P<level>info|warning|error|critical|debug)\]\s?(?P<msg>.*)$", re.I)

_STARTING = re.compile(r"^Starting (?P<name>.+?)\s*$")
_ALGO_DONE = re.compile(
    r"^Model Optimization Algorithm (?P<name>.+?) is done \(completion time is (?P<t>[\d:.]+)\)"
)
_COMPLETION = re.compile(r"^(?P<what>.+?) \(completion time: (?P<t>[\d:.]+)\)")
_TRANSLATION_START = re.compile(r"^Translation started on ONNX model (?P<net>\S+)")
_TRANSLATION_DONE = re.compile(
    r"^Translation completed on ONNX model (?P<net>\S+) \(completion time: (?P<t>[\d:.]+)\)"
)
_PLAIN_DONE = re.compile(r"^(?P<name>.+?) is done\s*$")
_SKIPPED = re.compile(r"^(?P<name>[A-Z][\w .\-]*?) skipped\s*$")
_DATASET = re.compile(r"Using dataset with (?P<n>\d+) entries for (?P<purpose>\w+)")
_TQDM = re.compile(
    r"^(?P<desc>[^:|]+):\s+(?P<pct>\d+)%\|.*?\|\s*(?P<n>\d+)/(?P<total>\d+)\s+"
    r"\[(?P<elapsed>[\d:]+)<(?P<remaining>[\d:?]+)"
)
_EPOCH = re.compile(r"^\s*Epoch (?P<epoch>\d+)/(?P<epochs>\d+)\s*$")
_KERAS_STEP = re.compile(
    r"^\s*(?P<step>\d+)/(?P<steps>\d+)\s+\S*\s+(?P<eta>[\d:]+)\s+(?P<per_step>\S+)/step"
)
_SNR = re.compile(r"^(?P<layer>\S+)\s+SNR:\s*(?P<db>-?[\d.]+|inf|-inf|nan)\s*dB", re.I)
_BUILT_OPTIONS = re.compile(r"^Successfully built optimization options - (?P<t>.+?)\s*$")
_FOUND_PARTITION = re.compile(r"Found valid partition to (?P<n>\d+) contexts")
_APPLY_PARTITION = re.compile(r"Applying selected partition to (?P<n>\d+) contexts")
_PARTITIONER = re.compile(
    r"^Partitioner finished after (?P<iters>\d+) iterations, Time it took: (?P<t>.+?)\s*$"
)
_SINGLE_CONTEXT_OK = re.compile(r"compiled .*in a single context|Single context flow succeeded", re.I)
_MULTI_CONTEXT = re.compile(r"^Using Multi-context flow")
_UTILIZATION_HEAD = re.compile(r"^(?P<ctx>\S+) utilization:\s*$")
_UTILIZATION_TOTAL = re.compile(
    r"^\|\s*Total\s*\|\s*(?P<control>[\d.]+)%\s*\|\s*(?P<compute>[\d.]+)%\s*\|\s*(?P<memory>[\d.]+)%"
)
_SAVED_HAR = re.compile(r"^Saved HAR to: (?P<path>.+?)\s*$")
_CPU_FALLBACK = re.compile(r"falling back to CPU", re.I)
_UNIT_DURATION = re.compile(r"(?P<v>\d+(?:\.\d+)?)\s*(?P<u>h|ms|m|s)\b")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def clock_to_seconds(text: str) -> float:
    """'00:09:59.14' -> 599.14; '04:36' -> 276.0; '2:18:40' -> 8320.0."""
    seconds = 0.0
    for part in text.strip().split(":"):
        seconds = seconds * 60 + float(part)
    return round(seconds, 3)


def units_to_seconds(text: str) -> float:
    """'20m 58s 302ms' -> 1258.302; '11s 862ms' -> 11.862; '59m 59s' -> 3599.0."""
    matches = list(_UNIT_DURATION.finditer(text))
    if not matches:
        raise ValueError(f"no duration in {text!r}")
    return round(sum(float(m["v"]) * _UNIT_SECONDS[m["u"]] for m in matches), 3)


def _logical_lines(text: str) -> Iterator[str]:
    """Lines with colour codes removed; carriage-return redraws (progress bars) become lines."""
    for raw in _ANSI.sub("", text).splitlines():
        for part in raw.split("\r"):
            if part.strip():
                yield part.rstrip()


def parse_log(text: str) -> dict:
    """Parse DFC console text into {"events": [...], "summary": {...}} (see module docstring)."""
    events: list[dict] = []
    open_algorithms: dict[str, dict] = {}  # started, not yet done, by name
    current: Optional[dict] = None  # the event that progress/dataset lines belong to
    summary: dict = {
        "snr_db": {},
        "contexts": None,
        "algorithm_durations_s": {},
        "optimization_s": 0.0,
        "warnings": [],
        "errors": [],
        "calibration_entries": None,
        "finetune_entries": None,
        "device": None,
        "partitioner": None,
        "utilization": {},
        "saved_hars": [],
        "compile_flow": None,
    }
    utilization_context: Optional[str] = None

    def add(name: str, kind: str, line_no: int, duration_s=None, **details) -> dict:
        event = {"name": name, "kind": kind, "line": line_no, "duration_s": duration_s,
                 "details": details}
        events.append(event)
        return event

    for line_no, line in enumerate(_logical_lines(text), start=1):
        level_match = _LEVEL.match(line)
        level = level_match["level"].lower() if level_match else None
        msg = (level_match["msg"] if level_match else line).strip()

        if level in ("warning", "error", "critical"):
            bucket = "warnings" if level == "warning" else "errors"
            summary[bucket].append(msg)
            if current is not None:
                current["details"].setdefault(bucket, []).append(msg)
            else:
                add(msg, level, line_no)
            continue

        if m := _ALGO_DONE.match(msg):
            name, seconds = m["name"], clock_to_seconds(m["t"])
            event = open_algorithms.pop(name, None) or add(name, "algorithm", line_no)
            event["duration_s"] = seconds
            event["details"]["status"] = "done"
            summary["algorithm_durations_s"][name] = seconds
            summary["optimization_s"] = round(summary["optimization_s"] + seconds, 3)
            current = None
        elif m := _TRANSLATION_DONE.match(msg):
            event = open_algorithms.pop("Translation", None) or add("Translation", "parse", line_no)
            event["duration_s"] = clock_to_seconds(m["t"])
            event["details"].update(status="done", net=m["net"])
            current = None
        elif m := _TRANSLATION_START.match(msg):
            current = add("Translation", "parse", line_no, status="started", net=m["net"])
            open_algorithms["Translation"] = current
        elif (m := _PLAIN_DONE.match(msg)) and m["name"] in open_algorithms:
            open_algorithms.pop(m["name"])["details"]["status"] = "done"  # no time reported
            current = None
        elif m := _STARTING.match(msg):
            name = m["name"]
            kind = "algorithm" if level_match else "step"
            current = add(name, kind, line_no, status="started")
            open_algorithms[name] = current
        elif m := _SKIPPED.match(msg):
            add(m["name"], "algorithm", line_no, 0.0, status="skipped")
        elif m := _COMPLETION.match(msg):
            add(m["what"], "step", line_no, clock_to_seconds(m["t"]), status="done")
        elif m := _DATASET.search(msg):
            entries, purpose = int(m["n"]), m["purpose"].lower()
            if purpose in ("calibration", "finetune"):
                summary[f"{purpose}_entries"] = entries
            if current is not None:
                current["details"][f"{purpose}_entries"] = entries
            else:
                add(f"dataset for {purpose}", "info", line_no, entries=entries)
        elif m := _TQDM.match(line.strip()):
            progress = {"done": int(m["n"]), "total": int(m["total"]),
                        "elapsed_s": clock_to_seconds(m["elapsed"])}
            if current is not None:
                current["details"].setdefault("progress", {})[m["desc"].strip()] = progress
            else:
                add(m["desc"].strip(), "progress", line_no, progress["elapsed_s"], **progress)
        elif m := _EPOCH.match(line):
            if current is not None:
                current["details"]["epoch"] = int(m["epoch"])
                current["details"]["epochs"] = int(m["epochs"])
        elif m := _KERAS_STEP.match(line):
            if current is not None:
                current["details"]["steps_done"] = int(m["step"])
                current["details"]["steps_per_epoch"] = int(m["steps"])
                current["details"]["epoch_eta_s"] = clock_to_seconds(m["eta"])
                current["details"]["time_per_step"] = m["per_step"]
        elif m := _SNR.match(msg):
            summary["snr_db"][m["layer"]] = float(m["db"])
        elif m := _BUILT_OPTIONS.match(msg):
            add("Build optimization options", "compile", line_no, units_to_seconds(m["t"]))
        elif m := _PARTITIONER.match(msg):
            seconds = units_to_seconds(m["t"])
            summary["partitioner"] = {"iterations": int(m["iters"]), "duration_s": seconds}
            add("Partitioner", "compile", line_no, seconds, iterations=int(m["iters"]))
        elif m := _APPLY_PARTITION.search(msg):
            summary["contexts"] = int(m["n"])
            add("Apply partition", "compile", line_no, contexts=int(m["n"]))
        elif m := _FOUND_PARTITION.search(msg):
            # The search keeps improving; the last one found is the best so far. "Applying selected
            # partition" (above) is authoritative when present.
            if not any(e["name"] == "Apply partition" for e in events):
                summary["contexts"] = int(m["n"])
        elif _MULTI_CONTEXT.match(msg):
            summary["compile_flow"] = "multi-context"
        elif _SINGLE_CONTEXT_OK.search(msg):
            summary["compile_flow"] = "single-context"
            summary["contexts"] = summary["contexts"] or 1
        elif m := _UTILIZATION_HEAD.match(msg):
            utilization_context = m["ctx"]
        elif (m := _UTILIZATION_TOTAL.match(msg)) and utilization_context:
            summary["utilization"][utilization_context] = {
                k: float(m[k]) for k in ("control", "compute", "memory")
            }
            utilization_context = None
        elif m := _SAVED_HAR.match(msg):
            # The DFC saves to our temporary name; report the file it is renamed to.
            summary["saved_hars"].append(str(final_path_for(m["path"])))
        elif _CPU_FALLBACK.search(msg):
            summary["device"] = "cpu"
    for event in open_algorithms.values():
        event["details"]["status"] = "unfinished"  # started, never reported done
    return {"events": events, "summary": summary}


def parse_log_file(path: str | os.PathLike) -> dict:
    """parse_log() of a file, read as UTF-8 with undecodable bytes replaced."""
    return parse_log(Path(path).read_text(encoding="utf-8", errors="replace"))


@contextlib.contextmanager
def capture_console(path: str | os.PathLike) -> Iterator[Path]:
    """Tee everything written to file descriptors 1 and 2 into `path` while the block runs.

    The DFC writes from Python logging, tqdm and native code (TensorFlow), so redirecting
    `sys.stdout` would miss part of it; this works on the descriptors. Output still reaches the
    console (and so the launcher's log) as it is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    sink = open(path, "wb")
    lock = threading.Lock()
    saved, threads = [], []
    previous_streams = None
    try:
        for fd in (1, 2):
            original = os.dup(fd)
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            saved.append((fd, original))
            thread = threading.Thread(target=_pump, args=(read_end, original, sink, lock),
                                      daemon=True)
            thread.start()
            threads.append(thread)
        # Python-level writers go straight to the descriptors while capturing, even where
        # sys.stdout had been replaced by something that bypasses them (pytest, notebooks).
        # (Left open on purpose: a logging handler made meanwhile may keep writing to them.)
        previous_streams = (sys.stdout, sys.stderr)
        sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")
        sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")
        yield path
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if previous_streams is not None:
            sys.stdout, sys.stderr = previous_streams
        for fd, original in saved:
            os.dup2(original, fd)  # closes the pipe's last write end: the pump sees EOF
        for thread in threads:
            thread.join(timeout=10)
        for _, original in saved:
            os.close(original)
        sink.close()


def _pump(read_end: int, console_fd: int, sink, lock: threading.Lock) -> None:
    with os.fdopen(read_end, "rb", buffering=0) as source:
        while chunk := source.read(65536):
            with lock, contextlib.suppress(ValueError):  # ValueError: closed after a timeout
                sink.write(chunk)  # the file first: whatever the console shows is in the log
                sink.flush()
            with contextlib.suppress(OSError):
                os.write(console_fd, chunk)


def main(argv: Optional[Iterable[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.dfc.timeline",
        description="Print the timeline (algorithm durations, calibration progress, SNR per output, "
        "context partition) of a Hailo Dataflow Compiler console log as JSON.",
    )
    parser.add_argument("logfile", type=Path, help="a DFC log, e.g. build/tiny-hailo8l/logs/encoder-optimize.log")
    parser.add_argument("--summary-only", action="store_true", help="print only the summary")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not args.logfile.is_file():
        print(f"error: {args.logfile} does not exist or is not a file. Pass the path of a DFC log.",
              file=sys.stderr)
        return 2
    result = parse_log_file(args.logfile)
    print(json.dumps(result["summary"] if args.summary_only else result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
