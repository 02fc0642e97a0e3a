"""Export the GLAM network to ONNX: one input ``image`` (N, 1, H, W) float32 and three outputs, ``saliency``
S_c (N, 2, H, W) float32 (benign, malignant), ``prediction`` ŷ_g (N, 2) float32 and ``patch_locations``
(N, M, 2) int64 (upper-left row, col of the selected patches).

    python scripts/export_onnx.py --ckpt_file models/model.pt --filepath models/model.onnx

The network is ``export_network_def`` of ``--config_file`` (default configs/inference.json: its
``network_def`` with tuple outputs, ``glam_bundle.networks.GLAMExport``), with the config's overrides from
``--override '{"id": value, ...}'``. The export is traced: the input shape (default 1 × 1 × the config's
``image_size``, 2944×1920) is fixed in the file, patch selection follows the input. Needs the ``onnx`` package
(``pip install -e ".[export]"``); ``--check`` also runs the file with onnxruntime on a random input and compares
with PyTorch. Every error is one line on stderr with exit status 2, as the bundle's other commands (see docs/export.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

OPSET = 17


class ExportError(Exception):
    """A problem the user can fix; reported as one line."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Export GLAM (saliency, prediction, patch_locations) to ONNX.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--ckpt_file", default="models/model.pt", help="weights: a GLAM state_dict (models/model.pt)")
    parser.add_argument("--filepath", default="models/model.onnx", help="ONNX file to write")
    parser.add_argument("--config_file", default=str(REPO_ROOT / "configs" / "inference.json"),
                        help="bundle config defining the network")
    parser.add_argument("--net_id", default="export_network_def", help="config id of the network with tuple outputs")
    parser.add_argument("--key_in_ckpt", default="", help="key of the weights in a nested checkpoint (e.g. model)")
    parser.add_argument("--override", default="{}",
                        help='JSON object of config overrides, e.g. \'{"image_size": [736, 480]}\'')
    parser.add_argument("--input_shape", type=int, nargs=4, metavar=("N", "C", "H", "W"), default=None,
                        help="traced input shape (default: 1 1 and the config's image_size)")
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset version")
    parser.add_argument("--check", action="store_true",
                        help="run the file with onnxruntime on a random input and compare with PyTorch")
    return parser.parse_args(argv)


def load_weights(path: Path, key_in_ckpt: str):
    import torch

    if not path.is_file():
        raise ExportError(f"checkpoint not found: {path} (give the weights with --ckpt_file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unreadable, not a torch file, a pickle that would run code
        raise ExportError(f"cannot read checkpoint {path}: {str(error).splitlines()[0]}") from error
    if key_in_ckpt:
        if not isinstance(state, dict) or key_in_ckpt not in state:
            raise ExportError(f"checkpoint {path} has no key {key_in_ckpt!r} (--key_in_ckpt)")
        state = state[key_in_ckpt]
    elif isinstance(state, dict) and set(state) == {"model"} and isinstance(state["model"], dict):
        state = state["model"]  # CheckpointSaver's {"model": ...}
    if not isinstance(state, dict):
        raise ExportError(f"checkpoint {path} is not a state_dict")
    return state


def build_network(args: argparse.Namespace):
    from monai.bundle import ConfigParser

    config_file = Path(args.config_file)
    if not config_file.is_file():
        raise ExportError(f"config file not found: {config_file} (--config_file)")
    try:
        override = json.loads(args.override)
    except json.JSONDecodeError as error:
        raise ExportError(f"--override is not a JSON object: {error}") from error
    if not isinstance(override, dict):
        raise ExportError("--override must be a JSON object of config ids and values")
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser.update(override)
    if args.net_id not in parser:
        raise ExportError(f"{config_file} has no network id {args.net_id!r} (--net_id)")
    network = parser.get_parsed_content(args.net_id)
    image_size = parser.get_parsed_content("image_size") if "image_size" in parser else [2944, 1920]
    return network, image_size


def export(args: argparse.Namespace) -> Path:
    import torch

    try:
        import onnx
    except ImportError as error:
        raise ExportError('the ONNX export needs the onnx package: pip install -e ".[export]"') from error
    from glam_bundle.networks import EXPORT_OUTPUTS

    state = load_weights(Path(args.ckpt_file), args.key_in_ckpt)
    network, image_size = build_network(args)
    own = network.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    reshaped = [key for key in own if key in state and tuple(own[key].shape) != tuple(state[key].shape)]
    if missing or unexpected or reshaped:
        problems = [f"{len(found)} {what} (first: {found[0]})"
                    for what, found in (("missing keys", missing), ("unexpected keys", unexpected),
                                        ("keys of another shape", reshaped)) if found]
        raise ExportError(f"{args.ckpt_file} does not fit the configured network: {'; '.join(problems)}; "
                          "give the network settings it was trained with in --override")
    network.load_state_dict(state, strict=True)
    network.eval()
    shape = tuple(args.input_shape) if args.input_shape else (1, 1, *image_size)
    example = torch.rand(shape)
    filepath = Path(args.filepath)
    filepath.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: sizes become constants, as documented
        torch.onnx.export(
            network, (example,), str(filepath), dynamo=False, opset_version=args.opset, input_names=["image"],
            output_names=list(EXPORT_OUTPUTS), do_constant_folding=True,
        )
    model = onnx.load(str(filepath))
    onnx.checker.check_model(model)
    metadata = {"outputs": ", ".join(EXPORT_OUTPUTS), "channel_def": json.dumps({"0": "benign", "1": "malignant"}),
                "input_shape": json.dumps(list(shape)), "checkpoint": Path(args.ckpt_file).name}
    meta_file = REPO_ROOT / "metadata.json"
    if meta_file.is_file():
        metadata["bundle_version"] = json.loads(meta_file.read_text(encoding="utf-8")).get("version", "")
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(filepath))
    print(f"wrote {filepath}: input image {list(shape)} float32; outputs {', '.join(EXPORT_OUTPUTS)}")
    if args.check:
        check(network, filepath, example)
    return filepath


def check(network, filepath: Path, example) -> None:
    import numpy as np
    import torch

    try:
        import onnxruntime
    except ImportError as error:
        raise ExportError('--check needs onnxruntime: pip install -e ".[export]"') from error
    session = onnxruntime.InferenceSession(str(filepath), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": example.numpy()})
    with torch.no_grad():
        expected = [t.numpy() for t in network(example)]
    saliency, prediction = (float(np.abs(o - e).max()) for o, e in zip(outputs[:2], expected[:2]))
    same_patch = bool(np.array_equal(outputs[2], expected[2]))
    print(f"onnxruntime vs PyTorch: saliency max |diff| {saliency:.2e}, prediction max |diff| {prediction:.2e}, "
          f"patch locations {'equal' if same_patch else 'DIFFERENT'}")
    if saliency > 1e-3 or prediction > 1e-4 or not same_patch:
        raise ExportError(f"{filepath} does not reproduce PyTorch (tolerances: saliency 1e-3, prediction 1e-4)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        export(args)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
