"""Embed utterances with a joint audio-visual network (gated_fusion) from their speaker and face embeddings."""
import logging

from avtk.command import count, make_parser


def get_parser():
    p = make_parser(
        "One audio-visual embedding per utterance from a network that `avtk train` trained with model.encoder: "
        "gated_fusion (avtk/models/joint.py), over the embeddings of the same frozen speaker and face networks "
        "it was trained on. Every utterance of the audio table gets an embedding; one without a face embedding "
        "gets the audio branch's, and is listed in the --no-face file. Face embeddings of utterances that are "
        "not in the audio table are ignored (counted in a WARNING). Score the output with avtk score, like any "
        "other embeddings."
    )
    p.add_argument("--model", required=True, help="the gated_fusion network: EXP/avg_model.pt or a checkpoint")
    p.add_argument("--face-emb", required=True, metavar="RSPECIFIER",
                   help="the face network's embeddings, e.g. scp:exp/iresnet/emb/test.scp")
    p.add_argument("--no-face", metavar="FILE",
                   help="write the utterances without a face embedding here (default: the output scp, or ark, "
                        "with its extension replaced by .no_face)")
    p.add_argument("--batch-size", type=count(1), default=1024, help="utterances per forward pass")
    p.add_argument("rspecifier", help="the speaker network's embeddings, e.g. scp:exp/ecapa/emb/test.scp (a "
                                      "(1+N, dim) --seed-crops matrix gives its whole-utterance row)")
    p.add_argument("wspecifier", help="output table, e.g. ark,scp:exp/av/emb/test.ark,exp/av/emb/test.scp")
    return p


def main(args):
    import numpy as np
    import torch

    from avtk.data.table import write_dict
    from avtk.embed import check_outputs, load_network
    from avtk.errors import AvtkError
    from avtk.io.ark import input_files, load_vectors, open_writer, side_file
    from avtk.io.atomic import atomic_group
    from avtk.models.joint import JointNet, pack
    from avtk.scoring import check_embeddings, check_norms

    log = logging.getLogger(__name__)
    net, _, _ = load_network(args.model)
    if not isinstance(net, JointNet):
        raise AvtkError(f"{args.model}: a {net.encoder.__class__.__name__} network, not an audio-visual one "
                        "(model.encoder: gated_fusion); embed speech and faces with avtk extract-embeddings")
    enc = net.encoder
    faces = load_vectors(args.face_emb)  # the one rule of embedding tables: no empty entry
    for utt, v in faces.items():
        if np.shape(v) != (enc.face_dim,):
            raise AvtkError(f"{args.face_emb}: utterance {utt}: a face embedding of shape {np.shape(v)}, but "
                            f"{args.model} takes ({enc.face_dim},)")
    no_face_path = side_file(args.wspecifier, ".no_face", args.no_face)

    def flush(writer, keys, audio):
        rows = pack(np.stack(audio), [faces.get(k) for k in keys], enc.face_dim)
        with torch.no_grad():
            out = net(torch.from_numpy(rows)).numpy()
        # embeddings are unit vectors; one that is not came from a degenerate input (a side equal to the
        # training mean, or values whose square overflows): the one rule of avtk.scoring.check_embeddings first
        check_outputs(out, keys)
        norms = np.linalg.norm(out, axis=1)
        if (np.abs(norms - 1) > 1e-3).any():
            i = int(np.flatnonzero(np.abs(norms - 1) > 1e-3)[0])
            raise AvtkError(f"utterance {keys[i]}: a degenerate embedding (norm {norms[i]:.3g}, not 1): its speaker or "
                            f"face embedding equals the network's training mean or is too large")
        for k, e in zip(keys, out):
            writer[k] = e

    # both tables whole, by the rules of embeddings that are centred (avtk.scoring.check_embeddings: finite, not
    # zero; check_norms: no norm far off the others'): the network centres them, so a zero or corrupted input
    # would otherwise embed as minus its training mean
    table = load_vectors(args.rspecifier)
    order = list(table)
    audio = []
    for utt in order:
        x = np.atleast_2d(table[utt])
        if x.shape[1] != enc.audio_dim:
            raise AvtkError(f"{args.rspecifier}: utterance {utt}: speaker embeddings of dimension "
                            f"{x.shape[1]}, but {args.model} takes {enc.audio_dim}")
        audio.append(x[0])
    for keys, rows, source in ((order, audio, args.rspecifier), (list(faces), [faces[u] for u in faces], args.face_emb)):
        if keys:  # each table stacked once for both rules
            matrix = np.stack(rows)
            check_embeddings(matrix, keys, source)
            check_norms(matrix, keys, source)
    no_face = [u for u in order if u not in faces]
    with atomic_group(no_face_path, inputs=input_files(args.rspecifier, args.face_emb)):  # the table and the list appear together, or neither does
        with open_writer(args.wspecifier) as writer:
            for a in range(0, len(order), args.batch_size):
                flush(writer, order[a:a + args.batch_size], audio[a:a + args.batch_size])
        write_dict(no_face_path, {u: "no_face" for u in no_face})
    unused = len(set(faces) - set(order))
    if unused:
        log.warning("%d face embeddings of %s have no speaker embedding in %s: ignored", unused, args.face_emb,
                    args.rspecifier)
    if no_face:
        log.warning("%d of %d utterances have no face embedding: embedded by the audio branch (listed in %s), "
                    "e.g. %s", len(no_face), len(order), no_face_path, no_face[0])
    if not order:
        log.warning("wrote no embeddings: %s is empty", args.rspecifier)
    log.info("wrote %d audio-visual embeddings (%d with a face) to %s", len(order), len(order) - len(no_face),
             args.wspecifier)
