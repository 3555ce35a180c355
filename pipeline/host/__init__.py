"""Host-side orchestration, never inside a stage container: the build and its records (build,
build_options, preflight, stage_runner, stage_cache, build_lock, manifest, bundle), the stage
processes and containers (stage_command, launcher, docker_engine, watchdog, hang_probe,
stage_log, code_closure), the images' plan and base pins (image_plan, base_pins), and the host
checks (gpu, doctor, vendor).
"""
