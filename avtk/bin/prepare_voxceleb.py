"""Prepare Kaldi data dirs (and Kaldi-style trials) from VoxCeleb: the seed's lists or the official release.

  avtk prepare-voxceleb seed --vox2 ROOT2 --vox1 ROOT1 DATA
      ROOT2/train_all.txt -> DATA/vox2_train; ROOT2/train_all_clean.txt -> DATA/vox2_train_clean (clean lines);
      ROOT1/{O,E,H}_list.txt + {O,E,H}_trials.txt -> DATA/vox1_{O,E,H}
  avtk prepare-voxceleb official --vox2-dev DIR --vox1 DIR [--trials-dir DIR] DATA
      DIR/aac/**.m4a (+ DIR/mp4/**.mp4) -> DATA/vox2_dev; DIR/wav/**.wav -> DATA/vox1;
      veri_test2.txt, list_test_all2.txt, list_test_hard2.txt -> DATA/vox1_O, vox1_E, vox1_H

See avtk/data/voxceleb.py for the layouts and rules.
"""
from avtk.command import make_parser
from avtk.data.voxceleb import prepare_official, prepare_seed
from avtk.errors import AvtkError

DESCRIPTION = (
    "Write Kaldi data directories (wav.scp, utt2spk, spk2utt, and when known utt2dur, frames.scp, video.scp; "
    "trials as `enroll test target|nontarget`) for VoxCeleb. Layout 'seed' reads the seed recipe's tree and "
    "lists (ROOT2/train_all.txt [train_all_clean.txt] -> DATA/vox2_train [vox2_train_clean]; "
    "ROOT1/{O,E,H}_list.txt and {O,E,H}_trials.txt -> DATA/vox1_{O,E,H}); the synthetic corpus has this "
    "layout, with both roots in one directory. Layout 'official' reads the release as unpacked "
    "(--vox2-dev DIR/aac/<spk>/<video>/<utt>.m4a and DIR/mp4 -> DATA/vox2_dev; --vox1 DIR/wav/... -> "
    "DATA/vox1; the cleaned trial lists veri_test2.txt, list_test_all2.txt, list_test_hard2.txt -> "
    "DATA/vox1_O, vox1_E, vox1_H with the utterances they use). Utterance ids are the wav paths relative "
    "to wav/ with '/' replaced by '-' and no extension; speakers are the paths' first components; paths "
    "written are absolute. frames.scp lists the utterances with a directory under frame_align/."
)

_OPTIONS = {  # option -> the layouts it belongs to
    "vox2": ("seed",), "vox2_dev": ("official",), "trials_dir": ("official",),
}


def get_parser():
    p = make_parser(DESCRIPTION)
    p.add_argument("layout", choices=["seed", "official"],
                   help="seed: the seed's lists (train_all.txt, {O,E,H}_list.txt, {O,E,H}_trials.txt); "
                        "official: the VoxCeleb release directories (aac/, mp4/, wav/) and its trial lists")
    p.add_argument("data_dir", metavar="DATA", help="where to write the data directories (DATA/vox2_train, ...)")
    p.add_argument("--vox2", metavar="ROOT2",
                   help="seed layout: the VoxCeleb2 root holding wav/, frame_align/, train_all.txt "
                        "[, train_all_clean.txt]")
    p.add_argument("--vox1", metavar="ROOT1",
                   help="seed layout: the VoxCeleb1 root holding wav/, frame_align/, {O,E,H}_list.txt and "
                        "{O,E,H}_trials.txt (may equal --vox2); official layout: the VoxCeleb1 root holding "
                        "wav/<spk>/<video>/<utt>.wav [and frame_align/]")
    p.add_argument("--vox2-dev", metavar="DIR",
                   help="official layout: the unpacked VoxCeleb2 dev set holding aac/<spk>/<video>/<utt>.m4a "
                        "[, mp4/<spk>/<video>/<utt>.mp4, frame_align/]")
    p.add_argument("--trials-dir", metavar="DIR",
                   help="official layout: the directory of veri_test2.txt, list_test_all2.txt and "
                        "list_test_hard2.txt (default: --vox1)")
    p.add_argument("--vox2-frames", metavar="DIR",
                   help="the VoxCeleb2 frame_align tree (<spk>/<video>/<utt>/NNNN.jpg) if not in the VoxCeleb2 "
                        "root (default: ROOT/frame_align when it exists)")
    p.add_argument("--vox1-frames", metavar="DIR",
                   help="the VoxCeleb1 frame_align tree if not in the VoxCeleb1 root "
                        "(default: ROOT/frame_align when it exists)")
    p.add_argument("--allow-missing", action="store_true",
                   help="drop (and count in a warning) the trials naming a wav that is not in the list (seed) or "
                        "does not exist (official), instead of failing")
    return p


def main(args):
    for dest, layouts in _OPTIONS.items():
        if getattr(args, dest) and args.layout not in layouts:
            option = "--" + dest.replace("_", "-")
            hint = "--vox2" if dest == "vox2_dev" else "--vox2-dev" if dest == "vox2" else "--vox1"
            raise AvtkError(f"{option} is an option of the {layouts[0]} layout; the {args.layout} layout takes {hint}")
    if args.layout == "seed":
        prepare_seed(args.data_dir, vox2=args.vox2, vox1=args.vox1, vox2_frames=args.vox2_frames,
                     vox1_frames=args.vox1_frames, allow_missing=args.allow_missing)
    else:
        prepare_official(args.data_dir, vox2_dev=args.vox2_dev, vox1=args.vox1, trials_dir=args.trials_dir,
                         vox2_frames=args.vox2_frames, vox1_frames=args.vox1_frames,
                         allow_missing=args.allow_missing)
    return 0
