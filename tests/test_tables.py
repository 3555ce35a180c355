import pytest

from pipeline.errors import ToolchainError
from pipeline.tables import (
    ARCHS,
    DFC_RELEASES,
    IMAGES,
    SERIES,
    UNKNOWN,
    VARIANTS,
    parse_dfc_wheel_name,
    resolve_spec,
)


def test_defaults_follow_the_variant_table():
    tiny = resolve_spec("tiny", "hailo8l")
    assert (tiny.seconds, tiny.seq_len, tiny.frames, tiny.encoder_positions) == (10, 32, 1000, 500)
    base = resolve_spec("base.en", "hailo10h")
    assert (base.seconds, base.seq_len, base.frames) == (5, 24, 500)
    assert base.arch.dfc.dfc_major == 5
    assert tiny.arch.dfc.dfc_major == 3


def test_names_carry_variant_and_lengths():
    spec = resolve_spec("tiny.en", "hailo8", seconds=2.5, seq_len=16)
    assert spec.encoder_net_name == "whisper_tiny_en_encoder_2p5s"
    assert spec.decoder_net_name == "whisper_tiny_en_decoder_2p5s_seq16"
    assert spec.build_name == "tiny.en-hailo8-2.5s-seq16"


def test_the_default_build_folder_names_only_lengths_that_differ_from_the_variants_defaults():
    assert resolve_spec("tiny", "hailo8l").build_name == "tiny-hailo8l"
    assert resolve_spec("tiny", "hailo8l", seconds=8).build_name == "tiny-hailo8l-8s"
    assert resolve_spec("base", "hailo8", seq_len=16).build_name == "base-hailo8-seq16"


def test_every_arch_names_a_dfc_series_and_every_known_release_an_image():
    assert {a: ARCHS[a].dfc.dfc_major for a in ARCHS} == {"hailo8": 3, "hailo8l": 3, "hailo10h": 5}
    assert set(SERIES) == {"dfc3", "dfc5"}
    for release in DFC_RELEASES:
        assert release.sources, release  # every row says where it comes from
        assert release.image in IMAGES or release.image == UNKNOWN
    for image in IMAGES.values():
        assert image.base_image and image.min_driver > 0


def test_english_only_variants_have_the_smaller_vocabulary():
    assert VARIANTS["tiny.en"].vocab_size == VARIANTS["tiny"].vocab_size - 1
    assert not VARIANTS["base.en"].multilingual and VARIANTS["base"].multilingual


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(variant="small"), "Choose one of: tiny, tiny.en, base, base.en"),
        (dict(arch="hailo15"), "Choose one of: hailo8, hailo8l, hailo10h"),
        (dict(variant="base", seconds=10), "base at 10 s is refused"),
        (dict(seconds=31), "outside Whisper's range"),
        (dict(seconds=0.5), "outside Whisper's range"),
        (dict(seconds=1.25), "not a whole even number"),
        (dict(seq_len=449), "outside 1..448"),
        (dict(seq_len=0), "outside 1..448"),
    ],
)
def test_bad_combinations_name_the_valid_choices(kwargs, message):
    args = dict(variant="tiny", arch="hailo8l") | kwargs
    with pytest.raises(ToolchainError, match=message):
        resolve_spec(**args)


def test_dfc_wheel_names():
    assert parse_dfc_wheel_name("hailo_dataflow_compiler-3.31.0-py3-none-linux_x86_64.whl") == "3.31.0"
    assert (
        parse_dfc_wheel_name("hailo_dataflow_compiler-3.31.0+testdouble-py3-none-any.whl")
        == "3.31.0+testdouble"
    )
    with pytest.raises(ToolchainError, match="not a DFC wheel name"):
        parse_dfc_wheel_name("hailo_dataflow_compiler-latest.whl")
