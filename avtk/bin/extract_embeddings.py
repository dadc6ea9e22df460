"""Extract one embedding per utterance (speech: full length, batched by length; faces: N frames) into ark/scp."""
import logging

from avtk.command import count, device, make_parser, number


def get_parser():
    p = make_parser(
        "Embed every utterance of a table with a model written by `avtk train` (avg_model.pt or a checkpoint). "
        "The input is features (`scp:data/x/feats.scp`) or audio (`scp:data/x/wav.scp`, the model's own front "
        "end computes the features). Each embedding covers the whole utterance; batches group utterances of "
        "similar length and the networks mask the padding, so the result equals one-at-a-time extraction. "
        "Utterances that give no frames are skipped: a WARNING with the count, and their ids in the --skipped "
        "file. An empty input table writes an empty table with a WARNING. Finally the number of "
        "embeddings is checked against the input. A face model (iresnet) reads `scp:data/x/frames.scp` (utterance "
        "-> directory of aligned frames) and embeds --num-frames evenly spaced frames per utterance: the mean "
        "of their L2-normalised embeddings. Utterances without face frames get no embedding; they are counted "
        "and listed in the --no-face file, and scoring treats their face modality as missing."
    )
    p.add_argument("--model", required=True,
                   help="avtk model file (EXP/avg_model.pt, a checkpoint, an import-model output), or a seed "
                        "checkpoint whose layout names its format (A-Vox2, V-Vox2, ECAPA pretrain.model), "
                        "imported on the fly (avtk.load_model)")
    p.add_argument("--input-type", choices=["auto", "feats", "wav", "frames"], default="auto",
                   help="what the rspecifier holds; auto decides from its content and the model: an scp whose "
                        "first entry points into an ark (file:offset) holds feats, one naming an audio file or a "
                        "pipe (`cmd |`) wav, one naming a directory frames (face models only); an ark holds "
                        "feats. A given type must agree with the content")
    p.add_argument("--segments", help="segments file for a wav.scp input")
    p.add_argument("--resample", action="store_true", help="resample audio that is not 16 kHz instead of failing")
    p.add_argument("--device", default="cpu", type=device, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--max-frames", type=count(1), default=20000,
                   help="padded frames per batch (on a GPU, larger batches are faster)")
    p.add_argument("--num-threads", type=count(1), default=1, help="torch CPU threads")
    p.add_argument("--num-workers", type=count(0), default=0, metavar="N",
                   help="read ahead of the network: audio (a wav.scp) is decoded by N DataLoader worker processes, "
                        "features (any table, one stream) by one background thread, up to 512 utterances ahead; "
                        "same embeddings, same order, same errors as 0 (read in turn by the main process). Worth it "
                        "for pipes, m4a, slow disks and GPUs (4 or more with --device cuda); local wavs on the CPU "
                        "decode in a fraction of the network's time, so 0 there. Face frames are read in turn")
    p.add_argument("--seed-crops", type=count(0), default=0, metavar="N",
                   help="the seed's test-time mode: also embed N evenly spaced crops (wrap-padded if short) and "
                        "write a (1+N, dim) matrix per utterance, whole utterance first; avtk score then gives "
                        "(cos(whole) + mean NxN crop cosine) / 2. The seed used 5")
    p.add_argument("--crop-seconds", type=number(0, low_open=True), default=3.0,
                   help="length of the --seed-crops crops")
    p.add_argument("--num-frames", type=count(1), default=5, help="face models: evenly spaced frames per utterance "
                   "(all of them, the last repeated, when there are fewer)")
    p.add_argument("--batch-frames", type=count(1), default=64, help="face models: frames per batch")
    p.add_argument("--no-face", metavar="FILE",
                   help="face models: write the utterances without face frames here (default: the output scp "
                        "(or ark) with its extension replaced by .no_face)")
    p.add_argument("--skip-bad", action="store_true",
                   help="face models: skip utterances with an unreadable frame instead of failing (a WARNING with "
                        "the count; ids in the --skipped file)")
    p.add_argument("--skipped", metavar="FILE",
                   help="list the skipped utterances (`utt no_frames` or `utt unreadable_frame`) here (default: the "
                        "output scp, or ark, with its extension replaced by .skipped; a stream output lists none "
                        "unless this is given). All outputs appear together, or none does")
    p.add_argument("rspecifier", help="scp:feats.scp, scp:wav.scp or scp:frames.scp (a Kaldi rspecifier)")
    p.add_argument("wspecifier", help="output table, e.g. ark,scp:exp/x/emb.1.ark,exp/x/emb.1.scp")
    return p


def main(args):
    import torch

    from avtk.api import load_model
    from avtk.embed import input_type as decide_input
    from avtk.errors import AvtkError
    from avtk.io.ark import parse_specifier

    log = logging.getLogger(__name__)
    torch.set_num_threads(args.num_threads)
    model = load_model(args.model, args.device)  # a SpeakerModel or a FaceModel: the Python API
    _, scp, _ = parse_specifier(args.rspecifier, "rspecifier")
    kind, path = ("scp", scp) if scp is not None else ("ark", None)
    input_type = decide_input(args.rspecifier, model.config, args.model, args.input_type)
    if args.segments and input_type != "wav":
        raise AvtkError(f"--segments applies to a wav.scp, but {args.rspecifier} holds {input_type}")
    log.info("input: %s (%s)", input_type, args.rspecifier)
    from avtk.io.ark import input_files
    from avtk.io.atomic import atomic_group

    # all outputs, or none; none of them over the input
    with atomic_group(args.skipped, args.no_face if input_type == "frames" else None,
                      inputs=input_files(args.rspecifier, args.segments)):
        if input_type == "frames":
            return _faces(args, model, kind, path, log)
        _speech(args, model, input_type, kind, path, log)


def _speech(args, model, input_type, kind, path, log):
    import numpy as np

    from avtk.embed import check_feature_dim, read_ahead, read_audio
    from avtk.errors import AvtkError
    from avtk.io.ark import open_reader, open_writer
    from avtk.io.atomic import write_skipped

    skipped, order = [], []

    def counted(items):  # remember the input order; check the feature dimension of non-empty inputs
        for key, x in items:
            if input_type == "feats" and np.ndim(x) != 2:
                raise AvtkError(f"{args.rspecifier}: utterance {key}: expected a feature matrix (frames, dim), "
                                f"got an array of shape {np.shape(x)}")
            if input_type == "feats" and len(x):
                check_feature_dim(model.net, x.shape[1], args.rspecifier)
            order.append(key)
            yield key, x

    if input_type == "wav":
        if kind != "scp":
            raise AvtkError(f"{args.rspecifier}: audio input must be an scp (wav.scp)")
        from avtk.io.audio import AudioReader

        items = read_audio(AudioReader(path, args.resample, segments=args.segments, sort=False), args.num_workers)
    else:
        items = read_ahead(open_reader(args.rspecifier)) if args.num_workers else open_reader(args.rspecifier)
    crops = None
    if args.seed_crops:
        per_second = 16000 if input_type == "wav" else 100  # features at a 10 ms shift
        crops = (args.seed_crops, int(round(args.crop_seconds * per_second)) + (240 if input_type == "wav" else 0))
    out = dict(model.embed_items(counted(items), input_type, args.max_frames, skipped, crops))
    skipped = list(dict.fromkeys(k[0] if isinstance(k, tuple) else k for k in skipped))  # crops: (key, crop)
    with open_writer(args.wspecifier) as writer:
        for key in order:
            if key in out:
                writer[key] = out[key]
        skipped_file = args.skipped or writer.side_path(".skipped")
    total = len(order)
    write_skipped(skipped_file, [(k, "no_frames") for k in skipped], total, "utterances that give no frames", log)
    if not total:
        log.warning("wrote no embeddings: %s is empty", args.rspecifier)
    if len(out) + len(skipped) != total:
        raise AvtkError(f"wrote {len(out)} embeddings and skipped {len(skipped)} for {total} inputs")
    log.info("wrote %d embeddings (%s) to %s", len(out), input_type, args.wspecifier)


def _no_face_path(args):
    from avtk.io.ark import side_file

    return side_file(args.wspecifier, ".no_face", args.no_face)


def _faces(args, model, kind, path, log):
    from avtk.data.table import read_dict, write_dict
    from avtk.errors import AvtkError
    from avtk.io.ark import open_writer
    from avtk.io.atomic import write_skipped

    if kind != "scp":
        raise AvtkError(f"{args.rspecifier}: face input must be an scp of frame directories (frames.scp)")
    dirs = read_dict(path)
    no_face, bad = [], [] if args.skip_bad else None
    with open_writer(args.wspecifier) as writer:
        n = 0
        for utt, emb in model.embed_items(dirs.items(), args.num_frames, args.batch_frames, no_face, bad):
            writer[utt] = emb
            n += 1
        skipped_file = args.skipped or writer.side_path(".skipped")
    write_dict(_no_face_path(args), {u: "no_face" for u in no_face})
    if no_face:
        log.warning("%d of %d utterances have no face frames and got no embedding (listed in %s), e.g. %s",
                    len(no_face), len(dirs), _no_face_path(args), no_face[0])
    for utt, reason in bad or []:
        log.warning("skipped: %s", reason)
    write_skipped(skipped_file, [(u, "unreadable_frame") for u, _ in bad or []], len(dirs),
                  "utterances with unreadable frames (--skip-bad)", log)
    if not dirs:
        log.warning("wrote no embeddings: %s is empty", args.rspecifier)
    if n + len(no_face) + len(bad or []) != len(dirs):
        raise AvtkError(f"wrote {n} embeddings, {len(no_face)} without faces, {len(bad or [])} skipped, for {len(dirs)} inputs")
    log.info("wrote %d face embeddings (%d frames each) to %s", n, args.num_frames, args.wspecifier)
