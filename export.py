"""Export a trained UPANets to ONNX or to a torch.export program, checked against the eager model.

    python export.py --weights checkpoint/cifar10-upanets16/best.pth --format onnx            # -> best.onnx
    python export.py --weights best.pth --format exported-program --batch 8                    # -> best.pt2
    python export.py --weights ckpt.pth --format onnx --classes classes.txt --img-size 32      # the original code's

Both take what ``UPANets.forward`` takes, a normalised float32 batch (N, 3, img, img), and return the logits;
the file carries the class names and the mean/std (ONNX metadata_props, the .pt2's extra file ``upanets.json``).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from upanets_lab import commandline
from upanets_lab.errors import UserError
from upanets_lab.files import atomic_write, check_writable
from upanets_lab.inference.trained import InferenceSpec, load_spec

FORMATS = {"onnx": ".onnx", "exported-program": ".pt2"}
OPSET = 18
# Max abs difference of the logits from the eager model's, per unit of the largest logit (at least 1): a model
# whose logits run into the hundreds (a few epochs of a BatchNorm network) differs by float32's rounding at that size.
TOLERANCE = 1e-4
TRACE_BATCH, CHECK_BATCH = 2, 3  # a dynamic batch is checked at another size than it was traced with
METADATA_FILE = "upanets.json"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = commandline.make_parser("Export a trained UPANets to ONNX or torch.export", add_help=add_help)
    commandline.add_checkpoint_args(parser.add_argument_group("checkpoint"))
    parser.add_argument("--format", required=True, choices=tuple(FORMATS),
                        help=f"onnx (opset {OPSET}, for onnxruntime and others) or exported-program "
                        "(torch.export, saved as .pt2)")
    parser.add_argument("--out", default=None, type=Path,
                        help="output file (default: next to --weights, e.g. best.onnx / best.pt2)")
    parser.add_argument("--batch", default="dynamic", help="'dynamic' (any batch size) or a fixed batch size N")
    return parser


def parse_batch(value: str) -> int | None:
    """``--batch``: None for dynamic, else a positive size."""
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"--batch must be 'dynamic' or a positive integer, got {value!r}")
    return int(value)


def export_onnx(model: torch.nn.Module, example: torch.Tensor, dynamic_shapes: tuple | None,
                metadata: dict[str, str]) -> tuple[bytes, Callable[[torch.Tensor], torch.Tensor]]:
    """The ONNX file's bytes, and a function that runs them in onnxruntime."""
    import onnxruntime

    # The TorchScript exporter (dynamo=False) cannot export the layer norm over a traced shape; dynamo can.
    program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=dynamic_shapes, opset_version=OPSET,
                                input_names=["images"], output_names=["logits"], verbose=False)
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    payload = proto.SerializeToString()
    session = onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
    return payload, lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def export_program(model: torch.nn.Module, example: torch.Tensor, dynamic_shapes: tuple | None,
                   metadata: dict[str, str]) -> tuple[bytes, Callable[[torch.Tensor], torch.Tensor]]:
    """The .pt2 file's bytes (torch.export.save), and the module that torch.export.load makes of them."""
    program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files=metadata)
    payload = buffer.getvalue()
    return payload, torch.export.load(io.BytesIO(payload)).module()


def export(spec: InferenceSpec, fmt: str, out: Path, batch: int | None) -> str:
    """Export ``spec.model``, check the exported model against it, then write ``out``; return what was done."""
    model = spec.model.cpu().eval()
    shape = (3, spec.img_size, spec.img_size)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(batch or TRACE_BATCH, *shape, generator=generator)
    dynamic_shapes = None if batch else ({0: torch.export.Dim("batch", min=1)},)
    metadata = spec.metadata()
    if fmt == "onnx":
        payload, run = export_onnx(model, example, dynamic_shapes, {k: json.dumps(v) for k, v in metadata.items()})
        what, runner = f"ONNX opset {OPSET}", "onnxruntime"
    else:
        payload, run = export_program(model, example, dynamic_shapes, {METADATA_FILE: json.dumps(metadata)})
        what, runner = "torch.export program", "torch.export.load"

    check = torch.randn(batch or CHECK_BATCH, *shape, generator=generator)
    with torch.inference_mode():
        expected = model(check)
        difference = (run(check) - expected).abs().max().item() / max(1.0, expected.abs().max().item())
    if not difference <= TOLERANCE:
        raise UserError(f"the exported model's logits differ from the eager model's by {difference:.3g} of its "
                        f"largest logit (more than {TOLERANCE:g}) on a batch of {len(check)}; {out} was not written")
    with atomic_write(out) as f:
        f.write(payload)
    size = "batch" if batch is None else str(batch)
    return (f"exported {spec.source} to {out} ({what}; input float32 ({size}, {', '.join(map(str, shape))}), "
            f"normalised; output logits ({size}, {len(spec.classes)})); max abs difference from the eager model, "
            f"per unit of its largest logit, on a batch of {len(check)} ({runner}): {difference:.2g}")


def main(args: argparse.Namespace) -> None:
    batch = parse_batch(args.batch)
    out = args.out or args.weights.with_suffix(FORMATS[args.format])
    check_writable(out.parent)
    spec = load_spec(args)
    spec.normalization()  # the file records the inputs it takes: a checkpoint that does not say needs --dataset
    print(export(spec, args.format, out, batch))


def cli(argv: Iterable[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return commandline.run_cli(lambda: main(args), memory_remedy=lambda: "export on a machine with more memory")


if __name__ == "__main__":
    sys.exit(cli())
