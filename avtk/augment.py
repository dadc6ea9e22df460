"""Training-time augmentation: MUSAN noise/music/babble, RIR reverberation, SpecAugment.

`WaveAugment` applies exactly one augmentation type per training crop, chosen uniformly from those it can
apply (the seed's recipe):

  * ``clean``: the input unchanged;
  * ``reverb``: a random room impulse response, normalised to unit energy, convolved with the input (FFT);
    the first T samples of the full convolution are kept, so the direct path stays aligned;
  * ``noise``: one noise file at an SNR drawn uniformly from `noise_snr`;
  * ``babble``: `babble_count` speech files (a count drawn uniformly, inclusive) SUMMED first and then scaled
    as one signal to an SNR drawn from `babble_snr` (the babble as a whole, not each talker, is at that SNR);
  * ``music``: one music file at an SNR drawn from `music_snr`;
  * ``babble_music``: babble and music both, each at its own SNR relative to the clean input.

Every noise segment is a random T-sample crop of its source file; a source shorter than T is wrap-padded
(repeated) to T. A plain 16 kHz file (no pipe, media file or segment) at least T long is read as that crop
only (`avtk.io.audio.read_span`, a seek; its length from the header, read once per process), never whole:
MUSAN's music and speech files last minutes. Other sources are read whole and cached while `cache_mb`
allows; the crop is the same either way (the start is drawn from the generator before the read).
Levels follow the seed: segment dB = 10·log10(mean(x²) + 1e-4) and the noise gain is
sqrt(10^((dB_clean − dB_noise − snr)/10)). Outputs are not clipped or renormalised.

A source recording that is silent (every sample zero) is an error naming it, whatever its kind (noise, music,
speech, RIR): scaled to an SNR or normalised to unit energy it would add nothing, and the augmentation would
silently be a no-op. (A crop read alone that is all zero makes the whole file be read once to tell a silent
file from a silent stretch.) Samples that are not finite are refused by the reader (avtk.io.audio).
Sources are Kaldi data directories (``wav.scp``, read through `avtk.io.audio`, 16 kHz) such as
data/musan_noise, data/musan_music, data/musan_speech and data/rirs; `avtk make-augment-sources` writes
synthetic ones (avtk.synth.augment_sources). All randomness comes from the generator passed to each call, so a sample's augmentation is
reproducible from its own seed whatever the number of data-loader workers.

Speed perturbation (`speed_crop`, REFERENCE §4; applied by avtk.train.data before these): a crop played at
speed s, pitch and tempo both changed as sox `speed` does, and counted as a new speaker (`speed_speakers`).
"""
import logging
import os

import numpy as np
import torch

from avtk.errors import AvtkError
from avtk.io.audio import SAMPLE_RATE, file_info, is_media, load_audio, read_span, read_wav_scp
from avtk.io.resample import resample

log = logging.getLogger(__name__)

TYPES = ("clean", "reverb", "noise", "babble", "music", "babble_music")
# The source directories each type needs (constructor argument names).
NEEDS = {
    "clean": (),
    "reverb": ("rir_dir",),
    "noise": ("noise_dir",),
    "babble": ("speech_dir",),
    "music": ("music_dir",),
    "babble_music": ("speech_dir", "music_dir"),
}
LEVEL_FLOOR = 1e-4  # added to the mean square before taking dB, as the seed does
PREPARE_HINT = ("make the augmentation data dirs with `avtk prepare-augment --musan DIR --rirs DIR DATA`, or "
                "stage 0 of egs/voxceleb/run.sh with --musan/--rirs")


def segment_db(x):
    """The seed's level of a segment: 10·log10(mean(x²) + 1e-4), computed in float64."""
    x = np.asarray(x, dtype=np.float64)
    return float(10.0 * np.log10(np.mean(x * x) + LEVEL_FLOOR))


def noise_gain(clean_db, noise_db, snr):
    """The amplitude gain that puts a noise of level noise_db at `snr` dB below a clean signal of clean_db."""
    return float(np.sqrt(10.0 ** ((clean_db - noise_db - snr) / 10.0)))


def crop_or_wrap(x, length, rng):
    """A random `length`-sample crop of x; a shorter x is wrap-padded (repeated from its start) to length."""
    n = len(x)
    if n < length:
        return np.pad(x, (0, length - n), mode="wrap")
    start = int(rng.integers(0, n - length + 1))
    return x[start:start + length]


def fft_convolve(x, h):
    """The full linear convolution of x and h (float64), computed with FFTs."""
    n = len(x) + len(h) - 1
    n_fft = 1 << max(0, int(np.ceil(np.log2(n))))
    y = np.fft.irfft(np.fft.rfft(x, n_fft) * np.fft.rfft(h, n_fft), n_fft)
    return y[:n]


def check_audible(blocks, kind, location, where=""):
    """The one rule for silent augmentation sources (here and `avtk prepare-augment`): AvtkError
    `{where}{kind} source {location} is silent (all samples zero) ...` when every sample of `blocks` (an
    iterable of arrays: a whole wave, or a file read in chunks) is zero. Stops at the first block with a
    non-zero sample, so an audible file is rarely read past its first chunk."""
    for block in blocks:
        if np.any(block):
            return
    raise AvtkError(f"{where}{kind} source {location} is silent (all samples zero): it cannot augment anything; "
                    "remove it from the source dir")


class _Source:
    """The recordings of one source data dir, read through avtk.io.audio; cached while the budget allows."""

    def __init__(self, kind, data_dir, budget):
        self.kind = kind
        self.data_dir = os.fspath(data_dir)
        if not os.path.isdir(self.data_dir):
            raise AvtkError(f"{self.data_dir}: {kind} source data dir does not exist; {PREPARE_HINT}")
        wav_scp = os.path.join(self.data_dir, "wav.scp")
        if not os.path.isfile(wav_scp):
            raise AvtkError(f"{wav_scp}: {kind} source data dir has no wav.scp; {PREPARE_HINT}")
        sources = read_wav_scp(self.data_dir)
        if not sources:
            raise AvtkError(f"{wav_scp}: {kind} source data dir is empty (no recordings)")
        self.utts = sorted(sources)
        self.sources = sources
        self.budget = budget
        self.cache = {}  # utt -> whole float32 wave (sources read whole)
        self.lengths = {}  # utt -> samples of a plain 16 kHz file (from its header), or None: read it whole
        self.audible = set()  # utts whose whole file was found not silent after a silent crop

    def __len__(self):
        return len(self.utts)

    def get(self, index, keep=True):
        """(utt, whole float32 wave) of recording `index`, cached while the budget allows (`keep`)."""
        utt = self.utts[index]
        wave = self.cache.get(utt)
        if wave is None:
            wave = load_audio(utt, self.sources[utt])
            # finite samples are checked by the reader; silence would add nothing
            check_audible((wave,), self.kind, f"{self.sources[utt].location} of {self.data_dir}", f"utterance {utt}: ")
            if keep and self.budget.take(wave.nbytes):
                self.cache[utt] = wave
        return utt, wave

    def _length(self, utt):
        """Samples of utt's file when a crop of it can be read alone (a plain 16 kHz file), else None."""
        if utt not in self.lengths:
            source = self.sources[utt]
            plain = source.segment is None and not source.is_pipe and not is_media(source.location)
            frames, rate = file_info(source.location, utt) if plain else (0, 0)
            self.lengths[utt] = frames if rate == SAMPLE_RATE else None  # another rate: the reader's error
        return self.lengths[utt]

    def crop(self, index, length, rng):
        """A random `length`-sample float64 crop of recording `index`, as `crop_or_wrap` of the whole file with
        the same generator gives, but read alone (`read_span`) from a plain file at least `length` long."""
        utt = self.utts[index]
        n = None if utt in self.cache else self._length(utt)
        if n is None or n < length:
            return crop_or_wrap(self.get(index)[1], length, rng).astype(np.float64)
        start = int(rng.integers(0, n - length + 1))
        segment, _ = read_span(self.sources[utt].location, start, length, utt)
        if utt not in self.audible and not np.any(segment):
            self.get(index, keep=False)  # an error if the whole file is silent
            self.audible.add(utt)
        return segment.astype(np.float64)

    def pick(self, rng):
        return self.get(int(rng.integers(len(self.utts))))

    def pick_crop(self, length, rng):
        return self.crop(int(rng.integers(len(self.utts))), length, rng)


class _Budget:
    """Bytes of source audio that may still be kept in memory (shared by all sources of one WaveAugment)."""

    def __init__(self, nbytes):
        self.left = int(nbytes)

    def take(self, nbytes):
        if nbytes > self.left:
            return False
        self.left -= nbytes
        return True


def _check_range(name, value, low_limit=None, integer=False):
    try:
        low, high = (int(v) if integer else float(v) for v in value)
    except (TypeError, ValueError):
        raise AvtkError(f"augmentation {name} must be a pair (low, high), got {value!r}") from None
    if not low <= high or (low_limit is not None and low < low_limit) or not np.isfinite([low, high]).all():
        raise AvtkError(f"augmentation {name} must satisfy {'' if low_limit is None else f'{low_limit} <= '}"
                        f"low <= high, got {value!r}")
    return low, high


class WaveAugment:
    """One random augmentation per waveform crop: clean, reverb, noise, babble, music or babble_music.

    noise_dir, music_dir, speech_dir, rir_dir: Kaldi data dirs of the sources (e.g. data/musan_noise,
    data/musan_music, data/musan_speech, data/rirs). A type whose source dir is not given (None) is dropped
    from the choice (babble_music needs both speech_dir and music_dir); a dir that is given but missing or
    has no recordings is an AvtkError naming it.
    types: the types to choose among, uniformly; an unknown name is an error.
    noise_snr, music_snr, babble_snr: (low, high) dB, each SNR uniform in [low, high].
    babble_count: (low, high) talkers per babble, uniform over the integers low..high inclusive (drawn with
    replacement when the speech dir has fewer files).
    cache_mb: sources read whole (RIRs, files shorter than a crop, pipes, media files, segments) kept in
    memory once read, in MiB, per process (each data-loader worker has its own, kept across epochs by the
    Trainer's persistent workers); once it is full, further files are read each time they are picked. Crops
    of long plain files are read alone each time (module doc), from the page cache once the OS holds them.

    Call with (wave float32 (T,), rng np.random.Generator) -> float32 (T,). `last_type` records the type
    chosen by the latest call.
    """

    def __init__(self, noise_dir=None, music_dir=None, speech_dir=None, rir_dir=None, types=TYPES,
                 noise_snr=(0, 15), music_snr=(5, 15), babble_snr=(13, 20), babble_count=(3, 8), cache_mb=512):
        if isinstance(types, str):
            types = [t for t in types.replace(",", " ").split() if t]
        unknown = [t for t in types if t not in NEEDS]
        if unknown:
            raise AvtkError(f"unknown augmentation type(s) {', '.join(map(repr, unknown))} "
                            f"(known: {', '.join(TYPES)})")
        if cache_mb < 0:
            raise AvtkError(f"augmentation cache_mb must be >= 0, got {cache_mb}")
        self.noise_snr = _check_range("noise_snr", noise_snr)
        self.music_snr = _check_range("music_snr", music_snr)
        self.babble_snr = _check_range("babble_snr", babble_snr)
        self.babble_count = _check_range("babble_count", babble_count, low_limit=1, integer=True)
        dirs = {"noise_dir": noise_dir, "music_dir": music_dir, "speech_dir": speech_dir, "rir_dir": rir_dir}
        budget = _Budget(cache_mb * 1024 * 1024)
        self.sources = {}
        for arg, path in dirs.items():
            if path is not None:
                self.sources[arg] = _Source(arg[:-4], path, budget)
        self.types = tuple(dict.fromkeys(t for t in types if all(n in self.sources for n in NEEDS[t])))
        dropped = [t for t in dict.fromkeys(types) if t not in self.types]
        if dropped:
            log.info("augmentation types without a source dir are not used: %s", ", ".join(dropped))
        if not self.types:
            raise AvtkError(f"no augmentation type of {', '.join(types) or '(none)'} has its source dirs")
        self.last_type = None

    def __repr__(self):
        return f"WaveAugment(types={self.types}, sources={ {k: s.data_dir for k, s in self.sources.items()} })"

    def __call__(self, wave, rng):
        kind = self.types[int(rng.integers(len(self.types)))]
        self.last_type = kind
        return self.apply(kind, wave, rng)

    def apply(self, kind, wave, rng):
        """Apply one named type (which must be among `types`) to wave; float32 of the same length."""
        if kind not in self.types:
            raise AvtkError(f"augmentation type {kind!r} is not available (available: {', '.join(self.types)})")
        x = np.asarray(wave, dtype=np.float32)
        if x.ndim != 1 or len(x) == 0:
            raise AvtkError(f"augmentation expects a non-empty 1-D waveform, got shape {x.shape}")
        if kind == "clean":
            return x.copy()
        if kind == "reverb":
            return self._reverb(x, rng)
        clean_db = segment_db(x)
        added = np.zeros(len(x), dtype=np.float64)
        if kind in ("babble", "babble_music"):
            added += self._babble(clean_db, len(x), rng)
        if kind in ("noise",):
            added += self._additive("noise_dir", self.noise_snr, clean_db, len(x), rng)
        if kind in ("music", "babble_music"):
            added += self._additive("music_dir", self.music_snr, clean_db, len(x), rng)
        return (x + added).astype(np.float32)

    def _reverb(self, x, rng):
        source = self.sources["rir_dir"]
        _, rir = source.pick(rng)  # not silent (_Source.get)
        rir = np.asarray(rir, dtype=np.float64)
        rir /= np.sqrt(np.sum(rir ** 2))
        return fft_convolve(x.astype(np.float64), rir)[:len(x)].astype(np.float32)

    def _additive(self, arg, snr_range, clean_db, length, rng):
        segment = self.sources[arg].pick_crop(length, rng)
        snr = float(rng.uniform(*snr_range))
        return noise_gain(clean_db, segment_db(segment), snr) * segment

    def _babble(self, clean_db, length, rng):
        source = self.sources["speech_dir"]
        count = int(rng.integers(self.babble_count[0], self.babble_count[1] + 1))
        picks = rng.choice(len(source), count, replace=count > len(source))
        babble = np.zeros(length, dtype=np.float64)
        for index in picks:
            babble += source.crop(int(index), length, rng)
        snr = float(rng.uniform(*self.babble_snr))
        return noise_gain(clean_db, segment_db(babble), snr) * babble


def speed_crop(wave, length, speed, rng):
    """A random `length`-sample crop of wave (float32 (T,), 16 kHz) played at `speed`; float32 (length,).

    Speed s plays the recording s times as fast, pitch and tempo together (sox `speed` then a resample back to
    16 kHz): ceil(length·s) samples are cropped (`crop_or_wrap`, one start drawn from rng), taken as recorded at
    16000·s Hz and resampled to 16 kHz (`avtk.io.resample.resample`), which gives at least `length` samples; the
    first `length` are kept. Speed 1 is the plain crop. 16000·s must be a whole number of Hz (the config allows
    multiples of 0.01, so the resampler's filter bank stays small).
    """
    if speed == 1:
        return np.asarray(crop_or_wrap(wave, length, rng), dtype=np.float32)
    rate = int(round(SAMPLE_RATE * speed))
    if rate <= 0 or abs(rate - SAMPLE_RATE * speed) > 1e-6:
        raise AvtkError(f"speed {speed!r}: 16000 x speed must be a whole number of Hz")
    crop = crop_or_wrap(np.asarray(wave, dtype=np.float32), int(np.ceil(length * speed - 1e-9)), rng)
    return resample(torch.from_numpy(np.ascontiguousarray(crop)), rate, SAMPLE_RATE)[:length].numpy()


def speed_speakers(speakers, speeds):
    """The classes of a training with speed perturbation: for each speed in order, every speaker, named as Kaldi
    names perturbed copies (`spk` at speed 1, `sp0.9-spk` at 0.9); a sample of speaker index i at speeds[k] has
    label i + len(speakers)·k. Without speeds (empty), the speakers themselves."""
    speakers = list(speakers)
    if not speeds:
        return speakers
    return [spk if speed == 1 else f"sp{speed:g}-{spk}" for speed in speeds for spk in speakers]


def spec_augment(feats, rng, max_time_frac=0.1, max_time=20, max_freq=8):
    """One time mask and one frequency mask on (frames T, bins F) features; a new tensor, shapes unchanged.

    The time mask is w frames wide, w uniform in [0, min(max_time, int(max_time_frac·T))); the frequency mask
    is w bins wide, w uniform in [0, min(max_freq, F)); each starts uniformly where it fits. Masked values are
    set to zero, which is the mean, as features are mean-normalised before this. The defaults are the
    seed's: for a 200-frame crop, 0–19 frames and 0–7 bins.
    """
    if feats.dim() != 2:
        raise AvtkError(f"spec_augment expects (frames, bins) features, got shape {tuple(feats.shape)}")
    out = feats.clone()
    t0, t1, f0, f1 = _spec_spans(*out.shape, rng, max_time_frac, max_time, max_freq)
    out[t0:t1, :] = 0
    out[:, f0:f1] = 0
    return out


def _spec_spans(n_frames, n_bins, rng, max_time_frac, max_time, max_freq):
    """(time start, time end, bin start, bin end) of spec_augment's two masks, drawn from the numpy `rng`."""
    time_limit = min(int(max_time), int(max_time_frac * n_frames))
    width = int(rng.integers(0, time_limit)) if time_limit > 0 else 0
    t0 = int(rng.integers(0, n_frames - width + 1))
    t1 = t0 + width
    freq_limit = min(int(max_freq), n_bins)
    width = int(rng.integers(0, freq_limit)) if freq_limit > 0 else 0
    f0 = int(rng.integers(0, n_bins - width + 1))
    return t0, t1, f0, f0 + width


def spec_augment_batch(feats, rngs, max_time_frac=0.1, max_time=20, max_freq=8):
    """spec_augment on each item of (batch B, frames T, bins F) features at once: item i gets exactly the masks
    spec_augment(feats[i], rngs[i]) gives it (the same draws, on the host, from the B numpy generators), applied
    in one masked_fill on feats' device (no per-item kernels, no device sync). Returns a new tensor."""
    if feats.dim() != 3 or len(rngs) != feats.shape[0]:
        raise AvtkError(f"spec_augment_batch expects (batch, frames, bins) features and one generator per item, "
                        f"got shape {tuple(feats.shape)} and {len(rngs)} generators")
    spans = [_spec_spans(*feats.shape[1:], rng, max_time_frac, max_time, max_freq) for rng in rngs]
    spans = torch.tensor(spans, dtype=torch.long).to(feats.device, non_blocking=True)[:, :, None]  # (B, 4, 1)
    frame = torch.arange(feats.shape[1], device=feats.device)
    bin_ = torch.arange(feats.shape[2], device=feats.device)
    time_masked = (frame >= spans[:, 0]) & (frame < spans[:, 1])  # (B, T)
    freq_masked = (bin_ >= spans[:, 2]) & (bin_ < spans[:, 3])  # (B, F)
    return feats.masked_fill(time_masked[:, :, None] | freq_masked[:, None, :], 0.0)
