"""``edgert export``: pretrained backbone -> fp32.onnx, int8.onnx, int8.tflite with cards and parity."""

from __future__ import annotations

import argparse
import json

from edge_runtime.defaults import MODELS_DIR


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        nargs="?",
        default="efficientnet-lite0",
        help="efficientnet-lite0 (default), efficientnet-lite1 or efficientnet-lite2",
    )
    parser.add_argument("--models-dir", default=str(MODELS_DIR), help="output root; files go to MODELS_DIR/NAME/")
    parser.add_argument("--force", action="store_true", help="export again even if the cached export is current")
    parser.add_argument("--json", action="store_true", help="print the parity report as JSON")
    parser.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    try:
        from edge_runtime.export.pipeline import export_backbone
    except ImportError as err:
        from edge_runtime.errors import EdgeRuntimeError

        raise EdgeRuntimeError(
            f"export needs the export extra ({err.name} missing): pip install 'edge-runtime[export]' torch==2.13.0"
        ) from None
    paths = export_backbone(args.name, args.models_dir, force=args.force)
    parity = json.loads(paths["parity.json"].read_text())
    if args.json:
        print(json.dumps({"paths": {k: str(v) for k, v in paths.items()}, "parity": parity}, indent=1))
        return 0
    print(f"{'artefact':<14}{'size MB':>9}{'cos mean':>10}{'cos min':>9}{'top-1 agree':>13}")
    for key, filename in (("onnx_fp32", "fp32.onnx"), ("onnx_int8", "int8.onnx"), ("tflite_int8", "int8.tflite")):
        p = parity[key]
        size = paths[filename].stat().st_size / 1e6
        print(
            f"{filename:<14}{size:>9.2f}{p['feature_cosine_mean']:>10.4f}{p['feature_cosine_min']:>9.4f}"
            f"{p['top1_agreement']:>13.3f}"
        )
    print(f"parity against fp32 torch on {parity['images']} held-out photos; models in {paths['fp32.onnx'].parent}")
    return 0
