"""avtk prepare-augment: MUSAN and RIRS_NOISES trees in their download layouts -> the augmentation data dirs."""
import os

import numpy as np
import pytest
import soundfile as sf

from avtk.augment import WaveAugment
from conftest import avtk

MUSAN = [
    "noise/free-sound/noise-free-sound-0000", "noise/sound-bible/noise-sound-bible-0003",
    "music/fma/music-fma-0000", "music/hd-classical/music-hd-0001", "music/rfm/music-rfm-0002",
    "speech/librivox/speech-librivox-0000", "speech/us-gov/speech-us-gov-0001",
]
ROOMS = ("smallroom", "mediumroom", "largeroom")


def _wav(path, seconds, rate=16000, channels=1, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n = int(seconds * rate)
    x = np.random.default_rng(seed).normal(0, 0.1, (n, channels) if channels > 1 else n)
    sf.write(path, x.astype(np.float32), rate, subtype="PCM_16")


@pytest.fixture
def corpora(tmp_path):
    for i, stem in enumerate(MUSAN):
        _wav(tmp_path / "musan" / f"{stem}.wav", 1.0 + i * 0.25, seed=i)
    (tmp_path / "musan" / "README").write_text("MUSAN\n")
    (tmp_path / "musan" / "noise" / "free-sound" / "ANNOTATIONS").write_text("x\n")
    for r, room in enumerate(ROOMS):
        for k in (1, 2):
            _wav(tmp_path / "RIRS_NOISES" / "simulated_rirs" / room / f"Room00{k}" / f"Room00{k}-00001.wav", 0.3,
                 seed=10 + r * 2 + k)
    _wav(tmp_path / "RIRS_NOISES" / "real_rirs_isotropic_noises" / "air_binaural_1.wav", 0.3, channels=2)
    return tmp_path


def _table(path):
    return dict(line.split(maxsplit=1) for line in path.read_text().splitlines())


def test_layouts_become_validated_data_dirs(corpora):
    data = corpora / "data"
    avtk("prepare-augment", "--musan", corpora / "musan", "--rirs", corpora / "RIRS_NOISES", data)
    noise = _table(data / "musan_noise" / "wav.scp")
    assert sorted(noise) == ["noise-free-sound-0000", "noise-sound-bible-0003"]
    assert noise["noise-free-sound-0000"] == str(corpora / "musan/noise/free-sound/noise-free-sound-0000.wav")
    assert sorted(_table(data / "musan_music" / "wav.scp")) == ["music-fma-0000", "music-hd-0001", "music-rfm-0002"]
    assert sorted(_table(data / "musan_speech" / "wav.scp")) == ["speech-librivox-0000", "speech-us-gov-0001"]
    assert _table(data / "musan_music" / "utt2dur") == {"music-fma-0000": "1.500", "music-hd-0001": "1.750",
                                                      "music-rfm-0002": "2.000"}
    rirs = _table(data / "rirs" / "wav.scp")
    assert sorted(rirs) == sorted(f"{room}-Room00{k}-00001" for room in ROOMS for k in (1, 2))  # no real_rirs
    for name in ("musan_noise", "musan_music", "musan_speech", "rirs"):
        avtk("validate-data-dir", "--no-feats", "--check-audio", data / name)
        utt2spk = _table(data / name / "utt2spk")
        assert all(u == s for u, s in utt2spk.items())
    # and training augmentation reads them
    aug = WaveAugment(noise_dir=data / "musan_noise", music_dir=data / "musan_music",
                      speech_dir=data / "musan_speech", rir_dir=data / "rirs", babble_count=(1, 2))
    clean = np.random.default_rng(5).normal(0, 0.1, 32000).astype(np.float32)
    seen = set()
    for i in range(30):
        out = aug(clean, np.random.default_rng(i))
        assert out.shape == clean.shape and np.isfinite(out).all()
        seen.add(aug.last_type)
    assert seen >= {"reverb", "noise", "music", "babble"}


def test_room_choice(corpora):
    avtk("prepare-augment", "--rirs", corpora / "RIRS_NOISES", "--rir-rooms", "smallroom,mediumroom", corpora / "d")
    assert sorted(_table(corpora / "d" / "rirs" / "wav.scp")) == [
        "mediumroom-Room001-00001", "mediumroom-Room002-00001", "smallroom-Room001-00001", "smallroom-Room002-00001"]
    assert not (corpora / "d" / "musan_noise").exists()
    proc = avtk("prepare-augment", "--rirs", corpora / "RIRS_NOISES", "--rir-rooms", "hall", corpora / "d", check=False)
    assert proc.returncode == 1
    assert "ERROR [avtk prepare-augment] unknown RIR room set(s) ['hall']; choose from smallroom, mediumroom, largeroom" \
        in proc.stderr


@pytest.mark.parametrize("fault, message", [
    ("rate", "44100 Hz, 1 channel(s); augmentation sources must be 16000 Hz mono"),
    ("stereo", "16000 Hz, 2 channel(s); augmentation sources must be 16000 Hz mono"),
    ("corrupt", "cannot read the audio header"),
    ("empty", "no samples"),
])
def test_bad_file_is_named_and_nothing_is_written(corpora, fault, message):
    bad = corpora / "musan" / "music" / "fma" / "music-fma-0000.wav"
    if fault == "rate":
        _wav(bad, 1.0, rate=44100)
    elif fault == "stereo":
        _wav(bad, 1.0, channels=2)
    elif fault == "corrupt":
        bad.write_bytes(b"RIFF\x00\x00garbage")
    else:
        _wav(bad, 0.0)
    data = corpora / "data"
    proc = avtk("prepare-augment", "--musan", corpora / "musan", data, check=False)
    assert proc.returncode == 1, proc.stderr
    error = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(error) == 1 and f"{bad}: {message}" in error[0]
    assert "Traceback" not in proc.stderr
    assert not (data / "musan_music").exists()
    assert not data.exists() or not [p for p in data.iterdir() if p.name.startswith(".")]  # no temporary dir


def test_wrong_tree_and_duplicate_keys(corpora):
    proc = avtk("prepare-augment", "--musan", corpora / "RIRS_NOISES", corpora / "d", check=False)
    assert proc.returncode == 1
    assert f"{corpora / 'RIRS_NOISES' / 'noise'}: missing; a MUSAN tree has music/, noise/ and speech/" in proc.stderr
    proc = avtk("prepare-augment", "--rirs", corpora / "musan", corpora / "d", check=False)
    assert proc.returncode == 1 and "simulated_rirs: missing; give the RIRS_NOISES directory" in proc.stderr
    proc = avtk("prepare-augment", corpora / "d", check=False)
    assert proc.returncode == 1 and "give --musan DIR, --rirs DIR or both" in proc.stderr
    _wav(corpora / "musan" / "noise" / "sound-bible" / "noise-free-sound-0000.wav", 0.5)
    proc = avtk("prepare-augment", "--musan", corpora / "musan", corpora / "d", check=False)
    assert proc.returncode == 1
    assert "give the same key 'noise-free-sound-0000'" in proc.stderr


@pytest.mark.parametrize("which", ["musan", "rirs"])
def test_silent_source_is_refused_as_training_would_and_nothing_is_written(corpora, which):
    """A silent file (every sample zero) passed prepare-augment and failed `avtk train` hours later: the same
    rule (avtk.augment.check_audible), checked for every set before any data dir is written."""
    if which == "musan":
        bad = corpora / "musan" / "speech" / "us-gov" / "speech-us-gov-0001.wav"  # the last set written
        args, kind = ("--musan", corpora / "musan"), "speech"
    else:
        bad = corpora / "RIRS_NOISES" / "simulated_rirs" / "largeroom" / "Room002" / "Room002-00001.wav"
        args, kind = ("--rirs", corpora / "RIRS_NOISES"), "rir"
    sf.write(bad, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    quiet = corpora / "musan" / "noise" / "free-sound" / "noise-free-sound-0000.wav"
    sf.write(quiet, np.r_[np.zeros(16000 * 70), 1e-6].astype(np.float32), 16000, subtype="FLOAT")  # audible
    data = corpora / "data"
    proc = avtk("prepare-augment", *args, data, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(error) == 1 and error[0].endswith(
        f"ERROR [avtk prepare-augment] {kind} source {bad} is silent (all samples zero): it cannot augment "
        "anything; remove it from the source dir"), error
    assert not data.exists() or not list(data.iterdir())
    sf.write(bad, np.r_[np.zeros(100), 0.5].astype(np.float32), 16000, subtype="PCM_16")
    avtk("prepare-augment", *args, data)
