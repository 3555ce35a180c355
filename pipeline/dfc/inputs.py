"""What a DFC step reads besides the DFC: the export's description of each network (export.json)
and the calibration set, both checked before the DFC starts so that a wrong input fails in
seconds with the fix, not deep inside the optimizer. Needs numpy only (no hailo_sdk_client).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from pipeline.errors import ToolchainError
from pipeline.export.meta import EXPORT_FORMAT, EXPORT_JSON, read_export_json
from pipeline.files import sha256_file
from pipeline.tables import MODELS

CalibData = Union[np.ndarray, dict]


# --- what the export says -----------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkExport:
    """One model of export.json: the only source of ONNX file and node names for the DFC stages."""

    model: str  # "encoder" | "decoder"
    variant: str
    onnx_path: Path
    onnx_sha256: Optional[str]  # from export.json "files"; None if it does not list the file
    net_name: str
    start_node_names: tuple[str, ...]
    end_node_names: tuple[str, ...]
    net_input_shapes: Mapping[str, list]
    dfc_input_layers: Mapping[str, str]  # "<net>/input_layerN" -> ONNX input name
    input_shapes: Mapping[str, list]  # ONNX input name -> shape, e.g. [1, 80, 1, 1000]

    def expected_calib_shape(self, layer: str) -> tuple[int, ...]:
        """Per-entry NHWC shape the DFC wants for an input layer: [1,80,1,T] -> (1, T, 80);
        [1,S,D] -> (1, S, D)."""
        shape = list(self.input_shapes[self.dfc_input_layers[layer]])
        if len(shape) == 4:  # NCHW
            return (shape[2], shape[3], shape[1])
        if len(shape) == 3:  # [batch, width, channels]: height 1
            return (1, shape[1], shape[2])
        raise ToolchainError(f"Input {self.dfc_input_layers[layer]} has shape {shape}; the DFC "
                             "stages handle rank 3 and 4 inputs.", "Re-export the model.")


def load_network_export(export_dir: Path, model: str) -> NetworkExport:
    """Read export.json in `export_dir` for `model`; check its ONNX file is there and unchanged."""
    export_dir = Path(export_dir)
    if model not in MODELS:
        raise ToolchainError(f"Unknown model {model!r}.", f"Choose one of: {', '.join(MODELS)}.")
    meta = read_export_json(export_dir)
    meta_path = export_dir / EXPORT_JSON
    if model not in meta:
        raise ToolchainError(
            f"{meta_path} is not an export.json of format {EXPORT_FORMAT} with a {model!r} entry.",
            "Run the export stage again with this version of the toolchain.",
        )
    entry = meta[model]
    try:
        onnx_path = export_dir / entry["onnx"]
        inputs = {i["name"]: list(i["shape"]) for i in entry["inputs"]}
        network = NetworkExport(
            model=model,
            variant=str(meta["variant"]),
            onnx_path=onnx_path,
            onnx_sha256=meta.get("files", {}).get(entry["onnx"]),
            net_name=entry["net_name"],
            start_node_names=tuple(entry["start_node_names"]),
            end_node_names=tuple(entry["end_node_names"]),
            net_input_shapes={k: list(v) for k, v in entry.get("net_input_shapes", {}).items()},
            dfc_input_layers=dict(entry["dfc_input_layers"]),
            input_shapes=inputs,
        )
    except (KeyError, TypeError) as err:
        raise ToolchainError(f"{meta_path} lacks {err} for the {model}.",
                             "Run the export stage again.") from None
    if not network.start_node_names or not network.end_node_names:
        raise ToolchainError(f"{meta_path}: the {model} has no start or end node names.",
                             "Run the export stage again.")
    unknown = set(network.dfc_input_layers.values()) - set(inputs)
    if unknown:
        raise ToolchainError(f"{meta_path}: dfc_input_layers name inputs {sorted(unknown)} that the "
                             f"{model} does not have.", "Run the export stage again.")
    return network


def check_onnx_file(network: NetworkExport) -> str:
    """The ONNX file's sha256, after checking it exists and matches export.json."""
    path = network.onnx_path
    if not path.is_file():
        raise ToolchainError(f"The {network.model} ONNX {path} does not exist.",
                             "Run the export stage again (invoke export).")
    digest = sha256_file(path)
    if network.onnx_sha256 and digest != network.onnx_sha256:
        raise ToolchainError(
            f"The {network.model} ONNX {path} is corrupt or changed since export "
            f"(sha256 {digest[:12]}..., export.json says {network.onnx_sha256[:12]}...).",
            "Run the export stage again; do not edit exported files by hand.",
        )
    return digest


# --- calibration data ---------------------------------------------------------------------------


def load_calibration(path: Path, network: NetworkExport) -> CalibData:
    """The calibration set for `network`: .npy array (one input) or .npz dict (keyed by layer)."""
    path = Path(path)
    single = len(network.dfc_input_layers) == 1
    want = ".npy" if single else ".npz"
    if not path.is_file():
        raise ToolchainError(f"Calibration file {path} does not exist.",
                             "Run the calibration stage first (invoke calib), or pass --calib.")
    if path.suffix != want:
        raise ToolchainError(
            f"Calibration file {path} is a {path.suffix or 'suffix-less'} file, but the "
            f"{network.model} needs a {want} file "
            f"({'one NHWC array' if single else 'arrays keyed by input layer name'}).",
            f"Pass calib/{network.model}_calib{want} from the calibration stage.",
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ToolchainError(f"Calibration file {path} is not a readable numpy {want} file: {err}.",
                             "Run the calibration stage again.") from None
    if single:
        return loaded
    with loaded:
        return {key: loaded[key] for key in loaded.files}


def check_calibration(calib: CalibData, network: NetworkExport, hn_inputs: Mapping[str, list],
                      needed: int, needed_why: str, path: Path) -> int:
    """Check layout, shapes, dtype and size against the parsed network; return the entry count.

    `hn_inputs` are the parsed HAR's input layers ({name: [-1, H, W, C]}); where the DFC gives a
    4-D shape it is the authority, otherwise export.json's shapes are converted to NHWC.
    """
    layers = sorted(network.dfc_input_layers)
    if set(hn_inputs) and set(hn_inputs) != set(layers):
        raise ToolchainError(
            f"The HAR's input layers {sorted(hn_inputs)} differ from export.json's "
            f"{layers}: the HAR was parsed from another export.",
            "Run parse again from this export directory.",
        )
    if isinstance(calib, np.ndarray):
        if len(layers) != 1:
            raise ToolchainError(f"{path} holds one array, but the {network.model} has inputs {layers}.",
                                 "Pass the .npz made by the calibration stage.")
        arrays = {layers[0]: calib}
    else:
        arrays = calib
        if set(arrays) != set(layers):
            raise ToolchainError(
                f"{path} has keys {sorted(arrays)}, but the {network.model}'s input layers are {layers}.",
                "Make the calibration set again for this export (the keys must be the DFC input "
                "layer names, <net_name>/input_layerN).",
            )
    counts = set()
    for layer in layers:
        array = arrays[layer]
        hn_shape = hn_inputs.get(layer) or []
        expected = tuple(hn_shape[1:]) if len(hn_shape) == 4 else network.expected_calib_shape(layer)
        got = tuple(array.shape[1:])
        if array.ndim != 4 or got != tuple(expected):
            hint = ""
            if array.ndim == 4 and sorted(got) == sorted(expected):
                hint = " It looks transposed: the DFC takes NHWC, not the ONNX NCHW layout."
            raise ToolchainError(
                f"Calibration data for {layer} in {path} has shape {list(array.shape)}; the DFC "
                f"expects [N, {', '.join(map(str, expected))}] (NHWC).{hint}",
                "Make the calibration set again for this export (invoke calib).",
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise ToolchainError(f"Calibration data for {layer} in {path} is {array.dtype}, not float.",
                                 "Make the calibration set again (float32).")
        counts.add(int(array.shape[0]))
    if len(counts) != 1:
        raise ToolchainError(f"The arrays in {path} have different entry counts {sorted(counts)}.",
                             "Make the calibration set again; every input needs the same N.")
    entries = counts.pop()
    if entries < needed:
        raise ToolchainError(
            f"Calibration set {path} has {entries} entries, but the model script needs {needed} "
            f"({needed_why}).",
            f"Make a calibration set with at least {needed} entries (invoke calib --size {needed}), "
            "or use --profile quick, or a model script with a smaller calibset_size/dataset_size.",
        )
    return entries
