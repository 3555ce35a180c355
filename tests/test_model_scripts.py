"""pipeline/dfc/model_scripts.py: generated profiles, the .alls reader, calibration needs."""

import itertools

import pytest

from pipeline.dfc import model_scripts as ms
from pipeline.errors import ToolchainError
from pipeline.tables import ARCHS, VARIANTS

ALL = list(itertools.product(VARIANTS, ARCHS, ms.MODELS))


def _commands(text):
    return ms.parse_model_script(text)


def _find(commands, name, first=None):
    return [c for c in commands if c.name == name and (first is None or c.first == first)]


def test_full_tiny_encoder_is_hailo_whispers_script():
    commands = _commands(ms.generated_script("tiny", "hailo8l", "encoder", "full"))
    (flavor,) = _find(commands, "model_optimization_flavor")
    assert flavor.kwargs == {"optimization_level": "2"}
    (calibration,) = _find(commands, "model_optimization_config", "calibration")
    assert calibration.kwargs == {"batch_size": "8", "calibset_size": "1024"}
    (finetune,) = _find(commands, "post_quantization_optimization", "finetune")
    assert finetune.kwargs == {"policy": "enabled", "dataset_size": "3340", "epochs": "6",
                               "learning_rate": "0.00001", "batch_size": "8"}
    sixteen_bit = [c.first for c in _find(commands, "quantization_param")
                   if c.kwargs["precision_mode"] == "a16_w16"]
    assert sixteen_bit[:4] == ["conv4", "conv6", "conv8", "conv10"] and "{ew_add*}" in sixteen_bit
    last_ew_add1 = [c.kwargs["precision_mode"] for c in _find(commands, "quantization_param", "ew_add1")]
    assert last_ew_add1 == ["a8_w8"]  # written after the {ew_add*} glob so it overrides it
    assert {c.first for c in _find(commands, "pre_quantization_optimization")} == {
        "ew_add_fusing", "matmul_correction", "matmul_equalization"}
    assert ms.enables_noise_analysis(commands)
    assert ms.calibration_needs(commands) == ms.CalibrationNeeds(1024, 3340)


@pytest.mark.parametrize("variant, arch, model", ALL)
def test_every_combination_renders_and_parses(variant, arch, model):
    full = ms.resolve_model_script(variant, arch, model, "full")
    quick = ms.resolve_model_script(variant, arch, model, "quick")
    assert full.profile == "full" and full.source == "profile:full"
    assert full.noise_analysis and not quick.noise_analysis
    assert full.needs.finetune_dataset_size >= 1024
    assert quick.needs == ms.CalibrationNeeds(ms.QUICK_CALIBSET_SIZE, None)
    (flavor,) = _find(quick.commands, "model_optimization_flavor")
    assert flavor.kwargs["optimization_level"] == "0"
    assert _find(quick.commands, "post_quantization_optimization", "finetune")[0].kwargs == {"policy": "disabled"}
    # quick keeps the precision choices, so its HEF has the same structure as full's
    assert [c for c in full.commands if c.name == "quantization_param"] == \
        [c for c in quick.commands if c.name == "quantization_param"]


@pytest.mark.parametrize("variant, arch, model, expected", [
    ("tiny", "hailo10h", "encoder", True), ("tiny", "hailo8l", "encoder", False),
    ("tiny.en", "hailo10h", "encoder", False), ("base", "hailo10h", "encoder", True),
    ("tiny", "hailo8", "decoder", False), ("tiny", "hailo10h", "decoder", True),
    ("tiny.en", "hailo8l", "decoder", True), ("base", "hailo10h", "decoder", True),
    ("base.en", "hailo10h", "decoder", False),
])
def test_layer_norm_decomposition_where_the_reference_uses_it(variant, arch, model, expected):
    commands = _commands(ms.generated_script(variant, arch, model, "full"))
    assert bool(_find(commands, "pre_quantization_optimization", "layer_norm_decomposition")) is expected


@pytest.mark.parametrize("variant, arch, model, calibset, finetune, utilization", [
    ("tiny", "hailo8", "decoder", 128, 1024, "0.8"),
    ("tiny", "hailo10h", "decoder", 128, 1024, "0.7"),
    ("tiny.en", "hailo8l", "decoder", 128, 1024, "0.7"),
    ("base", "hailo8l", "decoder", 256, 1024, "0.8"),
    ("base", "hailo8l", "encoder", 512, 2048, None),
])
def test_per_variant_sizes(variant, arch, model, calibset, finetune, utilization):
    commands = _commands(ms.generated_script(variant, arch, model, "full"))
    assert ms.calibration_needs(commands) == ms.CalibrationNeeds(calibset, finetune)
    resources = _find(commands, "resources_param")
    assert (resources[0].kwargs["max_utilization"] if resources else None) == utilization


def test_tiny_en_encoder_asks_for_max_compiler_optimization():
    en = _commands(ms.generated_script("tiny.en", "hailo8", "encoder", "full"))
    plain = _commands(ms.generated_script("tiny", "hailo8", "encoder", "full"))
    assert _find(en, "performance_param")[0].kwargs == {"compiler_optimization_level": "max",
                                                        "optimize_for_batch": "1"}
    assert _find(plain, "performance_param")[0].kwargs == {"optimize_for_batch": "1"}


def test_parser_reads_arguments_globs_targets_comments_and_continuations():
    text = """# a comment
    quantization_param({ew_add*, conv1}, precision_mode=a16_w16)  # trailing comment
    net/resize1 = resize(resize_shapes=[1,2])
    post_quantization_optimization(finetune,
        policy=enabled, dataset_size=8)
    performance_param()
    """
    commands = _commands(text)
    assert [c.name for c in commands] == ["quantization_param", "resize", "post_quantization_optimization",
                                          "performance_param"]
    assert commands[0].args == ("{ew_add*, conv1}",) and commands[0].line == 2
    assert commands[1].targets == ("net/resize1",) and commands[1].kwargs == {"resize_shapes": "[1,2]"}
    assert commands[2].kwargs == {"policy": "enabled", "dataset_size": "8"} and commands[2].line == 4
    assert commands[3].args == () and commands[3].kwargs == {}


@pytest.mark.parametrize("text, problem", [
    ("model_optimization_flavor optimization_level=0", "expected name(arguments)"),
    ("performance_param(optimize_for_batch=1))", "unbalanced"),
    ("quantization_param({conv1, precision_mode=a16_w16)", "unclosed"),
    ("9lives(policy=enabled)", "bad command name"),
    ("performance_param(a=1, b)", "positional argument 'b' after keyword"),
    ("performance_param(a=)", "no value for 'a'"),
    ("performance_param(a=1,,b=2)", "empty argument"),
])
def test_malformed_lines_name_the_line(text, problem):
    with pytest.raises(ToolchainError, match="my.alls line 2 is malformed") as err:
        ms.parse_model_script("performance_param(optimize_for_batch=1)\n" + text, "my.alls")
    assert problem in str(err.value)


def test_unclosed_parenthesis_at_the_end_is_reported():
    with pytest.raises(ToolchainError, match="line 1 never closes its parenthesis"):
        ms.parse_model_script("model_optimization_flavor(optimization_level=0\n\n")


def test_calibration_needs_defaults_policy_and_last_command_wins():
    assert ms.calibration_needs([]) == ms.CalibrationNeeds(ms.DFC_DEFAULT_CALIBSET_SIZE, None)
    commands = _commands("model_optimization_config(calibration, calibset_size=100)\n"
                         "post_quantization_optimization(finetune, policy=enabled)\n"
                         "model_optimization_config(calibration, calibset_size=200)\n")
    assert ms.calibration_needs(commands) == ms.CalibrationNeeds(200, ms.DFC_DEFAULT_FINETUNE_DATASET_SIZE)
    assert ms.calibration_needs(commands).entries == 1024
    disabled = commands + _commands("post_quantization_optimization(finetune, policy=disabled)")
    assert ms.calibration_needs(disabled).finetune_dataset_size is None


def test_calibration_needs_rejects_a_non_integer_size():
    commands = _commands("model_optimization_config(calibration, calibset_size=lots)")
    with pytest.raises(ToolchainError, match="calibset_size='lots' is not a whole number"):
        ms.calibration_needs(commands, "x.alls")


def test_user_script_overrides_the_profile(tmp_path):
    path = tmp_path / "mine.alls"
    path.write_text("model_optimization_flavor(optimization_level=1)\n"
                    "model_optimization_config(calibration, calibset_size=32)\n")
    script = ms.resolve_model_script("tiny", "hailo8l", "encoder", "full", model_script=path)
    assert (script.profile, script.source) == ("custom", str(path))
    assert script.text == path.read_text() and script.needs == ms.CalibrationNeeds(32, None)
    assert not script.noise_analysis


def test_noise_analysis_is_appended_once(tmp_path):
    path = tmp_path / "mine.alls"
    path.write_text("model_optimization_flavor(optimization_level=0)")
    script = ms.resolve_model_script("tiny", "hailo8l", "encoder", model_script=path, noise_analysis=True)
    assert script.noise_analysis and script.text.endswith(ms.NOISE_ANALYSIS_COMMAND + "\n")
    full = ms.resolve_model_script("tiny", "hailo8l", "encoder", "full", noise_analysis=True)
    assert full.text.count("checker_cfg") == 1


def test_missing_empty_and_unreadable_scripts(tmp_path):
    with pytest.raises(ToolchainError, match="does not exist"):
        ms.resolve_model_script("tiny", "hailo8l", "encoder", model_script=tmp_path / "nope.alls")
    empty = tmp_path / "empty.alls"
    empty.write_text("# only a comment\n")
    with pytest.raises(ToolchainError, match="has no commands"):
        ms.resolve_model_script("tiny", "hailo8l", "encoder", model_script=empty)
    binary = tmp_path / "binary.alls"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ToolchainError, match="cannot be read"):
        ms.resolve_model_script("tiny", "hailo8l", "encoder", model_script=binary)


@pytest.mark.parametrize("kwargs, problem", [
    ({"variant": "huge"}, "Unknown variant 'huge'"), ({"arch": "hailo9"}, "Unknown arch 'hailo9'"),
    ({"model": "joiner"}, "Unknown model 'joiner'"), ({"profile": "fast"}, "Unknown profile 'fast'"),
])
def test_unknown_choices(kwargs, problem):
    args = {"variant": "tiny", "arch": "hailo8l", "model": "encoder", "profile": "full", **kwargs}
    with pytest.raises(ToolchainError, match=problem):
        ms.generated_script(**args)


def test_cli_prints_the_script(capsys):
    assert ms.main(["--variant", "base", "--arch", "hailo8", "--model", "decoder", "--profile", "quick"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# whisper-hailo-toolchain quick profile: base decoder for hailo8")
    assert "calibset_size=16" in out and "checker_cfg" not in out


def test_the_calibration_size_is_the_largest_need_of_either_models_script():
    # The one default size of the encoder set, for `invoke calib` and `invoke build` alike.
    assert ms.calibration_entries_needed("tiny", "hailo8l", "full") == 3340  # encoder fine-tune dataset_size
    assert ms.calibration_entries_needed("base", "hailo8l", "full") == 2048
    assert ms.calibration_entries_needed("tiny", "hailo8l", "quick") == 16


def test_a_users_script_sets_the_calibration_size(tmp_path):
    script = tmp_path / "decoder.alls"
    script.write_text("post_quantization_optimization(finetune, policy=enabled, dataset_size=5000)\n")
    needed = ms.calibration_entries_needed("tiny", "hailo8l", "quick",
                                           lambda model: script if model == "decoder" else None)
    assert needed == 5000
