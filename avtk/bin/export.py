"""Export a model, front end included, as a TorchScript or ONNX graph (waveform or face images in, embedding out)."""
import logging

from avtk.command import make_parser


def get_parser():
    p = make_parser(
        "Export an avtk model file (EXP/avg_model.pt) with its front end inside the graph, for use without avtk. "
        "Speaker models take `wave` float32 (batch, samples), 16 kHz audio in [-1, 1] zero-padded to the longest "
        "row, and `lengths` int64 (batch,) valid samples per row (one utterance: lengths = [samples]); face "
        "models take `images` uint8 (batch, 112, 112, 3) aligned RGB faces. Both give `embedding` float32 "
        "(batch, dim); batch and samples are dynamic. The export is run on other batch sizes and lengths than "
        "its trace example and compared with the network (one utterance at a time); a mismatch fails it. "
        "OUT.json describes the inputs, sample rate, channel order, embedding size and the model config."
    )
    p.add_argument("--model", required=True, help="avtk model file to export (EXP/avg_model.pt or a checkpoint)")
    p.add_argument("--format", choices=["torchscript", "onnx"],
                   help="graph format (default: from OUT's extension: .onnx is onnx; .pt, .pth, .ts, .jit are "
                        "torchscript); onnx needs the onnx extra (pip install 'avtk[onnx]')")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the exported graph against the network (ONNX: the check needs onnxruntime)")
    p.add_argument("output", help="the graph file to write (e.g. exp/ecapa/embedder.onnx); OUT.json goes beside it")
    return p


def main(args):
    from avtk.export import export_model

    log = logging.getLogger(__name__)
    meta = export_model(args.model, args.output, args.format, check=not args.no_check)
    inputs = ", ".join(f"{i['name']} {i['dtype']} ({', '.join(map(str, i['shape']))})" for i in meta["inputs"])
    log.info("wrote %s (%s): %s -> embedding (batch, %d)", args.output, meta["format"], inputs, meta["embed_dim"])
    parity = meta.get("parity", {})
    if parity.get("checked"):
        log.info("checked on inputs of shapes %s: max |exported - network| = %.3g", parity["input_shapes"],
                 parity["max_abs_diff"])
    log.info("wrote %s.json", args.output)
    return 0
