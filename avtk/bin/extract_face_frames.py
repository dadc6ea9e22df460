"""Detect, align (112x112, insightface template) and save the face frames of videos or raw image directories."""
import logging
import os

from avtk.command import count, device, make_parser, number


def get_parser():
    p = make_parser(
        "Build aligned face frames for the utterances of an scp (`<utt> <video file or directory of raw frames>`, "
        "a data dir's video.scp or raw_frames.scp). Videos are decoded with PyAV (the `video` extra) and one frame "
        "is taken every --interval seconds, named by its 25-fps frame number (0010.jpg at 0.4 s, the seed's "
        "layout); directories give their images in sorted name order. Each frame's 5 landmarks come from "
        "--detector, and a least-squares similarity (Umeyama) warps the frame to the insightface 112x112 template. "
        "Writes OUT_DIR/<utt>/NNNN.jpg and the frames.scp table (`<utt> <absolute directory>`) as one group: "
        "the directories appear with the table when all are done, or none does. Frames without a face, or whose "
        "landmarks coincide or fall outside the frame, are left out and counted; each file is one distinct frame "
        "(a sampling time that lands on a frame already taken, as in variable-frame-rate video, adds none). An "
        "utterance with no face in any frame keeps an empty directory, which avtk extract-embeddings lists as "
        "no_face. Already aligned frames (the seed's frame_align tree) need no processing: list them in "
        "frames.scp directly."
    )
    p.add_argument("--detector", choices=["landmarks", "mtcnn"], default="mtcnn",
                   help="landmarks: read <dir>/landmarks.txt (`<frame> x1 y1 ... x5 y5`, e.g. the synthetic corpus's "
                        "ground truth); mtcnn: the MTCNN detector, weights from facenet-pytorch "
                        "(pip install --no-deps facenet-pytorch==2.6.0)")
    p.add_argument("--interval", type=number(0, low_open=True), default=0.4,
                   help="seconds between frames taken from a video")
    p.add_argument("--size", type=count(1), default=112, help="side of the aligned square image")
    p.add_argument("--min-face", type=count(1), default=20, help="mtcnn: smallest face side in pixels")
    p.add_argument("--device", default="cpu", type=device, help="mtcnn: cpu, cuda, cuda:N or auto")
    p.add_argument("--num-threads", type=count(1), default=1, help="torch CPU threads")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) utterances whose video or frames cannot be read instead of failing")
    p.add_argument("in_scp", help="`<utt> <video or directory>` table")
    p.add_argument("out_dir", help="root of the aligned frames: OUT_DIR/<utt>/*.jpg")
    p.add_argument("frames_scp", help="output table `<utt> <directory>`")
    return p


def main(args):
    import torch

    from avtk.data.table import read_dict
    from avtk.face.extract import build_detector

    log = logging.getLogger(__name__)
    torch.set_num_threads(args.num_threads)
    sources = read_dict(args.in_scp)
    detector = build_detector(args.detector, args.device, args.min_face)
    created = not os.path.lexists(args.out_dir)  # a refused or failed run leaves no empty OUT_DIR of its own
    try:
        out, no_face, bad, (frames, faces, rejected) = _extract_all(args, sources, detector, log)
    except BaseException:
        if created and os.path.isdir(args.out_dir) and not os.listdir(args.out_dir):
            os.rmdir(args.out_dir)
        raise
    if no_face:
        log.warning("%d of %d utterances have no face in any frame (empty directories), e.g. %s",
                    len(no_face), len(sources), no_face[0])
    if bad:
        log.warning("skipped %d of %d utterances that could not be read (--skip-bad), e.g. %s",
                    len(bad), len(sources), bad[0])
    if rejected:
        log.warning("%d frames had landmarks that cannot align a face (coinciding, outside the image, or a "
                    "uniform warp); counted without a face (--verbose names them)", rejected)
    log.info("%d utterances: %d frames, %d with a face (%d without) -> %s, %s", len(out), frames, faces,
             frames - faces, args.out_dir, args.frames_scp)


def _extract_all(args, sources, detector, log):
    """(frames.scp table, utterances without a face, skipped ones, (frames, faces, rejected)) of every source.
    One group: the frames scp is checked against the input scp before any frame is written, and the utterance
    directories appear with the scp at the end, or none does (a landmarks.txt or video named as the scp,
    found only when read, leaves no frames behind)."""
    from avtk.data.table import write_dict
    from avtk.errors import AvtkError
    from avtk.face.extract import extract_utterance
    from avtk.io.atomic import atomic_group

    out, no_face, bad = {}, [], []
    frames = faces = rejected = 0
    with atomic_group(args.frames_scp):
        for utt, source in sources.items():
            target = os.path.abspath(os.path.join(args.out_dir, utt))
            try:
                n, k, r = extract_utterance(utt, source, target, detector, args.interval, args.size)
            except AvtkError as err:
                if not args.skip_bad:
                    raise
                log.warning("skipping %s: %s", utt, err)
                bad.append(utt)
                continue
            frames, faces, rejected = frames + n, faces + k, rejected + r
            if k == 0:
                no_face.append(utt)
            out[utt] = target
        write_dict(args.frames_scp, out)
    return out, no_face, bad, (frames, faces, rejected)
