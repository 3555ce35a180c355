"""Stage code that runs in the export image: Whisper -> Hailo-friendly modules -> ONNX.

`whisper_hailo` holds the modules, `ct2` reads CTranslate2 checkpoints, `export` is the stage,
`meta` reads its export.json without torch, `onnx_greedy` transcribes with the exported pair.
Nothing here imports `pipeline.host`.
"""
