"""avtk.io: Kaldi tables through kaldiio (atomic writes), audio from data directories, resampling, copy-feats."""
import math
import os
import shlex
import struct
import sys

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch

from avtk.errors import AvtkError
from avtk.io import ark as arkio
from avtk.io.ark import load_table, open_reader, open_writer
from avtk.io.audio import AudioReader, AudioSource, load_audio, read_wav_scp, write_wav
from avtk.io.resample import resample
from conftest import avtk, run


def _table(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "utt1": rng.standard_normal((7, 5)).astype(np.float32),
        "utt2": rng.standard_normal(16).astype(np.float32),
        "utt3": np.array([[1.0, -2.0, 0.0], [1e-30, 3.5e8, -0.1]], dtype=np.float32),  # integral + extreme
        "utt4": np.array([2.0, 1.5, -1e-7], dtype=np.float32),  # first value integral: still read as float
        "utt5": rng.standard_normal((1, 1)).astype(np.float32),
    }


def _assert_same(got, want):
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == np.float32, key
        assert got[key].shape == want[key].shape, key
        np.testing.assert_array_equal(got[key], want[key])


def _leftovers(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


# ---------------------------------------------------------------------------------------------- ark/scp


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_ark_scp_round_trip_through_kaldiio(tmp_path, text):
    table = _table()
    ark, scp = tmp_path / "out" / "feats.ark", tmp_path / "out" / "feats.scp"
    options = "ark,t,scp" if text else "ark,scp"
    with open_writer(f"{options}:{ark},{scp}") as writer:
        for key, value in table.items():
            writer[key] = value
        assert len(writer) == len(table) and "utt1" in writer

    lines = scp.read_text().splitlines()
    assert [line.split()[0] for line in lines] == list(table)
    assert all(line.split()[1].rsplit(":", 1)[0] == str(ark) for line in lines)  # the final name, not a temp

    _assert_same(dict(kaldiio.load_scp(str(scp))), table)
    _assert_same(dict(kaldiio.ReadHelper(f"scp:{scp}")), table)
    _assert_same(dict(kaldiio.ReadHelper(f"ark:{ark}")), table)
    # and avtk's own reader, in order
    assert [key for key, _ in open_reader(f"scp:{scp}")] == list(table)
    _assert_same(load_table(f"ark:{ark}"), table)
    _assert_same(load_table(f"scp:{scp}"), table)
    assert _leftovers(tmp_path / "out") == []


def test_ark_only_and_text_format(tmp_path):
    table = _table()
    with open_writer(f"ark:{tmp_path / 'a.ark'}") as writer:
        for key, value in table.items():
            writer[key] = value
    with open_writer(f"ark,t:{tmp_path / 't.ark'}") as writer:
        writer["m"] = np.array([[1, 2], [3, 4]], dtype=np.float32)
        writer["v"] = np.array([0.5, -1], dtype=np.float32)
    _assert_same(dict(kaldiio.ReadHelper(f"ark:{tmp_path / 'a.ark'}")), table)
    # Kaldi's text layout: "key  [\n  row \n  row ]\n" for a matrix, "key  [ v ]\n" for a vector
    assert (tmp_path / "t.ark").read_text() == "m  [\n  1.0 2.0 \n  3.0 4.0 ]\nv  [ 0.5 -1.0 ]\n"


def test_binary_layout_is_kaldis(tmp_path):
    m = np.arange(6, dtype=np.float32).reshape(2, 3)
    v = np.array([0.25, -4.0], dtype=np.float32)
    with open_writer(f"ark:{tmp_path / 'x.ark'}") as writer:
        writer["m"] = m
        writer["v"] = v
        writer["d"] = m.astype(np.float64)  # floats are stored as float32
    fm = b"m \0BFM \x04" + struct.pack("<i", 2) + b"\x04" + struct.pack("<i", 3) + m.astype("<f4").tobytes()
    fv = b"v \0BFV \x04" + struct.pack("<i", 2) + v.astype("<f4").tobytes()
    fd = b"d" + fm[1:]
    assert (tmp_path / "x.ark").read_bytes() == fm + fv + fd


def test_writer_is_atomic(tmp_path):
    out = tmp_path / "exp"
    ark, scp = out / "x.ark", out / "x.scp"
    with pytest.raises(RuntimeError, match="killed"):
        with open_writer(f"ark,scp:{ark},{scp}") as writer:
            writer["a"] = np.ones((2, 2), np.float32)
            # while writing, only temporary names exist
            assert not ark.exists() and not scp.exists()
            assert _leftovers(out) == sorted([os.path.basename(arkio.temp_name(ark)),
                                              os.path.basename(arkio.temp_name(scp))])
            raise RuntimeError("killed")
    assert os.listdir(out) == []

    # an earlier complete output survives a failed rewrite untouched
    with open_writer(f"ark,scp:{ark},{scp}") as writer:
        writer["old"] = np.zeros(3, np.float32)
    before = (ark.read_bytes(), scp.read_text())
    with pytest.raises(AvtkError, match="duplicate key 'new'"):
        with open_writer(f"ark,scp:{ark},{scp}") as writer:
            writer["new"] = np.ones(3, np.float32)
            writer["new"] = np.ones(3, np.float32)
    assert (ark.read_bytes(), scp.read_text()) == before
    assert _leftovers(out) == []


def test_writer_rejects_bad_specifiers_and_values(tmp_path):
    with pytest.raises(AvtkError, match="scp is written only alongside an ark"):
        open_writer(f"scp:{tmp_path / 'x.scp'}")
    with pytest.raises(AvtkError, match="invalid wspecifier"):
        open_writer(str(tmp_path / "x.ark"))
    with pytest.raises(AvtkError, match="needs the ark to be a file"):
        open_writer(f"ark,scp:-,{tmp_path / 'x.scp'}")
    with pytest.raises(AvtkError, match="shape"):
        with open_writer(f"ark:{tmp_path / 'y.ark'}") as writer:
            writer["a"] = np.zeros((2, 2, 2), np.float32)
    with pytest.raises(AvtkError, match="invalid key"):
        with open_writer(f"ark:{tmp_path / 'y.ark'}") as writer:
            writer["a b"] = np.zeros(2, np.float32)
    assert os.listdir(tmp_path) == []


def test_reader_errors_name_the_file_and_key(tmp_path):
    ark = tmp_path / "x.ark"
    with open_writer(f"ark,scp:{ark},{tmp_path / 'x.scp'}") as writer:
        writer["a"] = np.ones((4, 3), np.float32)
        writer["b"] = np.ones(10, np.float32)
    data = ark.read_bytes()

    with pytest.raises(AvtkError, match=r"ark:.*missing\.ark.*No such file"):
        load_table(f"ark:{tmp_path / 'missing.ark'}")
    with pytest.raises(AvtkError, match=r"missing\.scp"):
        load_table(f"scp:{tmp_path / 'missing.scp'}")

    (tmp_path / "trunc.ark").write_bytes(data[:-4])  # a vector cut short is not silently shorter
    with pytest.raises(AvtkError, match=r"trunc\.ark after key 'a'.*end of file"):
        load_table(f"ark:{tmp_path / 'trunc.ark'}")
    (tmp_path / "junk.ark").write_bytes(b"hello world\n")
    with pytest.raises(AvtkError, match=r"corrupt.*junk\.ark"):
        load_table(f"ark:{tmp_path / 'junk.ark'}")

    (tmp_path / "bad.scp").write_text(f"a {ark}:2\nb {tmp_path / 'gone.ark'}:2\n")
    with pytest.raises(AvtkError, match=r"key 'b'.*bad\.scp:2.*gone\.ark"):
        load_table(f"scp:{tmp_path / 'bad.scp'}")
    (tmp_path / "dup.scp").write_text(f"a {ark}:2\na {ark}:2\n")
    with pytest.raises(AvtkError, match="duplicate key 'a'"):
        load_table(f"scp:{tmp_path / 'dup.scp'}")
    with pytest.raises(AvtkError, match="cat .*nope.*exited with status 1.*No such file"):
        load_table(f"ark:cat {tmp_path / 'nope'} |")
    # permissive: stop at the first bad value
    assert list(load_table(f"ark,p:{tmp_path / 'trunc.ark'}")) == ["a"]


def test_pipes_in_and_out(tmp_path):
    table = _table()
    gz = tmp_path / "x.ark.gz"
    with open_writer(f"ark:| gzip -c > {gz}") as writer:
        for key, value in table.items():
            writer[key] = value
    _assert_same(load_table(f"ark:gunzip -c {gz} |"), table)


# ---------------------------------------------------------------------------------------------- copy-feats


def test_copy_feats_round_trip(tmp_path):
    table = _table()
    kaldiio.save_ark(str(tmp_path / "in.ark"), table, scp=str(tmp_path / "in.scp"))

    avtk("copy-feats", f"scp:{tmp_path / 'in.scp'}", f"ark,scp:{tmp_path / 'o/b.ark'},{tmp_path / 'o/b.scp'}")
    avtk("copy-feats", f"ark:{tmp_path / 'o/b.ark'}", f"ark,t:{tmp_path / 'o/t.ark'}")
    avtk("copy-feats", f"ark:{tmp_path / 'o/t.ark'}", f"ark,scp:{tmp_path / 'o/c.ark'},{tmp_path / 'o/c.scp'}")
    _assert_same(dict(kaldiio.load_scp(str(tmp_path / "o/b.scp"))), table)
    _assert_same(dict(kaldiio.load_scp(str(tmp_path / "o/c.scp"))), table)
    assert (tmp_path / "o/c.ark").read_bytes() == (tmp_path / "o/b.ark").read_bytes()

    # standard output, piped into another copy through standard input
    proc = run(["bash", "-c",
                f"{shlex.quote(sys.executable)} -m avtk.cli copy-feats ark:{tmp_path / 'in.ark'} ark:- | "
                f"{shlex.quote(sys.executable)} -m avtk.cli copy-feats ark:- ark,t:-"])
    assert proc.stdout == (tmp_path / "o/t.ark").read_text()


def test_copy_feats_failure_leaves_nothing(tmp_path):
    good = tmp_path / "in.ark"
    with open_writer(f"ark:{good}") as writer:
        writer["a"] = np.ones((3, 2), np.float32)
        writer["b"] = np.ones(8, np.float32)
    (tmp_path / "cut.ark").write_bytes(good.read_bytes()[:-5])
    out = tmp_path / "out"
    proc = avtk("copy-feats", f"ark:{tmp_path / 'cut.ark'}", f"ark,scp:{out / 'x.ark'},{out / 'x.scp'}", check=False)
    assert proc.returncode == 1
    assert "cut.ark" in proc.stderr and "after key 'a'" in proc.stderr
    assert not os.path.exists(out) or os.listdir(out) == []


def test_scp_ranges_inside_the_matrix_or_an_error_naming_the_line(tmp_path):
    """Kaldi scp ranges `[r1:r2]` / `[r1:r2,c1:c2]` (ends inclusive) cut the matrix; one reaching past it was
    clamped by kaldiio (a silently shortened input): now an error naming the scp line, key and shape."""
    m = np.arange(15, dtype=np.float32).reshape(5, 3)
    kaldiio.save_ark(str(tmp_path / "m.ark"), {"a": m, "v": np.ones(3, np.float32)}, scp=str(tmp_path / "m.scp"))
    loc = dict(line.split() for line in (tmp_path / "m.scp").read_text().splitlines())
    (tmp_path / "ok.scp").write_text(f"r {loc['a']}[1:3]\nc {loc['a']}[0:4,1:2]\nw {loc['a']}[,0:0]\n")
    got = load_table(f"scp:{tmp_path / 'ok.scp'}")
    _assert_same(got, {"r": m[1:4], "c": m[:, 1:3], "w": m[:, :1]})
    cases = [
        (f"{loc['a']}[0:99999]", "range [0:99999] is outside the matrix of shape (5, 3) (rows 0..99999 of 0..4)"),
        (f"{loc['a']}[3:2]", "range [3:2] is outside the matrix of shape (5, 3) (rows 3..2 of 0..4)"),
        (f"{loc['a']}[0:4,1:3]", "range [0:4,1:3] is outside the matrix of shape (5, 3) (columns 1..3 of 0..2)"),
        (f"{loc['a']}[x:2]", "malformed range [x:2] (expected [first:last] or [first:last,first:last])"),
        (f"{loc['v']}[0:1]", "range [0:1] on a value of shape (3,); ranges apply to matrices only"),
    ]
    for value, why in cases:
        (tmp_path / "r.scp").write_text(f"r {loc['a']}[0:1]\nbad {value}\n")
        out = tmp_path / "o.txt"
        proc = avtk("copy-feats", f"scp:{tmp_path / 'r.scp'}", f"ark,t:{out}", check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr and not out.exists(), proc.stderr
        errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and errors[0].endswith(
            f"ERROR [avtk copy-feats] scp:{tmp_path / 'r.scp'}: key 'bad' ({tmp_path / 'r.scp'}:2): {why}"), errors


# ---------------------------------------------------------------------------------------------- audio


def _sine(freq, sr, seconds, amplitude=0.5):
    t = np.arange(int(round(sr * seconds))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def data_dir(tmp_path):
    """A data directory: one plain path, one `cat |` pipe, one `python3 -c |` pipe."""
    wav = tmp_path / "wav"
    wav.mkdir()
    waves = {"r1": _sine(440, 16000, 1.0), "r2": _sine(300, 16000, 0.5), "r3": _sine(1000, 16000, 0.25)}
    for name, wave in waves.items():
        write_wav(wav / f"{name}.wav", wave)
    py = (f"import io, sys, soundfile; d, r = soundfile.read({str(wav / 'r3.wav')!r}); b = io.BytesIO(); "
          "soundfile.write(b, d, r, format='WAV', subtype='PCM_16'); sys.stdout.buffer.write(b.getvalue())")
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text(
        f"r1 {wav / 'r1.wav'}\n"
        f"r2 cat {wav / 'r2.wav'} |\n"
        f"r3 {shlex.quote(sys.executable)} -c {shlex.quote(py)} |\n"
    )
    return d, waves


def _pcm16(wave):
    return np.round(np.clip(wave, -1, 32767 / 32768) * 32768) / 32768


def test_wav_scp_paths_and_pipes(data_dir):
    d, waves = data_dir
    sources = read_wav_scp(d)
    assert list(sources) == ["r1", "r2", "r3"]
    assert not sources["r1"].is_pipe and sources["r2"].is_pipe and sources["r3"].is_pipe
    assert read_wav_scp(d / "wav.scp") == sources
    for utt, source in sources.items():
        got = load_audio(utt, source)
        assert got.dtype == np.float32 and got.ndim == 1
        np.testing.assert_allclose(got, _pcm16(waves[utt]), atol=1e-6)
    got = dict(AudioReader(d))
    assert list(got) == ["r1", "r2", "r3"]
    np.testing.assert_allclose(got["r2"], _pcm16(waves["r2"]), atol=1e-6)


def test_a_feature_entry_in_a_wav_scp_is_an_error_naming_the_line(tmp_path):
    """A wav.scp line `utt file.ark:offset` (a feats.scp line) gave 'audio file ...ark:N does not exist', though
    the ark exists and the scp line went unnamed; every command reading audio goes through read_wav_scp."""
    write_wav(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000)
    kaldiio.save_ark(str(tmp_path / "f.ark"), {"u2": np.ones((4, 3), np.float32)}, scp=str(tmp_path / "f.scp"))
    entry = (tmp_path / "f.scp").read_text().split()[1]
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text(f"u1 {tmp_path / 'a.wav'}\nu2 {entry}\n")
    (data / "utt2spk").write_text("u1 s\nu2 s\n")
    out = tmp_path / "o"
    proc = avtk("compute-fbank", f"scp:{data / 'wav.scp'}", f"ark,scp:{out}.ark,{out}.scp", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith(
        f"ERROR [avtk compute-fbank] {data / 'wav.scp'}:2: utterance u2: {entry} is a feature (Kaldi ark) entry in "
        "an audio table; avtk reads audio from files or pipes (a feats.scp line in a wav.scp?)"), errors
    assert not os.path.exists(f"{out}.ark") and not os.path.exists(f"{out}.scp")
    # a missing file with a colon in its name is still a missing audio file
    (data / "wav.scp").write_text(f"u1 {tmp_path / 'gone.wav:3'}\n")
    with pytest.raises(AvtkError, match="gone.wav:3 does not exist"):
        load_audio("u1", read_wav_scp(data)["u1"])


def test_segments_and_recording_cache(tmp_path, data_dir):
    d, waves = data_dir
    log = tmp_path / "runs.log"
    wav = tmp_path / "wav" / "r1.wav"
    (d / "wav.scp").write_text(f"r1 {{ echo run >> {log}; cat {wav}; }} |\nr2 {tmp_path / 'wav' / 'r2.wav'}\n")
    (d / "segments").write_text("r1-b r1 0.50 1.00\nr1-a r1 0.00 0.25\nr2-a r2 0.1 -1\nr1-c r1 0.25 0.5\n")
    sources = read_wav_scp(d)
    assert list(sources) == ["r1-b", "r1-a", "r2-a", "r1-c"]  # file order
    assert sources["r1-b"] == AudioSource(f"{{ echo run >> {log}; cat {wav}; }} |", "r1", (0.5, 1.0))

    reader = AudioReader(d)
    got = dict(reader)
    assert list(got) == ["r1-a", "r1-b", "r1-c", "r2-a"]  # sorted utterance order
    assert log.read_text().count("run") == 1  # three segments, one run of the pipe
    full = _pcm16(waves["r1"])
    np.testing.assert_allclose(got["r1-a"], full[:4000], atol=1e-6)
    np.testing.assert_allclose(got["r1-b"], full[8000:16000], atol=1e-6)
    np.testing.assert_allclose(got["r1-c"], full[4000:8000], atol=1e-6)
    np.testing.assert_allclose(got["r2-a"], _pcm16(waves["r2"])[1600:], atol=1e-6)
    np.testing.assert_allclose(load_audio("r1-b", sources["r1-b"]), got["r1-b"])

    (d / "segments").write_text("r1-a r1 0.0 0.5\nr1-z r1 0.9 3.0\n")
    with pytest.raises(AvtkError, match=r"utterance r1-z: segment 0\.9-3 s is outside"):
        dict(AudioReader(d))
    (d / "segments").write_text("r1-a r9 0.0 0.5\n")
    with pytest.raises(AvtkError, match=r"segments:1: utterance 'r1-a': recording 'r9' is not in"):
        read_wav_scp(d)
    (d / "segments").write_text("r1-a r1 0.5 0.2\n")
    with pytest.raises(AvtkError, match=r"segments:1: utterance 'r1-a': invalid segment times"):
        read_wav_scp(d)


def test_bad_audio_files_name_utterance_and_path(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(AvtkError, match=f"utterance u1: audio file {missing} does not exist"):
        load_audio("u1", str(missing))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AvtkError, match=f"utterance u2: audio file {empty} is empty"):
        load_audio("u2", str(empty))
    silent = tmp_path / "zero.wav"
    sf.write(silent, np.zeros(0, np.float32), 16000)
    with pytest.raises(AvtkError, match=f"utterance u3: {silent} has no samples"):
        load_audio("u3", str(silent))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt junk junk junk")
    with pytest.raises(AvtkError, match=f"utterance u4: cannot read audio file {corrupt}"):
        load_audio("u4", str(corrupt))


def test_failing_pipe_names_utterance_command_and_stderr(tmp_path):
    with pytest.raises(AvtkError, match=r"utterance u1: command 'cat /no/such\.wav' exited with status 1: "
                                        r"cat: /no/such\.wav: No such file"):
        load_audio("u1", "cat /no/such.wav |")
    with pytest.raises(AvtkError, match=r"utterance u2: output of command 'echo not audio' is not readable audio"):
        load_audio("u2", "echo not audio |")
    (tmp_path / "wav.scp").write_text("u3 sh -c 'echo oops >&2; exit 7' |\n")
    with pytest.raises(AvtkError, match="utterance u3: command .* exited with status 7: oops"):
        list(AudioReader(tmp_path))


def test_multichannel_takes_channel_0(tmp_path):
    left, right = _sine(440, 16000, 0.1), _sine(300, 16000, 0.1)
    write_wav(tmp_path / "st.wav", np.stack([left, right], axis=1))
    np.testing.assert_allclose(load_audio("u", str(tmp_path / "st.wav")), _pcm16(left), atol=1e-6)


def test_write_wav_is_atomic_pcm16(tmp_path):
    path = tmp_path / "sub" / "x.wav"
    write_wav(path, torch.tensor([0.0, 0.5, -1.0, 2.0]))
    info = sf.info(str(path))
    assert (info.samplerate, info.subtype, info.channels) == (16000, "PCM_16", 1)
    np.testing.assert_array_equal(sf.read(str(path), dtype="int16")[0], [0, 16384, -32768, 32767])
    assert os.listdir(path.parent) == ["x.wav"]


# ---------------------------------------------------------------------------------------------- resampling


def test_other_rate_is_an_error_unless_resampling(tmp_path):
    path = tmp_path / "narrow.wav"
    sf.write(path, _sine(440, 8000, 1.0), 8000, subtype="FLOAT")
    with pytest.raises(AvtkError, match=f"utterance u8: {path} has sample rate 8000 Hz, expected 16000 Hz"):
        load_audio("u8", str(path))
    got = load_audio("u8", str(path), resample=True)
    assert got.dtype == np.float32 and got.shape == (16000,)
    want = _sine(440, 16000, 1.0)
    np.testing.assert_allclose(got[200:-200], want[200:-200], atol=1e-3)
    # segments are cut after resampling, in seconds
    seg = load_audio("u8", str(path), resample=True, segment=(0.25, 0.5))
    np.testing.assert_allclose(seg, got[4000:8000])


@pytest.mark.parametrize("orig_sr", [8000, 22050, 44100, 48000])
def test_resampled_sine_matches_analytic_sine(orig_sr):
    for freq in (440.0, 3000.0):
        x = torch.from_numpy(_sine(freq, orig_sr, 0.5))
        y = resample(x, orig_sr, 16000)
        assert y.dtype == torch.float32
        assert y.shape == (math.ceil(len(x) * 16000 / orig_sr),)
        want = _sine(freq, 16000, len(y) / 16000)[: len(y)]
        edge = 400  # the filter sees zeros beyond the ends
        np.testing.assert_allclose(y.numpy()[edge:-edge], want[edge:-edge], atol=2e-4)


def test_resample_rejects_out_of_band_and_keeps_batches():
    # 48 kHz -> 16 kHz: a 12 kHz tone is above the new Nyquist and must not alias to 4 kHz
    x = torch.from_numpy(_sine(12000, 48000, 0.5))
    y = resample(x, 48000, 16000)
    assert y[400:-400].abs().max() < 1e-3
    batch = torch.randn(2, 3, 1000, dtype=torch.float64)
    out = resample(batch, 16000, 8000)
    assert out.shape == (2, 3, 500) and out.dtype == torch.float64
    torch.testing.assert_close(out[1, 2], resample(batch[1, 2], 16000, 8000))
    assert resample(batch, 16000, 16000) is batch


def test_pipe_wav_with_streamed_header(tmp_path):
    # a wav streamed to a pipe has zero sizes in its header (the writer cannot seek back to fill them in)
    samples = (np.arange(200) * 50 - 5000).astype("<i2")
    header = (b"RIFF" + struct.pack("<I", 0) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
              + b"data" + struct.pack("<I", 0))
    (tmp_path / "s.wav").write_bytes(header + samples.tobytes())
    got = load_audio("u", f"cat {tmp_path / 's.wav'} |")
    np.testing.assert_array_equal(got * 32768, samples)


# ---------------------------------------------------------------------------------------------- issue 12


def test_copy_feats_refuses_nan_values_even_when_permissive(tmp_path):
    table = {"a": np.ones((4, 3), np.float32), "b": np.ones((5, 3), np.float32)}
    table["b"][2, 1] = np.nan
    table["b"][4, 0] = np.inf
    kaldiio.save_ark(str(tmp_path / "in.ark"), table, scp=str(tmp_path / "in.scp"))
    out = tmp_path / "o"
    for spec, where in ((f"ark,p:{tmp_path / 'in.ark'}", "key 'b'"),
                        (f"scp:{tmp_path / 'in.scp'}", f"key 'b' ({tmp_path / 'in.scp'}:2)")):
        proc = avtk("copy-feats", spec, f"ark,scp:{out / 'x.ark'},{out / 'x.scp'}", check=False)
        errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(errors) == 1
        assert errors[0].endswith(f"ERROR [avtk copy-feats] {spec}: {where}: NaN or infinite value at row 2 (of 5), "
                                  "column 1 (2 such values)")
        assert not (out / "x.ark").exists() and not (out / "x.scp").exists()


def truncated_wav(path, seconds=1.8, kept=0.25, **write):
    """A 16 kHz wav whose header declares `seconds` but whose file holds `kept` seconds (cut while copying)."""
    x = (np.random.default_rng(0).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)
    sf.write(tmp := path.with_suffix(".full" + path.suffix), x, 16000, **write)
    data = tmp.read_bytes()
    header = data.index(b"data") + 8
    per_second = (len(data) - header) / seconds
    path.write_bytes(data[:header + int(kept * per_second)])
    tmp.unlink()
    return path


def test_truncated_wav_is_an_error_naming_both_lengths(tmp_path):
    """The header declares 1.8 s, the file holds 0.25 s: compute-fbank fails (it read a 0.25 s utterance);
    a pipe reads what arrives; a streamed header of unknown length (0xFFFFFFFF) is read to the end."""
    cut = truncated_wav(tmp_path / "cut.wav", subtype="PCM_16")
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text(f"u1 {cut}\n")
    out = tmp_path / "fbank"
    proc = avtk("compute-fbank", f"scp:{data}/wav.scp", f"ark,scp:{out}/f.ark,{out}/f.scp", check=False)
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(errors) == 1
    assert errors[0].endswith(f"ERROR [avtk compute-fbank] utterance u1: audio file {cut} is truncated: its header "
                              "declares 1.800 s (28800 samples) but the file holds 0.250 s (4000 samples)")
    assert not (out / "f.ark").exists() and not (out / "f.scp").exists()
    with pytest.raises(AvtkError, match=f"utterance u2: audio file {tmp_path / 'cutf.wav'} is truncated: its header "
                                        r"declares 1\.800 s \(28800 samples\) but the file holds 0\.250 s"):
        load_audio("u2", str(truncated_wav(tmp_path / "cutf.wav", subtype="FLOAT")))
    assert len(load_audio("u3", f"cat {cut} |")) == 4000  # a pipe's header may not know its length
    streamed = bytearray((tmp_path / "cut.wav").read_bytes())
    at = streamed.index(b"data") + 4
    streamed[at:at + 4] = (0xFFFFFFFF).to_bytes(4, "little")
    (tmp_path / "streamed.wav").write_bytes(bytes(streamed))
    assert len(load_audio("u4", str(tmp_path / "streamed.wav"))) == 4000


def test_validate_check_audio_reports_truncated_files_and_durations_unlike_utt2dur(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    write_wav(tmp_path / "a.wav", np.full(16000, 0.01, np.float32))  # 1 s
    write_wav(tmp_path / "b.wav", np.full(8000, 0.01, np.float32))  # 0.5 s
    cut = truncated_wav(tmp_path / "c.wav", subtype="PCM_16")
    (d / "wav.scp").write_text(f"a {tmp_path / 'a.wav'}\nb {tmp_path / 'b.wav'}\nc {cut}\n")
    (d / "utt2spk").write_text("a s\nb s\nc s\n")
    (d / "spk2utt").write_text("s a b c\n")
    (d / "utt2dur").write_text("a 1.01\nb 0.75\nc 1.80\n")  # a: within 0.02 s; b: stale
    proc = run(["validate_data_dir.sh", "--no-feats", "--check-audio", d], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{d}/wav.scp:2: utterance 'b': audio file {tmp_path / 'b.wav'} holds 0.500 s but {d}/utt2dur:2 says " \
           "0.75 s" in proc.stderr
    assert f"{d}/wav.scp:3: utterance 'c': audio file {cut} is truncated: its header declares 1.800 s (28800 " \
           "samples) but the file holds 0.250 s (4000 samples)" in proc.stderr
    assert "'a'" not in proc.stderr and "OK" not in proc.stderr


def _vectors(n, dim, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {f"spk{i % 3}-utt{i:03d}": rng.standard_normal(dim).astype(dtype) for i in range(n)}


def _assert_vector_table(got, want):
    assert isinstance(got, arkio.VectorTable)
    assert got.keys_list == list(want) and got.matrix.dtype == np.float32
    np.testing.assert_array_equal(got.matrix, np.stack([np.float32(v) for v in want.values()]))


def test_load_vectors_bulk_equals_per_entry_reader(tmp_path):
    """Binary float vectors in two arks behind one scp, an ark itself, double vectors: one float32 matrix
    equal to what the per-entry reader gives, keys in table order."""
    first, second = _vectors(7, 5, 1), _vectors(4, 5, 2)
    second = {k.replace("utt", "x"): v for k, v in second.items()}
    for name, part in (("one", first), ("two", second)):
        with open_writer(f"ark,scp:{tmp_path}/{name}.ark,{tmp_path}/{name}.scp") as w:
            for k, v in part.items():
                w[k] = v
    scp = tmp_path / "all.scp"
    scp.write_text((tmp_path / "one.scp").read_text() + "\n" + (tmp_path / "two.scp").read_text())
    both = {**first, **second}
    got = arkio.load_vectors(f"scp:{scp}")
    _assert_vector_table(got, both)
    _assert_same({k: got[k] for k in got}, load_table(f"scp:{scp}"))
    assert "spk0-x000" in got and "nope" not in got and got.rows(["spk1-utt001", "spk0-x000"]).tolist() == [1, 7]
    _assert_vector_table(arkio.load_vectors(f"ark:{tmp_path}/one.ark"), first)
    doubles = _vectors(3, 4, 3, np.float64)
    kaldiio.save_ark(str(tmp_path / "d.ark"), doubles, scp=str(tmp_path / "d.scp"))
    _assert_vector_table(arkio.load_vectors(f"scp:{tmp_path}/d.scp"), doubles)
    _assert_vector_table(arkio.load_vectors(f"ark:{tmp_path}/d.ark"), doubles)


@pytest.mark.parametrize("case", ["text", "matrices", "mixed-dims", "crlf", "pipe", "permissive"])
def test_load_vectors_falls_back_to_the_per_entry_reader(tmp_path, case):
    """Anything but plain binary vectors of one size in files is read entry by entry, as load_table does."""
    table = _vectors(4, 3)
    spec = f"ark,scp:{tmp_path}/e.ark,{tmp_path}/e.scp"
    rspec = f"scp:{tmp_path}/e.scp"
    if case == "text":
        spec = f"ark,t:{tmp_path}/e.ark"
        rspec = f"ark:{tmp_path}/e.ark"
    elif case == "matrices":
        table = _table()
    elif case == "mixed-dims":
        table["spk0-utt003"] = np.ones(5, np.float32)
    with open_writer(spec) as w:
        for k, v in table.items():
            w[k] = v
    if case == "crlf":
        (tmp_path / "e.scp").write_bytes((tmp_path / "e.scp").read_bytes().replace(b"\n", b"\r\n"))
    elif case == "pipe":
        rspec = f"scp:cat {tmp_path}/e.scp |"
    elif case == "permissive":
        rspec = f"scp,p:{tmp_path}/e.scp"
    got = arkio.load_vectors(rspec)
    assert type(got) is dict and list(got) == list(table)
    _assert_same(got, table)


@pytest.mark.parametrize("case", ["truncated", "nan", "duplicate", "truncated-ark"])
def test_bulk_read_faults_are_the_per_entry_errors(tmp_path, case):
    """A truncated ark, a NaN and a duplicate key in an embedding table give `avtk score` the per-entry
    reader's one ERROR line (file and key or line named), exit 1 and no scores file."""
    with open_writer(f"ark,scp:{tmp_path}/e.ark,{tmp_path}/e.scp") as w:
        for k in "abc":
            w[k] = np.arange(1, 5, dtype=np.float32)
    (tmp_path / "trials").write_text("a b nontarget\na c nontarget\n")
    ark, scp = tmp_path / "e.ark", tmp_path / "e.scp"
    rspec = f"scp:{scp}"
    if case in ("truncated", "truncated-ark"):
        ark.write_bytes(ark.read_bytes()[:-3])
        want = f"{rspec}: key 'c' ({scp}:3): cannot read {ark}:58: unexpected end of file (wanted 16 bytes, got 13)"
        if case == "truncated-ark":
            rspec = f"ark:{ark}"
            want = f"{rspec}: corrupt or truncated ark {ark} after key 'b': unexpected end of file (wanted 16 " \
                   "bytes, got 13)"
    elif case == "nan":
        raw = bytearray(ark.read_bytes())
        raw[30 + 10 + 4:30 + 10 + 8] = np.float32(np.nan).tobytes()  # key "b" at offset 30, index 1
        ark.write_bytes(bytes(raw))
        assert scp.read_text().splitlines()[1] == f"b {ark}:30"
        want = f"{rspec}: key 'b' ({scp}:2): NaN or infinite value at index 1"
    else:
        scp.write_text(scp.read_text() + scp.read_text().splitlines()[0] + "\n")
        want = f"{scp}:4: duplicate key 'a' (first on line 1)"
    proc = avtk("score", "--trials", tmp_path / "trials", rspec, tmp_path / "scores", check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith(f"ERROR [avtk score] {want}"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "scores").exists()


def test_training_lengths_without_utt2dur_come_from_headers_and_only_pipes_are_decoded(tmp_path, caplog):
    """CropDataset (wav input, no utt2dur, no segments): a plain file's length is its header's, a pipe is
    decoded; the log counts both; a truncated file is an error naming the utterance and both lengths."""
    import logging

    from avtk.train.config import load_config
    from avtk.train.data import CropDataset

    d = tmp_path / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    utts = {"s0-a": 8000, "s0-b": 160, "s1-a": 8000, "s1-b": 160}  # samples; the 10 ms ones are skipped
    for u, n in utts.items():
        write_wav(str(tmp_path / f"{u}.wav"), (rng.standard_normal(n) * 0.1).astype(np.float32))
    wav = {u: str(tmp_path / f"{u}.wav") for u in utts}
    wav["s1-b"] = f"cat {wav['s1-b']} |"
    (d / "wav.scp").write_text("".join(f"{u} {wav[u]}\n" for u in utts))
    (d / "utt2spk").write_text("".join(f"{u} {u[:2]}\n" for u in utts))
    (d / "spk2utt").write_text("s0 s0-a s0-b\ns1 s1-a s1-b\n")
    cfg = load_config(None, ["data.input=wav"])
    with caplog.at_level(logging.INFO, logger="avtk.train.data"):
        ds = CropDataset(d, cfg, 0)
    assert ds.skipped == ["s0-b", "s1-b"] and list(ds.utts) == ["s0-a", "s1-a"]
    assert f"{d}: no utt2dur; lengths of 3 recordings read from their headers, 1 decoded" in caplog.text
    truncated_wav(tmp_path / "s0-a.wav", subtype="PCM_16")
    with pytest.raises(AvtkError, match=f"^utterance s0-a: audio file {tmp_path / 's0-a.wav'} is truncated: its "
                                        r"header declares 1\.800 s"):
        CropDataset(d, cfg, 0)
