"""avtk import-model: foreign checkpoints in the released layouts (REFERENCE §1) become avtk model files.

The real checkpoints are not available, so each test writes a file in the exact layout (key names from the
REFERENCE's description, real shapes, random values), imports it with the command users run, and checks that
the imported network computes what a network loaded directly from the written tensors computes, then
extracts embeddings with it through `avtk extract-embeddings`.
"""
import hashlib

import kaldiio
import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F

from avtk.embed import load_model
from avtk.errors import AvtkError
from avtk.face.frames import evenly_spaced, frame_paths, read_frame
from avtk.features.seed_frontend import SeedFrontend
from avtk.models import build_encoder
from avtk.models.ecapa import EcapaTdnn
from avtk.models.importer import ImportMismatch, import_checkpoint
from conftest import avtk

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
FRONTEND_KEYS = {"torchfbank.0.flipped_filter": (1, 1, 2), "torchfbank.1.spectrogram.window": (400,),
                 "torchfbank.1.mel_scale.fb": (257, 80)}


def ecapa_reference_keys():
    """The A-Vox2.model keys as REFERENCE §1 lists them (without `weight`)."""
    keys = set(FRONTEND_KEYS) | {"conv1.weight", "conv1.bias", "layer4.weight", "layer4.bias", "fc6.weight",
                                 "fc6.bias"}
    keys |= {f"{bn}.{p}" for bn in ("bn1", "bn5", "bn6", "attention.2") for p in BN}
    keys |= {f"attention.{i}.{p}" for i in (0, 4) for p in ("weight", "bias")}
    for n in (1, 2, 3):
        convs = [f"layer{n}.{c}" for c in ("conv1", "conv3", "se.se.1", "se.se.3")]
        convs += [f"layer{n}.convs.{i}" for i in range(7)]
        bns = [f"layer{n}.{b}" for b in ("bn1", "bn3")] + [f"layer{n}.bns.{i}" for i in range(7)]
        keys |= {f"{c}.{p}" for c in convs for p in ("weight", "bias")} | {f"{b}.{p}" for b in bns for p in BN}
    return keys


def iresnet_reference_keys(blocks):
    """insightface iresnet backbone keys as REFERENCE §1 describes the network."""
    keys = {"conv1.weight", "prelu.weight", "fc.weight", "fc.bias"}
    keys |= {f"{bn}.{p}" for bn in ("bn1", "bn2", "features") for p in BN}
    for stage, n in enumerate(blocks, 1):
        for b in range(n):
            block = f"layer{stage}.{b}"
            keys |= {f"{block}.{k}" for k in ("conv1.weight", "prelu.weight", "conv2.weight")}
            keys |= {f"{block}.{bn}.{p}" for bn in ("bn1", "bn2", "bn3") for p in BN}
            if b == 0:
                keys |= {f"{block}.downsample.0.weight"} | {f"{block}.downsample.1.{p}" for p in BN}
    return keys


def randomised(state, seed):
    """Random tensors of a state_dict's shapes at sane scales (weights ~ 1/sqrt(fan-in), BN scales ~ 1, PReLU
    slopes ~ 0.25, positive variances, insightface's fixed features.weight at 1), so activations stay finite."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.randint(1, 10 ** 6, (), generator=gen)
            continue
        noise = torch.randn(value.shape, generator=gen)
        if key.endswith("running_var"):
            out[key] = noise.abs() + 0.5
        elif key == "features.weight":
            out[key] = torch.ones(value.shape)
        elif value.dim() >= 2:
            out[key] = noise / value[0].numel() ** 0.5
        elif key.endswith("prelu.weight"):
            out[key] = 0.25 + 0.05 * noise
        elif key.endswith("weight"):  # BN scales
            out[key] = 1 + 0.1 * noise
        else:  # biases, running means
            out[key] = 0.1 * noise
    return out


def seed_frontend_buffers(perturb):
    """The seed front end's buffers; `perturb`: slightly off avtk's own values, to see which values load."""
    state = {k: v.clone() for k, v in SeedFrontend().state_dict().items()}
    if perturb:
        gen = torch.Generator().manual_seed(1)
        state["torchfbank.1.mel_scale.fb"] *= 1 + 0.01 * torch.rand(257, 80, generator=gen)
        state["torchfbank.0.flipped_filter"][0, 0, 0] = -0.96
    return state


def ecapa_layout(channels, seed, perturb_frontend):
    state = dict(seed_frontend_buffers(perturb_frontend))
    with torch.device("meta"):  # only the layout: no time spent initialising
        layout = EcapaTdnn(channels=channels).state_dict()
    state.update(randomised(layout, seed))
    state["weight"] = torch.randn(5994, 192, generator=torch.Generator().manual_seed(seed))
    return state


def iresnet_layout(name, seed, **args):
    with torch.device("meta"):
        layout = build_encoder(name, **args).state_dict()
    return randomised(layout, seed)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two test utterances (1-1.5 s) with their aligned face frames."""
    root = tmp_path_factory.mktemp("import_corpus")
    avtk("make-synthetic-corpus", "--num-train-speakers", 1, "--num-test-speakers", 2, "--num-dev-speakers", 0,
         "--videos-per-speaker", 1, "--utts-per-video", 1, "--min-duration", 1, "--max-duration", 1.5,
         "--no-raw-frames", "--nj", 1, root / "corpus", root / "data")
    return root / "data/test"


def _table(path):
    return dict(line.split(None, 1) for line in path.read_text().splitlines())


def test_a_vox2_and_ecapa_pretrain_import_exactly_and_extract(corpus, tmp_path):
    # A-Vox2.model: 234 ECAPA (C=1024) keys incl. the 3 front-end buffers, plus the AAM `weight`
    state = ecapa_layout(1024, 0, perturb_frontend=True)
    assert len(state) == 234 + 1 and set(state) - {"weight"} == ecapa_reference_keys()
    assert {k: tuple(state[k].shape) for k in FRONTEND_KEYS} == FRONTEND_KEYS
    assert state["weight"].shape == (5994, 192) and state["conv1.weight"].shape == (1024, 80, 5)
    torch.save(state, tmp_path / "A-Vox2.model")
    # ECAPA-TDNN pretrain.model (here trained at C=512): prefixed keys and speaker_loss.weight
    small = ecapa_layout(512, 1, perturb_frontend=False)
    pretrain = {f"speaker_encoder.{k}": v for k, v in small.items() if k != "weight"}
    pretrain["speaker_loss.weight"] = small["weight"]
    assert len(pretrain) == 234 + 1
    torch.save(pretrain, tmp_path / "pretrain.model")

    proc = avtk("import-model", "--format", "a-vox2", tmp_path / "A-Vox2.model", tmp_path / "a_vox2.pt")
    assert ("format a-vox2: ecapa_tdnn (in_dim 80, channels 1024, embed_dim 192), front end seed, cmn off; "
            "15,444,544 parameters; loaded 234 of 234 keys; AAM matrix [5994, 192] kept under 'loss' "
            "(5994 placeholder speakers)") in proc.stderr
    assert "front-end buffer torchfbank.1.mel_scale.fb differs from avtk's seed front end" in proc.stderr
    proc = avtk("import-model", "--format", "ecapa-pretrain", tmp_path / "pretrain.model", tmp_path / "pre.pt")
    assert "channels 512" in proc.stderr and "loaded 234 of 234 keys" in proc.stderr
    assert "differs" not in proc.stderr

    wave = torch.from_numpy(soundfile.read(sorted(_table(corpus / "wav.scp").values())[0], dtype="float32")[0])
    for written, out, channels in ((state, "a_vox2.pt", 1024), (small, "pre.pt", 512)):
        net, cfg = load_model(tmp_path / out)
        m = cfg["model"]
        assert (m["encoder"], m["frontend"], m["cmn"], cfg["data"]["input"]) == ("ecapa_tdnn", "seed", False, "wav")
        assert m["encoder_args"]["channels"] == channels
        blob = torch.load(tmp_path / out, weights_only=False)
        assert torch.equal(blob["loss"]["weight"], written["weight"])
        assert len(blob["speakers"]) == 5994 and blob["speakers"][:2] == ["spk0000", "spk0001"]
        # the direct network: the seed's front end and ECAPA-TDNN loaded (strictly) from the written tensors
        frontend, encoder = SeedFrontend(), EcapaTdnn(channels=channels)
        frontend.load_state_dict({k: v for k, v in written.items() if k in FRONTEND_KEYS})
        encoder.load_state_dict({k: v for k, v in written.items() if k not in FRONTEND_KEYS and k != "weight"})
        encoder.eval()
        with torch.no_grad():
            feats, _ = frontend(wave[None])
            want = encoder(feats.transpose(1, 2))
            got = net(wave[None])
            assert torch.equal(net.features(wave[None])[0], feats)  # the seed's features, mean removed once
        assert torch.allclose(got, want, rtol=0, atol=1e-6 * float(want.abs().max()))
    source = torch.load(tmp_path / "a_vox2.pt", weights_only=False)["config"]["source"]
    assert source["format"] == "a-vox2" and source["sha256"] == sha256(tmp_path / "A-Vox2.model")
    assert source["path"] == str(tmp_path / "A-Vox2.model")

    # the imported model through the real extraction command, on audio
    avtk("extract-embeddings", "--model", tmp_path / "a_vox2.pt", f"scp:{corpus}/wav.scp",
         f"ark,scp:{tmp_path}/emb.ark,{tmp_path}/emb.scp")
    emb = dict(kaldiio.load_scp(str(tmp_path / "emb.scp")))
    net, _ = load_model(tmp_path / "a_vox2.pt")
    assert sorted(emb) == sorted(_table(corpus / "wav.scp"))
    for utt, path in _table(corpus / "wav.scp").items():
        with torch.no_grad():
            want = net(torch.from_numpy(soundfile.read(path, dtype="float32")[0])[None])[0].numpy()
        assert emb[utt].shape == (192,)
        assert np.allclose(emb[utt], want, rtol=0, atol=1e-5 * np.abs(want).max())


def _face_input(images, bgr):
    """The insightface normalisation written out: (x / 255 - 0.5) / 0.5 on (B, 3, H, W), in BGR if asked."""
    x = images.float().permute(0, 3, 1, 2)
    if bgr:
        x = x[:, [2, 1, 0]]
    return ((x / 255 - 0.5) / 0.5).contiguous()


def test_v_vox2_and_v_glint_import_exactly_and_extract(corpus, tmp_path):
    vox2 = iresnet_layout("iresnet18", 2)
    vox2["weight"] = torch.randn(5994, 512)
    glint = iresnet_layout("iresnet50", 3)
    assert len(vox2) == 187 + 1 and set(vox2) - {"weight"} == iresnet_reference_keys([2, 2, 2, 2])
    assert len(glint) == 475 and set(glint) == iresnet_reference_keys([3, 4, 14, 3])
    assert glint["fc.weight"].shape == (512, 25088)
    torch.save(vox2, tmp_path / "V-Vox2.model")
    torch.save(glint, tmp_path / "V-Glint.model")

    proc = avtk("import-model", "--format", "v-vox2", tmp_path / "V-Vox2.model", tmp_path / "v_vox2.pt")
    assert ("format v-vox2: iresnet18 (width 64, embed_dim 512), channels bgr; 24,025,600 parameters; "
            "loaded 187 of 187 keys; AAM matrix [5994, 512] kept under 'loss'") in proc.stderr
    # V-Glint imports in the seed's channel order (its evaluation read frames with cv2.imread: BGR)
    proc = avtk("import-model", "--format", "v-glint", tmp_path / "V-Glint.model", tmp_path / "v_glint.pt")
    assert ("format v-glint: iresnet50 (width 64, embed_dim 512), channels bgr; 43,590,848 parameters; "
            "loaded 475 of 475 keys; no AAM matrix") in proc.stderr

    nets = {}
    for written, src, out, aam in ((vox2, "V-Vox2.model", "v_vox2.pt", True),
                                   (glint, "V-Glint.model", "v_glint.pt", False)):
        nets[src], cfg = load_model(tmp_path / out)
        assert cfg["model"]["channels"] == "bgr" and cfg["data"]["input"] == "frames"
        blob = torch.load(tmp_path / out, weights_only=False)
        assert blob["speakers"] == ([f"spk{i:04d}" for i in range(5994)] if aam else [])
        assert (blob["loss"] == {}) != aam and blob["config"]["source"]["sha256"] == sha256(tmp_path / src)
        assert blob["config"]["source"]["channels"] == "bgr"
        assert blob["config"]["source"]["channels_from"] == f"format {src[:-6].lower()}"
        assert all(torch.equal(v, written[k[len("encoder."):]]) for k, v in nets[src].state_dict().items())
    net_vox2 = nets["V-Vox2.model"]
    # V-Vox2 computes what iresnet18 loaded from the written tensors computes on the BGR images
    encoder = build_encoder("iresnet18")
    encoder.load_state_dict({k: v for k, v in vox2.items() if k != "weight"})
    images = torch.randint(0, 256, (2, 112, 112, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want, got = encoder.eval()(_face_input(images, bgr=True)), net_vox2(images)
    assert torch.allclose(got, want, rtol=0, atol=1e-6 * float(want.abs().max()))

    # V-Vox2 through the real extraction command, on face frames: the mean of N normalised frame embeddings
    avtk("extract-embeddings", "--model", tmp_path / "v_vox2.pt", "--num-frames", 2, f"scp:{corpus}/frames.scp",
         f"ark,scp:{tmp_path}/face.ark,{tmp_path}/face.scp")
    emb = dict(kaldiio.load_scp(str(tmp_path / "face.scp")))
    frames = _table(corpus / "frames.scp")
    assert sorted(emb) == sorted(frames)
    utt = sorted(frames)[0]
    x = torch.from_numpy(np.stack([read_frame(utt, p) for p in evenly_spaced(frame_paths(utt, frames[utt]), 2)]))
    with torch.no_grad():
        want = F.normalize(net_vox2(x), dim=1).mean(0).numpy()
    assert emb[utt].shape == (512,) and np.allclose(emb[utt], want, atol=1e-5)


def test_channels_option_overrides_the_formats_channel_order(tmp_path):
    """--channels rgb|bgr replaces a face format's order; every face path runs FaceNet, which applies it."""
    state = iresnet_layout("iresnet18", 7, width=4, embed_dim=16)
    torch.save(state, tmp_path / "backbone.pth")
    images = torch.randint(0, 256, (2, 112, 112, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    encoder = build_encoder("iresnet18", width=4, embed_dim=16)
    encoder.load_state_dict(state)
    encoder.eval()
    for channels in ("bgr", "rgb"):
        out = tmp_path / f"{channels}.pt"
        proc = avtk("import-model", "--format", "insightface", "--channels", channels, tmp_path / "backbone.pth", out)
        assert f"format insightface: iresnet18 (width 4, embed_dim 16), channels {channels};" in proc.stderr
        net, cfg = load_model(out)
        assert cfg["model"]["channels"] == channels
        assert cfg["source"]["channels"] == channels and cfg["source"]["channels_from"] == "--channels"
        with torch.no_grad():
            want = encoder(_face_input(images, bgr=channels == "bgr"))
            assert torch.allclose(net(images), want, rtol=0, atol=1e-5 * float(want.abs().max()))
    proc = avtk("import-model", "--format", "insightface", tmp_path / "backbone.pth", tmp_path / "default.pt")
    assert load_model(tmp_path / "default.pt")[1]["model"]["channels"] == "rgb"
    # a speech format has no channel order: one ERROR line, exit 1, no model file
    proc = avtk("import-model", "--format", "a-vox2", "--channels", "rgb", tmp_path / "backbone.pth",
                tmp_path / "speech.pt", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "ERROR [avtk import-model] --channels rgb does not apply to format a-vox2 (a speech network); face " \
           "formats take rgb or bgr" in proc.stderr
    assert not (tmp_path / "speech.pt").exists()


def test_insightface_backbone_of_any_depth(tmp_path):
    # a small r34 backbone: depth from the blocks per stage, width and embedding size from conv1 / fc
    state = iresnet_layout("iresnet34", 5, width=4, embed_dim=16)
    assert len(state) == len(iresnet_reference_keys([3, 4, 6, 3]))
    del state["layer3.2.bn2.num_batches_tracked"]  # filled silently
    torch.save(state, tmp_path / "backbone.pth")
    proc = avtk("import-model", "--format", "insightface", tmp_path / "backbone.pth", tmp_path / "r34.pt")
    assert ("format insightface: iresnet34 (width 4, embed_dim 16), channels rgb; " in proc.stderr
            and "1 num_batches_tracked filled" in proc.stderr and "WARNING" not in proc.stderr)
    net, cfg = load_model(tmp_path / "r34.pt")
    encoder = build_encoder("iresnet34", width=4, embed_dim=16)
    encoder.load_state_dict(state, strict=False)
    images = torch.randint(0, 256, (2, 112, 112, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(net(images), encoder.eval()(_face_input(images, False)), atol=1e-6)

    # --arch chooses the depth: r50 does not fit these keys; blocks of no known depth need --arch
    with pytest.raises(ImportMismatch, match="does not fit iresnet50") as err:
        import_checkpoint(tmp_path / "backbone.pth", "insightface", arch="iresnet50")
    assert ("layer3.13.conv1.weight", (16, 16, 3, 3)) in err.value.report.missing
    state = {k: v for k, v in state.items() if not k.startswith("layer3.5.")}  # 5 blocks in stage 3
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(AvtkError, match=r"\[3, 4, 5, 3\] blocks per stage, which is no iresnet depth.*give --arch"):
        import_checkpoint(tmp_path / "odd.pth", "insightface")


def test_missing_unexpected_and_mis_shaped_keys_are_all_reported(tmp_path):
    state = iresnet_layout("iresnet18", 6, width=4, embed_dim=16)
    state["weight"] = torch.randn(7, 16)
    del state["layer2.0.bn1.running_mean"]
    del state["layer4.1.bn3.num_batches_tracked"]  # not a problem: filled silently
    state["extra.bias"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(16, 99)
    torch.save(state, tmp_path / "bad.model")

    # v-vox2 is the seed's iresnet18 at width 64: every tensor of this small network is mis-shaped
    with pytest.raises(ImportMismatch, match="--allow-partial loads the") as err:
        import_checkpoint(tmp_path / "bad.model", "v-vox2")
    report = err.value.report
    assert report.missing == [("layer2.0.bn1.running_mean", (64,))]
    assert report.unexpected == [("extra.bias", (3,))]
    assert ("fc.weight", (16, 99), (512, 25088)) in report.mismatched
    assert ("conv1.weight", (4, 3, 3, 3), (64, 3, 3, 3)) in report.mismatched
    assert ("weight", (7, 16), (7, 512)) in report.mismatched
    assert not any("num_batches_tracked" in name for name, _ in report.missing)

    # the generic insightface format reads width 4 / embedding 16 from the keys: exactly the three problems
    del state["weight"]
    torch.save(state, tmp_path / "bad.pth")
    proc = avtk("import-model", "--format", "insightface", tmp_path / "bad.pth", tmp_path / "out.pt", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and not (tmp_path / "out.pt").exists()
    problems = [line.split("] ", 1)[1] for line in proc.stderr.splitlines() if " ERROR " in line][:-1]
    assert problems == ["missing key layer2.0.bn1.running_mean: the network expects [4]",
                        "unexpected key extra.bias [3]: no such key in iresnet18",
                        "mis-shaped key fc.weight: file [16, 99], network [16, 1568]"]
    assert ("keys: 1 missing (e.g. layer2.0.bn1.running_mean [4]), 1 unexpected (e.g. extra.bias [3]), "
            "1 mis-shaped (e.g. fc.weight: file [16, 99], network [16, 1568])") in proc.stderr

    proc = avtk("import-model", "--format", "insightface", "--allow-partial", tmp_path / "bad.pth",
                tmp_path / "out.pt")
    assert "WARNING" in proc.stderr and "mis-shaped key fc.weight: file [16, 99], network [16, 1568]" in proc.stderr
    assert ("partial import (--allow-partial): loaded 184 of 187 network keys; 1 missing, 1 unexpected and "
            "1 mis-shaped keys") in proc.stderr
    net, cfg = load_model(tmp_path / "out.pt")
    assert torch.equal(net.encoder.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    source = cfg["source"]
    assert (source["missing"], source["unexpected"], source["mis_shaped"]) == (
        ["layer2.0.bn1.running_mean"], ["extra.bias"], ["fc.weight"])
    assert (source["keys_loaded"], source["keys_expected"]) == (184, 187)


def test_files_that_are_not_checkpoints(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    proc = avtk("import-model", "--format", "a-vox2", tmp_path / "notes.txt", tmp_path / "out.pt", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{tmp_path}/notes.txt: not a torch checkpoint" in proc.stderr
    assert not (tmp_path / "out.pt").exists()

    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(AvtkError, match="holds pickled objects other than tensors .*Linear"):
        import_checkpoint(tmp_path / "module.pt", "insightface")
    torch.save({"state_dict": {"a": torch.zeros(1)}, "epoch": 3}, tmp_path / "wrapped.pt")
    with pytest.raises(AvtkError, match="not a flat state_dict.*'state_dict' entry may hold the weights"):
        import_checkpoint(tmp_path / "wrapped.pt", "insightface")
    with pytest.raises(AvtkError, match="no such file"):
        import_checkpoint(tmp_path / "missing.model", "a-vox2")
    # a layout of another format: nothing fits, and the error says which format the keys look like
    torch.save({"speaker_encoder.conv1.bias": torch.zeros(1024)}, tmp_path / "pretrain.model")
    with pytest.raises(AvtkError, match="the keys look like format ecapa-pretrain; no key matches"):
        import_checkpoint(tmp_path / "pretrain.model", "a-vox2")
