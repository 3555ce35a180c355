"""Host-side orchestration, never inside a stage container: the build and its records (build,
stage_cache, build_lock, manifest, bundle), the stage processes and containers (launcher,
docker_engine, watchdog, hang_probe, stage_log, code_closure), the images' plan and base pins
(image_plan, base_pins), and the host checks (gpu, doctor,
vendor).
"""
