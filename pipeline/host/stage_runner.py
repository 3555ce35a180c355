"""Running one stage process for the build: its config becomes a `StageCommand` (image, argv from
the config's `to_argv()`, log file, GPUs, environment) that the launcher runs in its image or
natively; before the first DFC stage on a GPU, the hang probe runs once. `BuildConsole` prints the
build's status lines and is the stream stage output is teed to.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence, Union

from rich.console import Console

from calib.config import DecoderSetConfig, DownloadConfig, EncoderSetConfig
from pipeline.dfc.compile import CompileConfig
from pipeline.dfc.emulate import EmulateConfig
from pipeline.dfc.optimize import OptimizeConfig
from pipeline.dfc.parse import ParseConfig
from pipeline.export.export import ExportConfig
from pipeline.host.build_options import BuildOptions
from pipeline.host.hang_probe import DEFAULT_PROBE_CEILING_S, HangProbe, run_hang_probe
from pipeline.host.launcher import StageCommand, run_stage
from pipeline.host.stage_command import default_jit_cache_root
from pipeline.host.preflight import Preflight, Tool
from pipeline.host.stage_cache import StageRecord
from pipeline.layout import Layout

# What the builder launches: a stage's config, run as `python -m <module> <config.to_argv()>`.
StageConfig = Union[ExportConfig, EncoderSetConfig, DecoderSetConfig, DownloadConfig, ParseConfig, OptimizeConfig,
                    CompileConfig, EmulateConfig]


class BuildConsole:
    """Stage status lines (rich) and the stream the launcher tees stage output to."""

    def __init__(self, console=None, stream_logs: bool = True):
        self.rich = console or Console(highlight=False)
        self.stream = self.rich.file if stream_logs else io.StringIO()

    def up_to_date(self, stage: str, record: StageRecord) -> None:
        self.rich.print(f"[green]✓[/] {stage:<18} up to date [dim](ran {record.finished_at}, "
                        f"{record.duration_s:.1f} s)[/]")

    def running(self, stage: str) -> None:
        self.rich.print(f"[cyan]▶[/] {stage:<18} running …")

    def done(self, stage: str, duration_s: float) -> None:
        self.rich.print(f"[green]✓[/] {stage:<18} done in {duration_s:.1f} s")

    def warn(self, text: str) -> None:
        self.rich.print(f"[yellow]warning:[/] {text}")


class StageRunner:
    """Launches the build's stage processes; holds the Docker client and whether the GPU was probed."""

    def __init__(self, options: BuildOptions, layout: Layout, pre: Preflight, ui: BuildConsole,
                 probe_gpu: bool = True):
        self.options, self.layout, self.pre, self.ui = options, layout, pre, ui
        self._docker_client = None
        self._gpu_probed = not probe_gpu  # probe_gpu=False: the caller vouches for the card

    def share_from(self, other: "StageRunner") -> None:
        """Reuse another runner's Docker client and probe verdict (a twin for one GPU of the build)."""
        self._docker_client, self._gpu_probed = other._docker_client, other._gpu_probed

    def gpus_for(self, tool: Tool, kind: str) -> tuple[str, ...]:
        """The GPUs a stage gets: the DFC stages but compile. The compiler's partition search needs
        no GPU (assumption from the seed log, where it ran 21 min on the CPU), so a compile never
        holds one while another model could optimize on it."""
        return self.pre.gpu_device_ids if tool.image != "export" and kind != "compile" else ()

    def launch(self, name: str, tool: Tool, config: StageConfig, read_only: Sequence[Path] = ()) -> None:
        """Run one stage's config as `python -m <module> <config.to_argv()>` in its image (or natively)."""
        model, _, kind = name.rpartition("-")
        log_name = f"{model or name}-{kind}.log" if model else f"{name}.log"
        stall = self.options.stall_timeouts.get(name, self.options.stall_timeouts.get(kind))
        cmd = StageCommand(
            name=name,
            image=tool.image,
            argv=("python", "-m", config.MODULE, *config.to_argv()),
            build_dir=self.layout.root,
            log_path=self.layout.logs / log_name,
            read_only_paths=tuple(read_only),
            gpu_device_ids=self.gpus_for(tool, kind),
            env=self.stage_env(tool),
            stall_timeout_s=stall,
            jit_cache_dir=self.jit_cache_dir(tool),
        )
        if not self.options.no_docker and self._docker_client is None:
            from pipeline.host.docker_engine import connect  # Docker mode only: native needs no docker-py

            self._docker_client = connect()
        if cmd.gpu_device_ids and not self._gpu_probed:
            self.probe_gpu(tool)
        run_stage(cmd, native=self.options.no_docker, image_tag=tool.tag, console=self.ui.stream,
                  docker_client=self._docker_client)

    def stage_env(self, tool: Tool) -> dict[str, str]:
        env = dict(self.options.stage_env)
        if tool.image == "export":
            env.update(self.options.export_env)
            if not self.options.no_docker:
                # The container's home is thrown away: keep Hugging Face downloads in the build
                # directory (mounted read-write) so a rerun does not fetch the weights again.
                env.setdefault("HF_HOME", str(self.layout.hf_cache))
        return env

    def probe_gpu(self, tool: Tool) -> None:
        """Once per build, before the first DFC stage on a GPU: a card that would hang the
        optimizer is reported within the probe's timeout instead of hours later."""
        devices = self.pre.gpu.get("devices") or [{}]
        verdict = next((v for v in self.pre.gpu.get("verdicts", [])
                        if v.get("gpu", {}).get("uuid") == devices[0].get("uuid")), {})
        probe = HangProbe(image=tool.image, gpu_device_ids=self.pre.gpu_device_ids,
                          gpu_name=devices[0].get("name", "the GPU"), advice=verdict.get("advice", ""),
                          build_dir=self.layout.root, log_path=self.layout.logs / "gpu-hang-probe.log",
                          timeout_s=self.options.hang_probe_timeout_s, jit_cache_dir=self.jit_cache_dir(tool),
                          jit_expected=verdict.get("jit") or "", env=self.stage_env(tool),
                          ceiling_s=verdict.get("jit_ceiling_s") or DEFAULT_PROBE_CEILING_S)
        self.ui.running("gpu-hang-probe")
        took = run_hang_probe(probe, native=self.options.no_docker, image_tag=tool.tag, console=self.ui.stream,
                              docker_client=self._docker_client)
        self.ui.done("gpu-hang-probe", took)
        self._gpu_probed = True

    def jit_cache_dir(self, tool: Tool):
        """The CUDA JIT cache the DFC stages of `tool` share (on the host, across builds); None for export."""
        if tool.image == "export":
            return None
        return (self.options.jit_cache_dir or default_jit_cache_root()) / tool.image
