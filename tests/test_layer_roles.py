"""pipeline/dfc/layer_roles.py: hailo-whisper's layer numbers -> roles -> our layers, via the double's HN."""

import itertools

import pytest
import torch

from pipeline.dfc import layer_roles
from pipeline.dfc.model_scripts import generated_script, parse_model_script
from pipeline.errors import ToolchainError
from pipeline.export.export import ENCODER_INPUT, ENCODER_OUTPUT, build_hailo_modules, export_onnx, load_whisper
from pipeline.tables import ARCHS, resolve_spec


@pytest.fixture(scope="module")
def exported(random_whisper_dir, module_tmp):
    """{variant: (spec, encoder.onnx, decoder.onnx)} for random-init tiny and base at short lengths."""
    made = {}
    for variant in ("tiny", "base"):
        spec = resolve_spec(variant, "hailo8l", 1, 8)
        model = load_whisper(str(random_whisper_dir(variant)), allow_download=False).model
        encoder, decoder = build_hailo_modules(model, spec)
        d, out = model.config.d_model, module_tmp(variant)
        export_onnx(encoder, (torch.zeros(1, 80, 1, spec.frames),), out / "enc.onnx", [ENCODER_INPUT], [ENCODER_OUTPUT], 17)
        export_onnx(decoder, (torch.zeros(1, spec.encoder_positions, d), torch.zeros(1, spec.seq_len, d)),
                    out / "dec.onnx", ["encoder_states", "decoder_embeddings"], [f"logits_{i}" for i in range(4)], 17)
        made[variant] = (spec, out / "enc.onnx", out / "dec.onnx")
    return made


def _hn(dfc_double, path, net):
    from hailo_sdk_client import ClientRunner

    runner = ClientRunner(hw_arch="hailo8l")
    runner.translate_onnx_model(str(path), net)
    return runner.get_hn()


def _ours_encoder(role, blocks):
    """Our encoder's conv numbering: conv1, conv2, then per block q, k, v, out, fc1, fc2."""
    offset = {"attn_out": 4, "mlp_fc1": 5, "mlp_fc2": 6}[role.kind]
    return [f"conv{2 + 6 * role.index + offset}"]


def _ours_decoder(role, blocks):
    """Our decoder's numbering: cross k, v of every block first, then per block q, k, v, out,
    cross q, cross out, fc1, fc2, then the 4 vocabulary matmuls."""
    if role.kind in ("cross_key", "cross_value"):
        return [f"conv{2 * role.index + (1 if role.kind == 'cross_key' else 2)}"]
    if role.kind == "vocab":
        return [f"conv{10 * blocks + 1 + role.index}"]
    offset = {"attn_out": 4, "cross_query": 5, "cross_out": 6, "mlp_fc1": 7, "mlp_fc2": 8}[role.kind]
    return [f"conv{2 * blocks + 8 * role.index + offset}"]


@pytest.mark.parametrize("variant,model,arch", list(itertools.product(("tiny", "base"), ("encoder", "decoder"), ARCHS)))
def test_full_profile_roles_resolve_to_the_expected_layers(dfc_double, exported, variant, model, arch):
    spec, encoder, decoder = exported[variant]
    blocks = layer_roles.blocks_of(variant, model)
    hn = _hn(dfc_double, encoder if model == "encoder" else decoder, f"net_{model}")
    script = generated_script(variant, arch, model, "full")
    text, table, har_layers = layer_roles.resolve_for_har(script, True, model, blocks, hn, "profile:full")
    reference = layer_roles.reference_roles(model, blocks)
    expected = _ours_encoder if model == "encoder" else _ours_decoder
    assert table, "the full profile names layers"
    for row in table:
        role = reference[row["reference"]]
        if role.kind == "positional_add":
            assert row["layers"] == ["ew_add1"]
        else:
            assert row["layers"] == expected(role, blocks), row
    # every name in the resolved script exists in the HAR
    layer_roles.check_script_layers(parse_model_script(text), har_layers, "resolved")


def test_hailo_whisper_numbers_read_as_roles():
    """The derivation the role table rests on: tiny/base encoder 16-bit layers are exactly the
    attention output and both MLP projections of every block; base decoder's even conv12..48 are
    self out, cross out and fc2 of every block (plus the last block's cross value)."""
    def roles(variant, model):
        reference = layer_roles.reference_roles(model, layer_roles.blocks_of(variant, model))
        names = [c.args[0] for c in parse_model_script(generated_script(variant, "hailo8l", model, "full"))
                 if c.name == "quantization_param" and "a16" in c.kwargs.get("precision_mode", "")
                 and not c.args[0].startswith("{")]
        return {(reference[n].kind, reference[n].index) for n in names}

    for variant, blocks in (("tiny", 4), ("base", 6)):
        assert roles(variant, "encoder") == {(k, b) for b in range(blocks) for k in ("attn_out", "mlp_fc1", "mlp_fc2")}
    assert roles("base", "decoder") == {(k, b) for b in range(6) for k in ("attn_out", "cross_out", "mlp_fc2")} | {
        ("cross_value", 5)}


def test_a_script_naming_a_missing_layer_names_it_and_the_nearest(dfc_double, exported):
    spec, encoder, _ = exported["tiny"]
    hn = _hn(dfc_double, encoder, "net")
    script = "quantization_param(conv99, precision_mode=a16_w16)\nquantization_param({nothing*}, precision_mode=a8_w8)\n"
    with pytest.raises(ToolchainError, match=r"'conv99' \(nearest: conv9.*'nothing\*' \(no match\)") as err:
        layer_roles.resolve_for_har(script, False, "encoder", 4, hn, "mine.alls")
    assert "optimizer was not started" in err.value.fix


def test_a_har_of_another_graph_has_no_layer_for_a_role(dfc_double, exported):
    spec, encoder, decoder = exported["tiny"]
    hn = _hn(dfc_double, decoder, "net")  # a decoder HAR given to the encoder's script
    # (block layers share module names with the decoder's; the encoder-only positional add has none.
    # optimize also refuses a HAR whose network name is not export.json's before it gets here.)
    with pytest.raises(ToolchainError, match=r"has no layer for: encoder block 0: positional-embedding add"):
        layer_roles.resolve_for_har(generated_script("tiny", "hailo8l", "encoder", "full"), True, "encoder", 4,
                                    hn, "profile:full")
