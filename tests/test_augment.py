"""Augmentation: the synthetic MUSAN/RIR stand-ins, WaveAugment (one type per sample, the seed's SNR formula,
summed babble, RIR convolution, reproducibility, source checks) and spec_augment."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from avtk.augment import TYPES, WaveAugment, spec_augment
from avtk.synth.augment_sources import make_augment_sources
from avtk.data.table import read_dict, utt2spk_to_spk2utt, write_dict
from avtk.errors import AvtkError
from avtk.io.audio import write_wav
from conftest import avtk, run

T = 32240  # a 2 s training crop plus 240 samples, as the trainer cuts them
SMALL = ["--num-noise", "6", "--num-music", "4", "--num-speech", "8", "--num-rirs", "5"]
DIRS = {"noise_dir": "musan_noise", "music_dir": "musan_music", "speech_dir": "musan_speech", "rir_dir": "rirs"}
RANGES = {"musan_noise": (3.0, 8.0), "musan_music": (5.0, 10.0), "musan_speech": (3.0, 8.0), "rirs": (0.3, 1.0)}


def db(x):
    """The REFERENCE segment level, written out independently of avtk."""
    x = np.asarray(x, dtype=np.float64)
    return 10 * np.log10(np.mean(x ** 2) + 1e-4)


def power_snr(clean, added):
    return 10 * np.log10(np.mean(np.asarray(clean, np.float64) ** 2) / np.mean(np.asarray(added, np.float64) ** 2))


def speech_like(seed=0, n=T, rms=0.3):
    """A loud clean test signal: amplitude-modulated harmonics, float32."""
    t = np.arange(n) / 16000
    x = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 20)) * (1.2 + np.sin(2 * np.pi * 3 * t))
    x = x + 0.05 * np.random.default_rng(seed).standard_normal(n)
    return (x / np.sqrt(np.mean(x ** 2)) * rms).astype(np.float32)


def make_sources(root, *extra):
    avtk("make-augment-sources", *extra, root / "out", root / "data")
    return root / "data"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return make_sources(tmp_path_factory.mktemp("aug"), "--seed", "3", *SMALL)


def all_dirs(data):
    return {arg: data / name for arg, name in DIRS.items()}


def write_source(root, name, waves):
    """A data dir `root/name` of the given {utt: wave} (written as 16-bit wavs); returns (dir, waves as read)."""
    wav_scp, read_back = {}, {}
    for utt, wave in waves.items():
        path = root / "wav" / name / f"{utt}.wav"
        write_wav(path, wave)
        wav_scp[utt] = str(path)
        read_back[utt] = sf.read(path, dtype="float32")[0].astype(np.float64)
    utt2spk = {u: u for u in wav_scp}
    write_dict(root / name / "wav.scp", wav_scp)
    write_dict(root / name / "utt2spk", utt2spk)
    write_dict(root / name / "spk2utt", utt2spk_to_spk2utt(utt2spk))
    return root / name, read_back


def find_segment(added, source):
    """(gain, segment) with added == gain * segment, segment a T-sample stretch of the source repeated
    end to end (a random crop, or the wrap-padded source); located by normalised cross-correlation."""
    n = len(added)
    tiled = np.tile(source, int(np.ceil((2 * n + len(source)) / len(source))))
    size = 1 << int(np.ceil(np.log2(len(tiled) + n)))
    corr = np.fft.irfft(np.fft.rfft(tiled, size) * np.conj(np.fft.rfft(added, size)), size)[:len(tiled) - n + 1]
    cumulative = np.concatenate([[0.0], np.cumsum(tiled ** 2)])
    energy = cumulative[n:] - cumulative[:-n]
    score = corr / np.sqrt(energy * np.sum(added ** 2) + 1e-30)
    start = int(np.argmax(score))
    segment = tiled[start:start + n]
    return float(np.dot(added, segment) / np.dot(segment, segment)), segment, float(score[start])


# ---------------------------------------------------------------------------------------------- generator

def test_sources_validate_with_the_stated_layout(sources):
    for name, (low, high) in RANGES.items():
        run(["validate_data_dir.sh", "--no-feats", "--check-audio", sources / name])
        wavs, durs = read_dict(sources / name / "wav.scp"), read_dict(sources / name / "utt2dur")
        utt2spk = read_dict(sources / name / "utt2spk")
        assert len(wavs) == {"musan_noise": 6, "musan_music": 4, "musan_speech": 8, "rirs": 5}[name]
        assert utt2spk == {u: u for u in wavs} and sorted(durs) == sorted(wavs)
        for utt, path in wavs.items():
            info = sf.info(path)
            assert info.samplerate == 16000 and info.channels == 1
            assert abs(info.duration - float(durs[utt])) < 1e-6 and low <= info.duration <= high
            wave = sf.read(path, dtype="float32")[0]
            assert np.isfinite(wave).all() and 0 < np.abs(wave).max() < 1.0


def test_rirs_decay_and_start_with_the_direct_path(sources):
    for path in read_dict(sources / "rirs" / "wav.scp").values():
        rir = sf.read(path)[0]
        first = int(np.argmax(np.abs(rir) > 0.5 * np.abs(rir).max()))
        assert first < 0.015 * 16000  # direct path within 15 ms (sources 0.5-4 m away)
        energy = np.cumsum(rir[::-1] ** 2)[::-1]  # Schroeder decay: the last 100 ms hold little energy
        assert energy[-1600] / energy[0] < 10 ** (-15 / 10)


def test_generator_is_deterministic_for_a_seed(tmp_path, sources):
    def digests(data):
        out = {}
        for name in RANGES:
            for utt, path in read_dict(data / name / "wav.scp").items():
                out[utt] = hashlib.sha1(Path(path).read_bytes()).hexdigest()
            out[name] = [(data / name / f).read_text() for f in ("utt2spk", "spk2utt", "utt2dur")]
        return out

    again = make_sources(tmp_path / "a", "--seed", "3", *SMALL)
    other = tmp_path / "b" / "data"
    make_augment_sources(tmp_path / "b" / "out", other, seed=4, num_noise=6, num_music=4, num_speech=8, num_rirs=5)
    assert digests(again) == digests(sources)
    changed = [k for k, v in digests(other).items() if v != digests(sources)[k]]
    assert len(changed) >= 20


def test_generator_rejects_zero_counts(tmp_path):
    proc = avtk("make-augment-sources", "--num-rirs", "0", tmp_path / "o", tmp_path / "d", check=False)
    assert proc.returncode == 1
    assert "ERROR [avtk make-augment-sources] argument --num-rirs: 0 is out of range (must be >= 1)" in proc.stderr


# ---------------------------------------------------------------------------------------------- WaveAugment

@pytest.mark.parametrize("kind", TYPES)
def test_each_type_alone_keeps_length_dtype_and_is_finite(sources, kind):
    aug = WaveAugment(**all_dirs(sources), types=(kind,))
    assert aug.types == (kind,)
    wave = speech_like()
    for seed in range(4):
        out = aug(wave, np.random.default_rng(seed))
        assert aug.last_type == kind
        assert out.shape == wave.shape and out.dtype == np.float32 and np.isfinite(out).all()
        if kind == "clean":
            assert np.array_equal(out, wave) and out is not wave
        else:
            assert not np.allclose(out, wave)
    short = speech_like(n=1000)  # shorter than every source: wrap-padding
    assert aug(short, np.random.default_rng(0)).shape == (1000,)


@pytest.mark.parametrize("kind,arg,snr", [("noise", "noise_snr", 0.0), ("noise", "noise_snr", 12.5),
                                          ("music", "music_snr", 5.0), ("music", "music_snr", 15.0)])
def test_noise_and_music_reach_the_fixed_snr(sources, kind, arg, snr):
    """The added signal is one source segment times the REFERENCE gain: dB(clean) - dB(segment) - 20 log10(gain)
    is the SNR asked for."""
    aug = WaveAugment(**all_dirs(sources), types=(kind,), **{arg: (snr, snr)})
    files = [sf.read(p)[0] for p in read_dict(sources / DIRS[f"{kind}_dir"] / "wav.scp").values()]
    wave = speech_like(1)
    for seed in range(3):
        added = aug(wave, np.random.default_rng(seed)).astype(np.float64) - wave
        gain, segment, score = max((find_segment(added, f) for f in files), key=lambda r: r[2])
        assert score > 0.9999
        assert abs(db(wave) - db(segment) - 20 * np.log10(gain) - snr) < 0.1


def test_snr_formula_exactly_on_known_sources(tmp_path):
    """Sources exactly T samples long: the segment is the whole file, so the output is known exactly."""
    rng = np.random.default_rng(5)
    noise_dir, noise = write_source(tmp_path, "noise", {"n1": 0.1 * rng.standard_normal(T)})
    music_dir, music = write_source(tmp_path, "music", {"m1": 0.3 * np.sin(np.arange(T) * 0.05)})
    wave = speech_like(2)
    for kind, src, snr in (("noise", noise["n1"], 7.0), ("music", music["m1"], 11.0)):
        aug = WaveAugment(noise_dir=noise_dir, music_dir=music_dir, types=(kind,),
                          noise_snr=(7, 7), music_snr=(11, 11))
        out = aug(wave, np.random.default_rng(0))
        gain = np.sqrt(10 ** ((db(wave) - db(src) - snr) / 10))
        np.testing.assert_allclose(out, wave + gain * src, atol=2e-6)
        # loud signals: the power ratio of clean to added is the SNR too
        assert abs(power_snr(wave, out - wave) - snr) < 0.1


def test_babble_is_summed_then_scaled(tmp_path):
    rng = np.random.default_rng(6)
    talkers = {f"s{i}": 0.1 * rng.standard_normal(T) for i in range(3)}
    speech_dir, talkers = write_source(tmp_path, "speech", talkers)
    music_dir, music = write_source(tmp_path, "music", {"m1": 0.08 * np.sin(np.arange(T) * 0.03)})
    babble = sum(talkers.values())
    wave = speech_like(3)
    aug = WaveAugment(speech_dir=speech_dir, music_dir=music_dir, types=("babble",), babble_count=(3, 3),
                      babble_snr=(15, 15))
    added = aug(wave, np.random.default_rng(0)).astype(np.float64) - wave
    gain = np.sqrt(10 ** ((db(wave) - db(babble) - 15) / 10))
    np.testing.assert_allclose(added, gain * babble, atol=2e-6)
    assert abs(power_snr(wave, added) - 15) < 0.1  # scaling each talker to 15 dB would give 15 - 4.8 dB
    # babble_music: babble and music each at its own SNR relative to the clean signal
    aug = WaveAugment(speech_dir=speech_dir, music_dir=music_dir, types=("babble_music",), babble_count=(3, 3),
                      babble_snr=(15, 15), music_snr=(9, 9))
    added = aug(wave, np.random.default_rng(1)).astype(np.float64) - wave
    music_gain = np.sqrt(10 ** ((db(wave) - db(music["m1"]) - 9) / 10))
    np.testing.assert_allclose(added, gain * babble + music_gain * music["m1"], atol=2e-6)


def test_babble_of_generated_talkers_reaches_the_snr(sources):
    aug = WaveAugment(speech_dir=sources / "musan_speech", types=("babble",), babble_snr=(14, 14))
    wave = speech_like(4)
    for seed in range(5):
        added = aug(wave, np.random.default_rng(seed)).astype(np.float64) - wave
        # the babble (3-8 loud talkers) is far above the 1e-4 floor, so its power ratio is the SNR
        assert abs(power_snr(wave, added) - 14) < 0.1


def test_reverb_normalises_the_rir_and_keeps_the_first_samples(tmp_path, sources):
    impulse = np.zeros(4000)
    impulse[100] = 0.5  # unit energy after normalisation: a pure 100-sample delay
    rir_dir, _ = write_source(tmp_path, "delay", {"d": impulse})
    wave = speech_like(5)
    out = WaveAugment(rir_dir=rir_dir, types=("reverb",))(wave, np.random.default_rng(0))
    assert out.shape == wave.shape
    np.testing.assert_allclose(out, np.concatenate([np.zeros(100), wave[:-100]]), atol=1e-6)

    path = sorted(read_dict(sources / "rirs" / "wav.scp").values())[0]
    write_dict(tmp_path / "one_rir" / "wav.scp", {"r": path})
    rir = sf.read(path)[0]
    out = WaveAugment(rir_dir=tmp_path / "one_rir", types=("reverb",))(wave, np.random.default_rng(0))
    expected = np.convolve(wave.astype(np.float64), rir / np.sqrt(np.sum(rir ** 2)))[:T]
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_same_seed_same_output_whatever_the_cache(sources):
    cached = WaveAugment(**all_dirs(sources))
    uncached = WaveAugment(**all_dirs(sources), cache_mb=0)
    wave = speech_like(6)
    seen = set()
    for seed in range(24):
        a = cached(wave, np.random.default_rng([9, seed]))
        b = uncached(wave, np.random.default_rng([9, seed]))
        assert cached.last_type == uncached.last_type
        seen.add(cached.last_type)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, cached(wave, np.random.default_rng([9, seed])))
    assert seen == set(TYPES)


def test_types_are_uniform_and_those_without_sources_never_chosen(sources):
    wave = speech_like(7, n=4000)
    aug = WaveAugment(**all_dirs(sources))
    counts = {t: 0 for t in TYPES}
    for seed in range(600):
        aug(wave, np.random.default_rng(seed))
        counts[aug.last_type] += 1
    assert all(70 <= c <= 130 for c in counts.values()), counts

    aug = WaveAugment(noise_dir=sources / "musan_noise", speech_dir=sources / "musan_speech")
    assert aug.types == ("clean", "noise", "babble")  # babble_music needs music too
    chosen = set()
    for seed in range(100):
        aug(wave, np.random.default_rng(seed))
        chosen.add(aug.last_type)
    assert chosen == {"clean", "noise", "babble"}
    with pytest.raises(AvtkError, match="'reverb' is not available"):
        aug.apply("reverb", wave, np.random.default_rng(0))


def test_missing_or_empty_source_dirs_are_errors_naming_them(tmp_path, sources):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(AvtkError, match=str(missing)):
        WaveAugment(noise_dir=sources / "musan_noise", rir_dir=missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AvtkError, match=f"{tmp_path / 'empty' / 'wav.scp'}: .*no wav.scp"):
        WaveAugment(music_dir=tmp_path / "empty")
    (tmp_path / "empty" / "wav.scp").write_text("")
    with pytest.raises(AvtkError, match=f"{tmp_path / 'empty' / 'wav.scp'}: music source data dir is empty"):
        WaveAugment(music_dir=tmp_path / "empty")
    write_dict(tmp_path / "broken" / "wav.scp", {"n1": str(tmp_path / "gone.wav")})
    aug = WaveAugment(noise_dir=tmp_path / "broken", types=("noise",))
    with pytest.raises(AvtkError, match=f"utterance n1: audio file {tmp_path / 'gone.wav'} does not exist"):
        aug(speech_like(), np.random.default_rng(0))
    with pytest.raises(AvtkError, match="unknown augmentation type"):
        WaveAugment(types=("clean", "echo"))


def test_silent_sources_are_errors_whatever_their_kind(tmp_path):
    """One rule for silent MUSAN files and silent RIRs: an error naming the file (a silent noise file made the
    augmentation a no-op without a word)."""
    for kind, arg, aug_type in (("noise", "noise_dir", "noise"), ("music", "music_dir", "music"),
                                ("rir", "rir_dir", "reverb")):
        silent = tmp_path / f"{kind}.wav"
        write_wav(silent, np.zeros(8000, np.float32))
        write_dict(tmp_path / kind / "wav.scp", {f"{kind}1": str(silent)})
        aug = WaveAugment(**{arg: tmp_path / kind}, types=(aug_type,))
        with pytest.raises(AvtkError) as err:
            aug(speech_like(), np.random.default_rng(0))
        assert str(err.value) == (f"utterance {kind}1: {kind} source {silent} of {tmp_path / kind} is silent (all "
                                  "samples zero): it cannot augment anything; remove it from the source dir")


# ---------------------------------------------------------------------------------------------- spec_augment

def test_spec_augment_masks_at_most_the_stated_widths():
    feats = torch.randn(200, 80) + 5.0  # no zeros of its own
    before = feats.clone()
    widest_time = widest_freq = 0
    for seed in range(400):
        out = spec_augment(feats, np.random.default_rng(seed))
        assert out.shape == feats.shape and out.dtype == feats.dtype and out is not feats
        zero = out == 0
        rows = int(zero.all(dim=1).sum())
        cols = int(zero.all(dim=0).sum())
        assert rows <= 19 and cols <= 7  # time 0-19 frames (10% of 200), frequency 0-7 bins
        assert torch.equal(out[~zero], feats[~zero])
        assert int(zero.sum()) == rows * 80 + cols * 200 - rows * cols
        widest_time, widest_freq = max(widest_time, rows), max(widest_freq, cols)
    assert torch.equal(feats, before)  # the input is untouched
    assert widest_time == 19 and widest_freq == 7
    short = spec_augment(torch.ones(9, 80), np.random.default_rng(0))  # 10% of 9 frames is 0: no time mask
    assert int((short == 0).all(dim=1).sum()) == 0
    capped = [int((spec_augment(torch.ones(1000, 40), np.random.default_rng(s)) == 0).all(dim=1).sum())
              for s in range(100)]
    assert max(capped) <= 19  # max_time caps 10% of 1000 frames
    same = spec_augment(feats, np.random.default_rng(11)), spec_augment(feats, np.random.default_rng(11))
    assert torch.equal(*same)


# ---------------------------------------------------------------------------------------------- crop reads

def old_whole_file_crop(path, length, rng):
    """The previous reading, written out: the whole file as float64, then a random crop (wrap-padded if short)."""
    x = sf.read(path, dtype="float32")[0].astype(np.float64)
    if len(x) < length:
        return np.pad(x, (0, length - len(x)), mode="wrap")
    start = int(rng.integers(0, len(x) - length + 1))
    return x[start:start + length]


def test_crops_read_alone_equal_crops_of_the_whole_file(tmp_path, monkeypatch):
    """A long source is read as its crop only (read_span: no whole-file read), and the noise added is the
    same as from the whole file with the same generator; a short one is read whole and wrap-padded."""
    import avtk.augment as augment

    rng = np.random.default_rng(3)
    long_wave = (0.1 * rng.standard_normal(16000 * 40)).astype(np.float32)
    short_wave = (0.1 * rng.standard_normal(9000)).astype(np.float32)
    music, read_back = write_source(tmp_path, "music", {"long": long_wave, "short": short_wave})
    whole_reads = []
    real_load = augment.load_audio
    monkeypatch.setattr(augment, "load_audio", lambda utt, src: whole_reads.append(utt) or real_load(utt, src))
    aug = WaveAugment(music_dir=music, types=("music",), music_snr=(5, 5))
    clean = speech_like(2)
    for seed in range(12):
        out = aug(clean, np.random.default_rng([1, seed]))
        rng = np.random.default_rng([1, seed])
        rng.integers(1)  # the type
        utt = ("long", "short")[int(rng.integers(2))]
        segment = old_whole_file_crop(tmp_path / "wav" / "music" / f"{utt}.wav", T, rng)
        expected = clean + np.sqrt(10 ** ((db(clean) - db(segment) - 5) / 10)) * segment
        np.testing.assert_allclose(out, expected, atol=1e-6)
    assert set(whole_reads) == {"short"} and whole_reads.count("short") == 1  # cached once; long never read whole


def test_a_silent_stretch_is_fine_a_silent_file_is_not(tmp_path):
    """A crop that is all zero is no error when the file has sound elsewhere; a long silent file still is."""
    stretch = np.zeros(16000 * 6, np.float32)
    stretch[-16000:] = 0.1 * np.random.default_rng(0).standard_normal(16000)
    noise, _ = write_source(tmp_path, "noise", {"quiet_start": stretch, "silent": np.zeros(16000 * 6, np.float32)})
    aug = WaveAugment(noise_dir=noise, types=("noise",))
    clean = speech_like(3)
    outcomes = set()
    for seed in range(40):
        try:
            out = aug(clean, np.random.default_rng(seed))
            outcomes.add("ok")
            assert np.isfinite(out).all()
        except AvtkError as err:
            assert str(err) == (f"utterance silent: noise source {tmp_path / 'wav' / 'noise' / 'silent.wav'} of "
                                f"{noise} is silent (all samples zero): it cannot augment anything; remove it "
                                "from the source dir")
            outcomes.add("error")
    assert outcomes == {"ok", "error"}


def test_missing_source_dir_says_how_to_make_it(tmp_path):
    """Through avtk train: one ERROR line naming the dir and the command that makes it."""
    missing = tmp_path / "data" / "musan_noise"
    proc = avtk("train", "--config", "/dev/null", "--train-data", tmp_path, "--exp", tmp_path / "exp",
                "data.input=wav", "augment.wave=true", f"augment.noise_dir={missing}", check=False)
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert errors[0].endswith(f"{missing}: noise source data dir does not exist; make the augmentation data dirs "
                              "with `avtk prepare-augment --musan DIR --rirs DIR DATA`, or stage 0 of "
                              "egs/voxceleb/run.sh with --musan/--rirs"), proc.stderr
    assert not list((tmp_path / "exp").iterdir())


def test_a_truncated_long_source_is_named_on_the_crop_path(tmp_path):
    """The crop read keeps the reader's rule for files cut short: an error naming the file and both lengths."""
    music, _ = write_source(tmp_path, "music", {"cut": (0.1 * np.random.default_rng(1).standard_normal(16000 * 5))
                                                .astype(np.float32)})
    path = tmp_path / "wav" / "music" / "cut.wav"
    path.write_bytes(path.read_bytes()[:44 + 2 * 16000 * 3])  # 3 of its 5 s
    aug = WaveAugment(music_dir=music, types=("music",))
    with pytest.raises(AvtkError) as err:
        aug(speech_like(), np.random.default_rng(0))
    assert str(err.value) == (f"utterance cut: audio file {path} is truncated: its header declares 5.000 s (80000 "
                              "samples) but the file holds 3.000 s (48000 samples)")
