"""avtk.io.media: m4a/mp4 audio and video through PyAV, and container files in wav.scp (load_audio, compute-fbank)."""
import os
import sys

import kaldiio
import numpy as np
import pytest
import torch

from avtk.errors import AvtkError
from avtk.features import KaldiFbank
from avtk.io import media
from avtk.io.audio import AudioReader, load_audio, write_wav
from conftest import avtk

av = pytest.importorskip("av")

SR = 16000


def _signal(seconds, sr=SR, seed=0):
    """Tones under a slow envelope plus a little noise: one unambiguous alignment, unlike a pure sine."""
    t = np.arange(int(round(seconds * sr))) / sr
    rng = np.random.default_rng(seed)
    envelope = 0.5 + 0.4 * np.sin(2 * np.pi * 0.7 * t + 0.3)
    x = envelope * (0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t + 1.0))
    return (x + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def _corr(a, b):
    return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))


def _best_lag(x, y, max_lag=2048):
    """The lag L maximising the correlation of x[n] with y[n + L]."""
    n = min(len(x), len(y)) - max_lag
    lags = range(-max_lag, max_lag + 1)
    scores = [_corr(x[max_lag:n], y[max_lag + lag:n + lag]) for lag in lags]
    return lags[int(np.argmax(scores))]


def _leftovers(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def _frames(count, height=48, width=64):
    """Frames whose colour encodes their index: red 3*i, green 255 - 3*i, blue 128."""
    for i in range(count):
        image = np.empty((height, width, 3), np.uint8)
        image[..., 0], image[..., 1], image[..., 2] = 3 * i, 255 - 3 * i, 128
        yield image


# ---------------------------------------------------------------------------------------------- audio


def test_m4a_round_trip_removes_aac_priming_and_padding(tmp_path):
    x = _signal(2.3)  # 36,800 samples: not a whole number of 1024-sample AAC frames
    path = tmp_path / "a.m4a"
    media.write_audio(path, x)
    assert _leftovers(tmp_path) == []

    # How the priming is recorded: the encoder's first packet (1024 samples) lies before time 0 (negative pts,
    # from the mp4 edit list), and the stream's duration is that of the original, not of whole AAC frames.
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.rate, stream.start_time) == ("aac", SR, 0)
        assert stream.duration * stream.time_base == pytest.approx(len(x) / SR)
        packets = [p for p in container.demux(stream) if p.size]
        assert packets[0].pts * packets[0].time_base == pytest.approx(-1024 / SR)
    # ...and decoding drops it: the decoded audio lines up with the original at lag 0, with its length.
    y = media.decode_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - len(x)) <= SR * 0.002  # within 2 ms (in fact exact)
    assert _best_lag(x, y) == 0
    assert _corr(x, y[:len(x)]) > 0.99
    assert np.abs(y).max() <= 1.0


def test_decode_audio_downmixes_and_resamples_any_container(tmp_path):
    sr = 44100
    left, right = _signal(1.5, sr, seed=1), _signal(1.5, sr, seed=2)
    stereo = np.stack([left, right], axis=1)
    want = torch.from_numpy((left + right) / 2)
    from avtk.io.resample import resample
    want = resample(want, sr, SR).numpy()
    for name, codec, floor in (("s.m4a", "aac", 0.99), ("s.flac", "flac", 0.99999), ("s.mkv", "aac", 0.99)):
        media.write_audio(tmp_path / name, stereo, sr, codec=codec)
        data, rate = media.read_audio(tmp_path / name)
        # Matroska records the AAC priming (dropped) but not the end padding (kept: < 1024 samples)
        padding = data.shape[0] - len(left)
        assert rate == sr and data.shape[1] == 2 and (0 <= padding < 1024 if name == "s.mkv" else padding == 0)
        y = media.decode_audio(tmp_path / name)  # mean of the channels, resampled to 16 kHz
        assert len(y) == -(-data.shape[0] * SR // sr)
        assert _best_lag(want, y, 64) == 0, name
        assert _corr(want[200:-200], y[200:len(want) - 200]) > floor, name
    # lossless: FLAC decoded by PyAV is libsndfile's 16-bit scaling (x / 32768) of the written samples
    data, _ = media.read_audio(tmp_path / "s.flac")
    pcm = np.round(np.clip(stereo, -1, 1) * 32768).clip(-32768, 32767) / 32768
    np.testing.assert_allclose(data, pcm, atol=1e-6)
    assert media.decode_audio(tmp_path / "s.flac", sample_rate=None).shape == (len(left),)  # native rate


def test_wav_scp_with_m4a_entries(tmp_path):
    x, z = _signal(1.2, seed=3), _signal(0.9, seed=4)
    media.write_audio(tmp_path / "a.m4a", x)
    media.write_audio(tmp_path / "B.M4A", z)  # extensions are compared in lower case
    write_wav(tmp_path / "c.wav", x)
    (tmp_path / "wav.scp").write_text(f"a {tmp_path / 'a.m4a'}\nb {tmp_path / 'B.M4A'}\nc {tmp_path / 'c.wav'}\n")
    got = dict(AudioReader(tmp_path))
    assert list(got) == ["a", "b", "c"]
    assert got["a"].dtype == np.float32 and len(got["a"]) == len(x) and len(got["b"]) == len(z)
    assert _corr(x, got["a"]) > 0.99 and _corr(z, got["b"]) > 0.99
    np.testing.assert_array_equal(load_audio("a", str(tmp_path / "a.m4a")), got["a"])
    np.testing.assert_array_equal(got["a"], media.decode_audio(tmp_path / "a.m4a"))
    # segments cut the decoded samples as they cut a wav's
    np.testing.assert_array_equal(load_audio("a", str(tmp_path / "a.m4a"), segment=(0.25, 0.5)),
                                  got["a"][4000:8000])

    # The rules of wav files hold: channel 0 of a stereo file, and another rate only with resample=True.
    stereo = np.stack([x, -x], axis=1)
    media.write_audio(tmp_path / "st.m4a", stereo)
    assert _corr(x, load_audio("s", str(tmp_path / "st.m4a"))) > 0.99  # channel 0, not the (silent) mix
    slow = tmp_path / "slow.m4a"
    media.write_audio(slow, _signal(1.0, 22050), 22050)
    with pytest.raises(AvtkError, match=f"utterance u: {slow} has sample rate 22050 Hz, expected 16000 Hz"):
        load_audio("u", str(slow))
    assert load_audio("u", str(slow), resample=True).shape == (16000,)


def test_compute_fbank_reads_m4a(tmp_path):
    x = _signal(1.5, seed=5)
    m4a = tmp_path / "wav" / "id00001" / "vid" / "00001.m4a"
    media.write_audio(m4a, x)
    (tmp_path / "wav.scp").write_text(f"id00001-vid-00001 {m4a}\n")
    out = tmp_path / "fbank"
    avtk("compute-fbank", f"scp:{tmp_path / 'wav.scp'}", f"ark,scp:{out}/f.ark,{out}/f.scp")
    feats = kaldiio.load_scp(str(out / "f.scp"))
    assert list(feats) == ["id00001-vid-00001"]
    want, _ = KaldiFbank()(torch.from_numpy(media.decode_audio(m4a))[None])
    np.testing.assert_allclose(feats["id00001-vid-00001"], want[0].numpy(), atol=1e-4, rtol=0)


def test_bad_media_files_name_the_file(tmp_path):
    good = tmp_path / "good.m4a"
    media.write_audio(good, _signal(2.0))
    data = good.read_bytes()
    truncated = tmp_path / "trunc.m4a"
    truncated.write_bytes(data[:len(data) // 2])  # the moov atom (index) is at the end: gone
    with pytest.raises(AvtkError, match=f"utterance u1: cannot read audio file {truncated}: Invalid data"):
        load_audio("u1", str(truncated))
    # moov atom first ("faststart", as streamed files are): a cut mid-data is corrupt or short data
    faststart = tmp_path / "fs.m4a"
    with av.open(str(faststart), "w", format="ipod", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("aac", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray(_signal(2.0)[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = SR, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    assert len(media.decode_audio(faststart)) == 2 * SR
    data = faststart.read_bytes()
    for cut in (0.5, 0.7):
        faststart.write_bytes(data[:int(len(data) * cut)])
        reason = r"(corrupt data after \d\.\d+ s|truncated: decoded \d\.\d+ s of the 2\.000 s)"
        with pytest.raises(AvtkError, match=f"cannot read audio file {faststart}: {reason}"):
            media.decode_audio(faststart)
    missing = tmp_path / "missing.m4a"
    with pytest.raises(AvtkError, match=f"audio file {missing} does not exist"):
        media.decode_audio(missing)
    silent_video = tmp_path / "v.mp4"
    media.write_video(silent_video, _frames(5))
    with pytest.raises(AvtkError, match=f"cannot read audio file {silent_video}: it has no audio stream"):
        media.decode_audio(silent_video)
    with pytest.raises(AvtkError, match=f"cannot read video file {good}: it has no video stream"):
        list(media.video_frames(good))

    # Through a command: exit status 1, one ERROR line naming the utterance and the file, no traceback.
    scp = tmp_path / "wav.scp"
    scp.write_text(f"u0 {good}\nu1 {truncated}\n")
    proc = avtk("compute-fbank", f"scp:{scp}", f"ark,scp:{tmp_path}/o.ark,{tmp_path}/o.scp", check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "utterance u1" in errors[0] and str(truncated) in errors[0], proc.stderr
    assert not (tmp_path / "o.ark").exists() and not (tmp_path / "o.scp").exists()


def test_missing_pyav_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    with pytest.raises(AvtkError, match=r"x\.m4a: .*needs PyAV: pip install av"):
        media.decode_audio(tmp_path / "x.m4a")
    with pytest.raises(AvtkError, match=r"needs PyAV"):
        media.write_audio(tmp_path / "x.m4a", np.zeros(100, np.float32))
    assert not (tmp_path / "x.m4a").exists()


# ---------------------------------------------------------------------------------------------- video


@pytest.mark.parametrize("codec", [None, "mpeg4"], ids=["default", "mpeg4"])
def test_video_round_trip_one_frame_every_0_4_s(tmp_path, codec):
    wave = _signal(3.0, seed=6)
    path = tmp_path / "v.mp4"
    media.write_video(path, _frames(75), fps=25, wave=wave, codec=codec)  # 3 s at 25 fps, with audio
    assert _leftovers(tmp_path) == []
    with av.open(str(path)) as container:
        want = codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4")
        assert container.streams.video[0].codec_context.name == {"libx264": "h264"}.get(want, want)
        assert container.streams.video[0].frames == 75

    got = list(media.video_frames(path, interval=0.4))
    assert [t for t, _ in got] == pytest.approx([0.4, 0.8, 1.2, 1.6, 2.0, 2.4, 2.8])
    assert [media.frame_name(t) for t, _ in got] == [f"{10 * k:04d}.jpg" for k in range(1, 8)]
    for k, (_, image) in enumerate(got, start=1):
        assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
        index = 10 * k
        mean = image.reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(mean, [3 * index, 255 - 3 * index, 128], atol=4)  # YUV 4:2:0 rounding

    audio = media.decode_audio(path)
    assert len(audio) == len(wave) and _best_lag(wave, audio) == 0 and _corr(wave, audio) > 0.99
    np.testing.assert_array_equal(load_audio("v", str(path)), audio)  # an mp4 in a wav.scp: its audio

    # another interval; nearest frames: 0.3 s is frame 7.5 -> the later, 8 (0.32 s); 0.6 -> 15; ...
    times = [t for t, _ in media.video_frames(path, interval=0.3)]
    assert len(times) == 9 and times[0] == pytest.approx(0.32) and times[1] == pytest.approx(0.6)


def test_frame_name_and_write_errors(tmp_path):
    assert media.frame_name(0.4) == "0010.jpg" and media.frame_name(2.8) == "0070.jpg"
    assert media.frame_name(0.0) == "0000.jpg" and media.frame_name(1.0, fps=30) == "0030.jpg"
    with pytest.raises(AvtkError, match="width and height must be even"):
        media.write_video(tmp_path / "odd.mp4", [np.zeros((5, 6, 3), np.uint8)])
    with pytest.raises(AvtkError, match="frame 1 is 8x6, the first was 6x4"):
        media.write_video(tmp_path / "bad.mp4", [np.zeros((4, 6, 3), np.uint8), np.zeros((6, 8, 3), np.uint8)])
    with pytest.raises(AvtkError, match="cannot choose a container for extension '.xyz'"):
        media.write_audio(tmp_path / "a.xyz", np.zeros(100, np.float32))
    assert sorted(os.listdir(tmp_path)) == []  # failures leave nothing, not even temporary files
