"""Stage code that runs in the DFC images (dfc-cuda11/dfc-cuda12): parse -> optimize -> compile.

`client` is the only module that imports Hailo's `hailo_sdk_client`; `model_scripts` writes and
reads the .alls files; `timeline` reads the DFC's log. Nothing here imports `pipeline.host`.
"""
