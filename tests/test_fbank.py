"""Feature front ends: KaldiFbank against kaldi-native-fbank, the seed front end, and `avtk compute-fbank`."""

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from avtk.errors import AvtkError
from avtk.features import FRONTENDS, KaldiFbank, SeedFrontend, build_frontend, cmn, num_frames
from avtk.features.mel import htk_mel_filterbank
from avtk.io.audio import write_wav
from conftest import avtk

knf = pytest.importorskip("kaldi_native_fbank")

# Agreement with kaldi-native-fbank. Both compute in float32, so a mel bin whose energy is below float32
# resolution relative to its frame (< e^-18 of the frame's mel energy after DC removal and pre-emphasis)
# holds rounding noise in both; computing ours in float64 does not change that. On the whole default mini
# corpus (359,618 frames) every other value agrees within 3.8e-4; 0.023 % of values are below resolution,
# 26 of them differ by more than 1e-3, at most 6.3e-3.
TOL = 1e-3
RESOLVED_LOG_RATIO = -18.0  # ln(bin energy / frame mel energy) above which a value must be within TOL
NOISE_TOL = 0.02  # the bound for the rest


def _knf_fbank(wave, snip_edges=True, window_type="povey", num_bins=80, low_freq=20.0, high_freq=0.0,
               use_energy=False):
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = snip_edges
    opts.frame_opts.window_type = window_type
    opts.mel_opts.num_bins = num_bins
    opts.mel_opts.low_freq = low_freq
    opts.mel_opts.high_freq = high_freq
    opts.use_energy = use_energy
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, (np.asarray(wave, np.float32) * 32768.0).tolist())
    fbank.input_finished()
    rows = [fbank.get_frame(i) for i in range(fbank.num_frames_ready)]
    return np.array(rows, np.float32).reshape(len(rows), num_bins + int(use_energy))


def _assert_matches_kaldi(utt, ours, ref):
    assert ours.shape == ref.shape, (utt, ours.shape, ref.shape)
    diff = np.abs(ours.astype(np.float64) - ref)
    log_ratio = ref - np.log(np.exp(ref.astype(np.float64)).sum(axis=1, keepdims=True))
    resolved = log_ratio > RESOLVED_LOG_RATIO
    for t in range(ref.shape[0]):  # every frame
        bad = resolved[t] & (diff[t] > TOL)
        assert not bad.any(), f"{utt} frame {t}: bins {np.where(bad)[0]} differ by {diff[t][bad]}"
        assert diff[t].max() <= NOISE_TOL, f"{utt} frame {t}: max difference {diff[t].max()}"
    assert resolved.mean() > 0.99, f"{utt}: {1 - resolved.mean():.4f} of values below float32 resolution"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("fbank")
    avtk("make-synthetic-corpus", "--num-train-speakers", "2", "--num-test-speakers", "2",
         "--videos-per-speaker", "2", "--utts-per-video", "2", "--no-raw-frames", "--nj", "2",
         root / "corpus", root / "data")
    wav_scp = root / "wav.scp"
    lines = (root / "data/train/wav.scp").read_text() + (root / "data/test/wav.scp").read_text()
    wav_scp.write_text(lines)
    waves = {}
    for line in lines.splitlines():
        utt, path = line.split(maxsplit=1)
        waves[utt] = sf.read(path, dtype="float32")[0]
    return root, wav_scp, waves


@pytest.fixture(scope="module")
def computed(corpus):
    """compute-fbank with snip-edges true (options on the command line) and false (from a YAML config)."""
    root, wav_scp, _ = corpus
    out = {}
    config = root / "fbank_nosnip.yaml"
    config.write_text("frontend: kaldi_fbank\nnum_mel_bins: 80\nsnip_edges: false\ndither: 0.0\n")
    for snip, opts in ((True, ["--num-mel-bins", "80", "--snip-edges", "true"]), (False, ["--config", config])):
        d = root / f"fbank_snip{int(snip)}"
        proc = avtk("compute-fbank", *opts, "--write-num-frames", d / "utt2num_frames", "--batch-size", "3",
                    f"scp:{wav_scp}", f"ark,scp:{d}/raw_fbank.1.ark,{d}/raw_fbank.1.scp")
        out[snip] = (d, proc)
    return out


@pytest.mark.parametrize("snip_edges", [True, False])
def test_compute_fbank_matches_kaldi_native_fbank(corpus, computed, snip_edges):
    _, wav_scp, waves = corpus
    d, _ = computed[snip_edges]
    feats = kaldiio.load_scp(str(d / "raw_fbank.1.scp"))
    assert list(feats) == list(waves)  # input order
    for utt, wave in waves.items():
        ours = feats[utt]
        assert ours.dtype == np.float32 and ours.shape[1] == 80
        ref = _knf_fbank(wave, snip_edges=snip_edges)
        assert ours.shape[0] == ref.shape[0] == num_frames(len(wave), snip_edges=snip_edges)
        _assert_matches_kaldi(utt, ours, ref)


@pytest.mark.parametrize("snip_edges", [True, False])
def test_utt2num_frames_and_kaldiio_reads_ark_and_scp(corpus, computed, snip_edges):
    _, _, waves = corpus
    d, _ = computed[snip_edges]
    lines = [line.split() for line in (d / "utt2num_frames").read_text().splitlines()]
    assert [u for u, _ in lines] == list(waves)
    from_scp = kaldiio.load_scp(str(d / "raw_fbank.1.scp"))
    from_ark = dict(kaldiio.load_ark(str(d / "raw_fbank.1.ark")))
    for utt, n in lines:
        assert from_scp[utt].shape == (int(n), 80)
        np.testing.assert_array_equal(from_ark[utt], from_scp[utt])
        assert int(n) == num_frames(len(waves[utt]), snip_edges=snip_edges)


@pytest.mark.parametrize("window_type", ["hamming", "hanning", "rectangular"])
def test_windows_energy_and_band_match_kaldi_native_fbank(corpus, window_type):
    _, _, waves = corpus
    utt, wave = next(iter(waves.items()))
    ours, n = KaldiFbank(window_type=window_type)(torch.from_numpy(wave)[None])
    _assert_matches_kaldi(utt, ours[0].numpy(), _knf_fbank(wave, window_type=window_type))
    opts = dict(num_mel_bins=40, low_freq=60.0, high_freq=-400.0, use_energy=True)
    ours, _ = KaldiFbank(snip_edges=False, **opts)(torch.from_numpy(wave)[None])
    ref = _knf_fbank(wave, snip_edges=False, num_bins=40, low_freq=60.0, high_freq=-400.0, use_energy=True)
    assert ours.shape[2] == 41
    np.testing.assert_allclose(ours[0, :, 0].numpy(), ref[:, 0], atol=TOL)  # log energy first
    _assert_matches_kaldi(utt, ours[0, :, 1:].numpy(), ref[:, 1:])


@pytest.mark.parametrize("snip_edges", [True, False])
def test_batched_equals_unbatched(corpus, snip_edges):
    _, _, waves = corpus
    items = list(waves.values())[:6] + [np.random.default_rng(0).uniform(-0.5, 0.5, 450).astype(np.float32),
                                        np.full(100, 0.1, np.float32)]  # short: 1 / 0 frames, reflected
    lengths = torch.tensor([len(w) for w in items])
    padded = torch.zeros(len(items), int(lengths.max()) + 500)
    padded.uniform_(-1, 1)  # garbage in the padding must not leak
    for i, w in enumerate(items):
        padded[i, :len(w)] = torch.from_numpy(w)
    for frontend in (KaldiFbank(snip_edges=snip_edges), SeedFrontend()):
        feats, frames = frontend(padded, lengths)
        assert feats.dtype == torch.float32 and feats.shape[1] == int(frames.max())
        for i, w in enumerate(items):
            one, n = frontend(torch.from_numpy(w)[None])
            assert int(n[0]) == int(frames[i]) == frontend.num_frames(len(w))
            torch.testing.assert_close(feats[i, :frames[i]], one[0], atol=1e-5, rtol=0)
            assert (feats[i, frames[i]:] == 0).all()


def test_compute_fbank_batch_size_does_not_change_features(corpus, computed):
    root, wav_scp, _ = corpus
    d, _ = computed[True]
    out = root / "batch1"
    avtk("compute-fbank", "--batch-size", "1", f"scp:{wav_scp}", f"ark,scp:{out}/f.ark,{out}/f.scp")
    one = kaldiio.load_scp(str(out / "f.scp"))
    many = kaldiio.load_scp(str(d / "raw_fbank.1.scp"))
    assert list(one) == list(many)
    for utt in one:
        np.testing.assert_allclose(one[utt], many[utt], atol=1e-5, rtol=0)


def test_compute_fbank_segments_pipes_and_too_short(corpus, computed):
    root, wav_scp, waves = corpus
    (utt, wave), (utt2, wave2) = list(waves.items())[:2]
    path = wav_scp.read_text().splitlines()[0].split(maxsplit=1)[1]
    short = root / "short.wav"
    write_wav(short, np.full(200, 0.01, np.float32))  # 200 samples < 400: no frame with snip-edges
    scp = root / "mixed.scp"
    scp.write_text(f"a-pipe cat {path} |\nb-short {short}\nc-file {path}\n")
    out = root / "mixed"
    proc = avtk("compute-fbank", "--write-num-frames", out / "utt2num_frames", f"scp:{scp}",
                f"ark,scp:{out}/f.ark,{out}/f.scp")
    assert "b-short" in proc.stderr and "too short" in proc.stderr
    assert "skipped 1 of 3 utterances" in proc.stderr
    feats = kaldiio.load_scp(str(out / "f.scp"))
    assert list(feats) == ["a-pipe", "c-file"]
    np.testing.assert_array_equal(feats["a-pipe"], feats["c-file"])
    assert (out / "utt2num_frames").read_text().split() == ["a-pipe", str(len(feats["a-pipe"])),
                                                           "c-file", str(len(feats["c-file"]))]

    # --segments: the features of a segment are those of the samples [round(start*sr), round(end*sr)).
    segments = root / "segments"
    segments.write_text(f"{utt}-seg1 {utt} 0.50 1.75\n{utt}-seg2 {utt} 1.00 -1\n{utt}-tiny {utt} 2.0 2.01\n")
    out = root / "seg"
    proc = avtk("compute-fbank", "--segments", segments, f"scp:{wav_scp}", f"ark,scp:{out}/f.ark,{out}/f.scp")
    assert "skipped 1 of 3" in proc.stderr
    got = kaldiio.load_scp(str(out / "f.scp"))
    assert list(got) == [f"{utt}-seg1", f"{utt}-seg2"]
    frontend = KaldiFbank()
    for key, (a, b) in ((f"{utt}-seg1", (8000, 28000)), (f"{utt}-seg2", (16000, len(wave)))):
        want, _ = frontend(torch.from_numpy(wave[a:b])[None])
        np.testing.assert_allclose(got[key], want[0].numpy(), atol=1e-5, rtol=0)


def test_compute_fbank_bad_input_is_one_error_line(corpus, tmp_path):
    _, wav_scp, _ = corpus
    missing = tmp_path / "wav.scp"
    missing.write_text("u1 /nonexistent/x.wav\n")
    proc = avtk("compute-fbank", f"scp:{missing}", f"ark:{tmp_path}/o.ark", check=False)
    assert proc.returncode == 1 and "u1" in proc.stderr and "/nonexistent/x.wav" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o.ark").exists()
    proc = avtk("compute-fbank", "--frontend", "seed", "--num-mel-bins", "40", f"scp:{wav_scp}",
                f"ark:{tmp_path}/o.ark", check=False)
    assert proc.returncode == 1 and "--num-mel-bins" in proc.stderr


def test_seed_frontend_layout_and_features(corpus):
    fe = SeedFrontend()
    shapes = {k: tuple(v.shape) for k, v in fe.state_dict().items()}
    assert shapes == {"torchfbank.0.flipped_filter": (1, 1, 2), "torchfbank.1.spectrogram.window": (400,),
                      "torchfbank.1.mel_scale.fb": (257, 80)}
    assert fe.state_dict()["torchfbank.0.flipped_filter"].flatten().tolist() == pytest.approx([-0.97, 1.0])
    torch.testing.assert_close(fe.state_dict()["torchfbank.1.spectrogram.window"],
                               torch.hamming_window(400, periodic=True))
    fe.load_state_dict({k: v.clone() for k, v in fe.state_dict().items()})  # names load as they are
    fb = fe.state_dict()["torchfbank.1.mel_scale.fb"]
    freqs = torch.linspace(0, 8000, 257)
    assert fb.max() <= 1.0 and fb.min() >= 0.0
    assert fb[freqs <= 20].abs().sum() == 0 and fb[freqs >= 7600].abs().sum() == 0

    x = torch.from_numpy(np.random.default_rng(1).standard_normal(32240).astype(np.float32) * 0.1)  # 2.015 s
    feats, frames = fe(x[None])
    assert feats.shape == (1, 202, 80) and frames.tolist() == [202]
    assert feats[0].mean(0).abs().max() < 1e-4  # mean over time removed, per bin

    # The same computation written plainly (conv1d pre-emphasis, torch.stft, HTK filters), unbatched.
    _, _, waves = corpus
    wave = torch.from_numpy(next(iter(waves.values())))
    y = F.conv1d(F.pad(wave[None, None], (1, 0), mode="reflect"), torch.tensor([[[-0.97, 1.0]]]))[0, 0]
    spec = torch.stft(y, 512, 160, 400, window=torch.hamming_window(400), center=True, pad_mode="reflect",
                      return_complex=True).abs().pow(2)
    ref = torch.log(spec.T @ htk_mel_filterbank(512, 80, 16000, 20.0, 7600.0) + 1e-6)
    ref = ref - ref.mean(0, keepdim=True)
    got, n = fe(wave[None])
    assert int(n[0]) == ref.shape[0] == 1 + len(wave) // 160
    torch.testing.assert_close(got[0], ref, atol=1e-4, rtol=0)


def test_registry_and_cmn():
    assert set(FRONTENDS) == {"kaldi_fbank", "seed"}
    fe = build_frontend("kaldi_fbank", num_mel_bins=40, snip_edges=False)
    assert isinstance(fe, KaldiFbank) and fe.out_dim == 40 and not fe.snip_edges
    with pytest.raises(AvtkError, match="nope"):
        build_frontend("nope")
    with pytest.raises(AvtkError, match="num_bins"):
        build_frontend("kaldi_fbank", num_bins=40)
    with pytest.raises(AvtkError, match="window_type"):
        build_frontend("kaldi_fbank", window_type="triangle")
    with pytest.raises(AvtkError, match="num_mel_bins"):
        build_frontend("seed", num_mel_bins=80)

    feats = torch.randn(3, 7, 4) + 5.0
    counts = torch.tensor([7, 3, 0])
    feats[1, 3:] = 0
    feats[2] = 0
    out = cmn(feats, counts)
    torch.testing.assert_close(out[0], feats[0] - feats[0].mean(0))
    torch.testing.assert_close(out[1, :3], feats[1, :3] - feats[1, :3].mean(0))
    assert (out[1, 3:] == 0).all() and (out[2] == 0).all()
    torch.testing.assert_close(cmn(feats[:1]), out[:1])


def test_num_frames_helper_and_dither():
    assert [num_frames(n) for n in (0, 399, 400, 559, 560, 16000)] == [0, 0, 1, 1, 2, 98]
    assert [num_frames(n, snip_edges=False) for n in (0, 79, 80, 239, 240, 16000)] == [0, 0, 1, 1, 2, 100]
    assert num_frames(torch.tensor([399, 560])).tolist() == [0, 2]
    x = torch.from_numpy(np.random.default_rng(2).uniform(-0.3, 0.3, (2, 4000)).astype(np.float32))
    fe = KaldiFbank(dither=1.0)
    a, _ = fe(x, generator=torch.Generator().manual_seed(5))
    b, _ = fe(x, generator=torch.Generator().manual_seed(5))
    c, _ = fe(x, generator=torch.Generator().manual_seed(6))
    plain, _ = KaldiFbank()(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0 < (a - plain).abs().max() < 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["kaldi_fbank", "seed"])
def test_gpu_matches_cpu(name):
    gen = np.random.default_rng(3)
    items = [gen.uniform(-0.5, 0.5, n).astype(np.float32) for n in (16000, 23456, 900)]
    lengths = torch.tensor([len(w) for w in items])
    padded = torch.zeros(len(items), int(lengths.max()))
    for i, w in enumerate(items):
        padded[i, :len(w)] = torch.from_numpy(w)
    fe = build_frontend(name)
    cpu, n_cpu = fe(padded, lengths)
    gpu, n_gpu = fe.to("cuda")(padded.cuda(), lengths.cuda())
    assert gpu.device.type == "cuda" and torch.equal(n_cpu, n_gpu.cpu())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=0)
