"""MUSAN and RIRS_NOISES, in the layouts their users download, as the data dirs training augments from.

Layouts (REFERENCE §4; openslr.org resources 17 and 28):

  musan/music/<source>/*.wav                   -> DATA/musan_music
  musan/noise/{free-sound,sound-bible}/*.wav   -> DATA/musan_noise
  musan/speech/{librivox,us-gov}/*.wav         -> DATA/musan_speech   (babble talkers)
  RIRS_NOISES/simulated_rirs/{smallroom,mediumroom,largeroom}/RoomNNN/RoomNNN-NNNNN.wav -> DATA/rirs

Each data dir has wav.scp (absolute paths), utt2spk (every file its own speaker, as Kaldi's
make_musan.sh does), spk2utt and utt2dur (from the wav header). Keys: a MUSAN file's stem
(`noise-free-sound-0001`, unique in the release); an RIR's room size and stem
(`smallroom-Room001-00001`: the stems repeat across room sizes). RIRS_NOISES' real_rirs_isotropic_noises
(multi-channel RIRs mixed with noise recordings) are not used, as in Kaldi's and WeSpeaker's VoxCeleb recipes.

Every file's header is read: a file that is not a 16 kHz mono wav, is unreadable, or has no samples is an
AvtkError naming it (training would fail on it hours later). So is a silent file (every sample zero), by
training's own rule (`avtk.augment.check_audible`): each file is read in chunks up to its first non-zero
chunk, which for an audible file is its first (a silent one is read whole: ~1 GB/s from the page cache). Each data dir is written atomically (a
temporary directory renamed when complete) and then validated.
"""
import logging
import os

import soundfile as sf

from avtk.data.datadir import validate
from avtk.data.table import utt2spk_to_spk2utt, write_dict
from avtk.errors import AvtkError
from avtk.io.atomic import atomic_dir
from avtk.io.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

MUSAN_SETS = {"noise": "musan_noise", "music": "musan_music", "speech": "musan_speech"}
RIR_ROOMS = ("smallroom", "mediumroom", "largeroom")


def _wavs(root):
    """Every *.wav under root (following the tree in sorted order) as absolute paths."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(".wav")]
    return [os.path.abspath(p) for p in found]


def _duration(path):
    """Seconds of a 16 kHz mono wav, from its header; AvtkError naming the file otherwise."""
    try:
        info = sf.info(path)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise AvtkError(f"{path}: cannot read the audio header ({err})") from None
    if info.samplerate != SAMPLE_RATE or info.channels != 1:
        raise AvtkError(f"{path}: {info.samplerate} Hz, {info.channels} channel(s); augmentation sources must be "
                        f"{SAMPLE_RATE} Hz mono (convert with: sox IN -r {SAMPLE_RATE} -c 1 OUT)")
    if info.frames <= 0:
        raise AvtkError(f"{path}: no samples")
    return info.frames / info.samplerate


def _check_audible(path, kind):
    """AvtkError naming `path` when every sample is zero (`avtk.augment.check_audible`, read in 1 M-sample chunks)."""
    from avtk.augment import check_audible

    try:
        with sf.SoundFile(path) as f:
            check_audible(f.blocks(blocksize=1 << 20, dtype="float32"), kind, path)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise AvtkError(f"{path}: cannot read the audio ({err})") from None


def _write(data_dir, files):
    """Write a data dir of {key: path}; each file its own speaker; validated; returns its size."""
    wav_scp, utt2dur = {}, {}
    for key, path in files.items():
        wav_scp[key] = path
        utt2dur[key] = f"{_duration(path):.3f}"
    utt2spk = {k: k for k in files}
    with atomic_dir(data_dir) as tmp:
        write_dict(os.path.join(tmp, "wav.scp"), wav_scp)
        write_dict(os.path.join(tmp, "utt2spk"), utt2spk)
        write_dict(os.path.join(tmp, "spk2utt"), utt2spk_to_spk2utt(utt2spk))
        write_dict(os.path.join(tmp, "utt2dur"), utt2dur)
        problems = validate(tmp, require_feats=False, check_audio=True)
        if problems:
            raise AvtkError(f"{data_dir}: not written; {problems[0]}" + (
                f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    total = sum(float(d) for d in utt2dur.values())
    log.info("%s: %d files, %.1f h", data_dir, len(files), total / 3600)
    return len(files)


def _keyed(paths, key_of, what):
    """{key: path}, a key shared by two files being an error naming both."""
    table = {}
    for path in paths:
        key = key_of(path)
        if any(c.isspace() for c in key):
            raise AvtkError(f"{path}: the {what} key {key!r} would contain whitespace; rename the file")
        if key in table:
            raise AvtkError(f"{what}: {table[key]} and {path} give the same key {key!r}")
        table[key] = path
    return table


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def prepare_musan(musan_root, data_root):
    """Write DATA/musan_noise, musan_music and musan_speech from a MUSAN tree; returns {data dir: files}.

    musan_root: the `musan` directory (holding music/, noise/, speech/). Every set must be present and hold
    at least one wav. Errors (AvtkError): a missing set, a non-16 kHz-mono or unreadable file, a duplicate stem.
    """
    musan_root = os.fspath(musan_root)
    if not os.path.isdir(musan_root):
        raise AvtkError(f"{musan_root}: no such MUSAN directory")
    sets = {}
    for part, name in MUSAN_SETS.items():
        src = os.path.join(musan_root, part)
        if not os.path.isdir(src):
            raise AvtkError(f"{src}: missing; a MUSAN tree has music/, noise/ and speech/ (openslr.org/17)")
        files = _keyed(_wavs(src), _stem, f"MUSAN {part}")
        if not files:
            raise AvtkError(f"{src}: no .wav files")
        for path in files.values():  # every set checked before any is written
            _duration(path)
            _check_audible(path, part)
        sets[name] = files
    return {name: _write(os.path.join(data_root, name), files) for name, files in sets.items()}


def prepare_rirs(rirs_root, data_root, rooms=RIR_ROOMS):
    """Write DATA/rirs from RIRS_NOISES/simulated_rirs/<room>/...; returns {"rirs": files}.

    rirs_root: the `RIRS_NOISES` directory. rooms: which simulated room sizes to use (all three by default,
    as WeSpeaker does; Kaldi's VoxCeleb v2 uses smallroom and mediumroom).
    """
    rirs_root = os.fspath(rirs_root)
    sim = os.path.join(rirs_root, "simulated_rirs")
    if not os.path.isdir(sim):
        raise AvtkError(f"{sim}: missing; give the RIRS_NOISES directory (openslr.org/28), which holds simulated_rirs/")
    unknown = [r for r in rooms if r not in RIR_ROOMS]
    if unknown or not rooms:
        raise AvtkError(f"unknown RIR room set(s) {unknown or rooms}; choose from {', '.join(RIR_ROOMS)}")
    paths = []
    for room in rooms:
        src = os.path.join(sim, room)
        if not os.path.isdir(src):
            raise AvtkError(f"{src}: missing (asked for room set {room!r})")
        found = _wavs(src)
        if not found:
            raise AvtkError(f"{src}: no .wav files")
        paths += found
    files = _keyed(paths, lambda p: f"{os.path.relpath(p, sim).split(os.sep)[0]}-{_stem(p)}", "RIR")
    for path in files.values():
        _duration(path)
        _check_audible(path, "rir")
    return {"rirs": _write(os.path.join(data_root, "rirs"), files)}
