"""The fused inference copies of the encoders (avtk.models.ecapa / avtk.models.iresnet fuse_for_inference,
avtk.models.fold.fold_batchnorms for the ResNets and CAM++, which avtk.embed.prepare_for_inference picks for
extraction) give the eager model's embeddings, batched or not.
Their speed is measured by bench/extract.py and bench/face_extract.py, not here."""
import numpy as np
import pytest
import torch
from torch import nn

from avtk.embed import embed, embed_faces, prepare_for_inference
from avtk.errors import AvtkError
from avtk.models import CamPlusPlus, EcapaTdnn, ERes2NetV2, ResNet34, ResNet221, build_encoder
from avtk.models.ecapa import FusedEcapaTdnn
from avtk.models.ecapa import fuse_for_inference as fuse_ecapa
from avtk.models.face_net import FaceNet
from avtk.models.fold import fold_batchnorms
from avtk.models.iresnet import FusedIResNet
from avtk.models.iresnet import fuse_for_inference as fuse_iresnet
from avtk.models.speaker_net import SpeakerNet
from conftest import randomize_bn
from test_models import SMALL_CAMPP, SMALL_ERES2NET, randomize_stats

TOL = 1e-4
pytestmark = pytest.mark.usefixtures("one_thread")


def items(lengths, dim=80, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(dim, n, generator=g) for n in lengths]


def padded(xs, fill=7.0):
    batch = torch.full((len(xs), xs[0].shape[0], max(x.shape[1] for x in xs)), fill)
    for i, x in enumerate(xs):
        batch[i, :, : x.shape[1]] = x
    return batch, torch.tensor([x.shape[1] for x in xs])


@pytest.mark.parametrize("negative_scales", [False, True])
def test_fused_ecapa_equals_eager_batched_and_alone(negative_scales):
    model = randomize_bn(EcapaTdnn(in_dim=80, channels=256, embed_dim=192), negative_scales=negative_scales)
    fused = fuse_ecapa(model)
    xs = items([300, 50, 173, 299, 88, 1, 2])  # 1 and 2 frames: the clamped-variance edge
    batch, lengths = padded(xs)
    with torch.inference_mode():
        eager_alone = torch.cat([model(x[None]) for x in xs])
        fused_batched = fused(batch, lengths)
        fused_alone = torch.cat([fused(x[None]) for x in xs])
        full = fused(batch[:1, :, :300], torch.tensor([300]))
    assert fused_batched.shape == (7, 192) and torch.isfinite(fused_batched).all()
    torch.testing.assert_close(fused_batched, eager_alone, atol=TOL, rtol=0)
    torch.testing.assert_close(fused_alone, eager_alone, atol=TOL, rtol=0)
    torch.testing.assert_close(fused_batched, fused_alone, atol=TOL, rtol=0)
    torch.testing.assert_close(full[0], eager_alone[0], atol=TOL, rtol=0)


def test_fused_ecapa_is_inference_only_and_leaves_the_model_alone():
    model = randomize_bn(EcapaTdnn(in_dim=40, channels=64, embed_dim=32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    fused = fuse_ecapa(model)  # eval statistics whatever the mode; the model keeps its mode and grads
    assert isinstance(fused, FusedEcapaTdnn)
    assert all(m.training for m in model.modules()) and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(AvtkError, match=r"expects features \(batch, 40, frames\)"):
        fused(torch.randn(2, 80, 10))
    with pytest.raises(AvtkError, match=r"lengths must lie in \[1, 10\]"):
        fused(torch.randn(2, 40, 10), torch.tensor([10, 11]))
    with pytest.raises(AvtkError, match="takes an EcapaTdnn"):
        fuse_ecapa(ResNet34(in_dim=40, embed_dim=16, base_width=4))


def test_embed_uses_the_fused_path_with_the_eager_embeddings():
    net = SpeakerNet(encoder_args={"in_dim": 80, "channels": 128, "embed_dim": 64})
    randomize_bn(net)
    assert isinstance(prepare_for_inference(net).encoder, FusedEcapaTdnn)
    assert isinstance(net.encoder, EcapaTdnn)  # the network passed in is not changed
    assert prepare_for_inference(net.train()) is net  # training mode: batch statistics, nothing to fold
    net.eval()
    rng = np.random.default_rng(0)
    feats = [(f"u{i}", rng.standard_normal((n, 80)).astype(np.float32)) for i, n in enumerate([420, 35, 260, 419, 120])]
    batched = dict(embed(net, feats, "feats", max_frames=2000))
    alone = dict(embed(net, feats, "feats", max_frames=1))
    eager = dict(embed(net, feats, "feats", max_frames=1, fused=False))
    diffs = [max(np.abs(batched[k] - eager[k]).max(), np.abs(alone[k] - eager[k]).max()) for k in eager]
    assert sorted(batched) == sorted(eager) and max(diffs) <= TOL


def n_batchnorms(module):
    return sum(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in module.modules())


@pytest.mark.parametrize("encoder", [
    pytest.param(lambda: ResNet34(in_dim=80, embed_dim=64, base_width=8), id="resnet34"),
    pytest.param(lambda: ResNet221(in_dim=80, embed_dim=32, base_width=4), id="resnet221"),
    pytest.param(lambda: CamPlusPlus(**{**SMALL_CAMPP, "in_dim": 80}), id="campplus"),
    pytest.param(lambda: ERes2NetV2(**{**SMALL_ERES2NET, "in_dim": 80}), id="eres2netv2"),
])
def test_folded_resnets_and_campplus_equal_eager_and_leave_the_model_alone(encoder):
    model = randomize_stats(encoder())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    folded = fold_batchnorms(model)  # running statistics whatever the mode; the model keeps its mode and grads
    # what stays: CAM++'s pre-activation BNs (BN -> ReLU -> conv): 52 dense layers', 3 transits', out_nonlinear
    assert n_batchnorms(folded) == (56 if isinstance(model, CamPlusPlus) else 0) < n_batchnorms(model)
    model.eval()
    xs = items([300, 50, 213, 299, 88, 1, 2])
    batch, lengths = padded(xs)
    with torch.inference_mode():
        eager_alone = torch.cat([model(x[None]) for x in xs])
        folded_batched = folded(batch, lengths)
        folded_alone = torch.cat([folded(x[None]) for x in xs])
    assert eager_alone.abs().max() > 0.5 and torch.isfinite(folded_batched).all()
    torch.testing.assert_close(folded_batched, eager_alone, atol=TOL, rtol=0)
    torch.testing.assert_close(folded_alone, eager_alone, atol=TOL, rtol=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters()) and not any(p.requires_grad for p in folded.parameters())


def test_embed_folds_resnet_campplus_and_eres2netv2_encoders():
    for args in ({"encoder": "resnet221", "encoder_args": {"in_dim": 80, "base_width": 2, "embed_dim": 16}},
                 {"encoder": "campplus", "encoder_args": {**SMALL_CAMPP, "in_dim": 80}},
                 {"encoder": "eres2netv2", "encoder_args": {"in_dim": 80, "base_width": 4, "embed_dim": 16}}):
        net = randomize_stats(SpeakerNet(**args))
        fast = prepare_for_inference(net)
        assert fast.encoder is not net.encoder and type(fast.encoder) is type(net.encoder)
        assert n_batchnorms(fast.encoder) == (56 if args["encoder"] == "campplus" else 0)
        rng = np.random.default_rng(0)
        feats = [(f"u{i}", rng.standard_normal((n, 80)).astype(np.float32)) for i, n in enumerate([420, 35, 260])]
        folded = dict(embed(net, feats, "feats", max_frames=2000))
        eager = dict(embed(net, feats, "feats", max_frames=1, fused=False))
        assert max(np.abs(folded[k] - eager[k]).max() for k in eager) <= TOL
    with pytest.raises(AvtkError, match="fold_batchnorms takes a network that names its conv -> BN pairs, got Linear"):
        fold_batchnorms(nn.Linear(2, 2))


def _calibrated(net, images, seed=0):
    """Non-trivial BN affine parameters, PReLU slopes and running statistics (from `images` in train mode)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.momentum = None
            if m.weight.requires_grad:  # not iresnet's fixed `features` weight
                m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
        elif isinstance(m, nn.PReLU):
            m.weight.data = torch.rand(m.weight.shape, generator=g) * 0.3
    net.train()
    with torch.no_grad():
        net(images)
    return net.eval()


@pytest.mark.parametrize("name,width,embed_dim,channels_last,cpu_batch", [
    ("iresnet18", 64, 512, True, 4),  # the real size, in slices of 4 (and a last one of 2)
    ("iresnet18", 16, 64, False, 0),
    ("iresnet50", 8, 32, True, 8),
])
def test_fused_iresnet_equals_eager_within_1e4(name, width, embed_dim, channels_last, cpu_batch):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    net = build_encoder(name, width=width, embed_dim=embed_dim)
    net = _calibrated(net, torch.rand(6, 3, 112, 112, generator=g) * 2 - 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(10, 3, 112, 112, generator=g) * 2 - 1
    fused = fuse_iresnet(net, channels_last=channels_last, cpu_batch=cpu_batch)
    with torch.no_grad():
        want = net(x)
    with torch.inference_mode():
        got = fused(x)
    assert got.shape == want.shape == (10, embed_dim)
    assert want.norm(dim=1).min() > 1.0  # not a degenerate network
    assert (got - want).abs().max() <= TOL
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the model is not changed
    assert not any(p.requires_grad for p in fused.parameters())
    fused.train()  # no batch statistics: train() changes nothing
    with torch.no_grad():
        assert torch.equal(fused(x), got)


def test_facenet_for_inference_and_bad_input():
    torch.manual_seed(0)
    net = FaceNet("iresnet18", {"width": 8, "embed_dim": 16}, channels="bgr")
    images = torch.randint(0, 256, (9, 112, 112, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    _calibrated(net, images)
    fast = prepare_for_inference(net)
    assert isinstance(fast.encoder, FusedIResNet) and not isinstance(net.encoder, FusedIResNet)
    assert fast.input_size == net.input_size == 112 and fast.channels == "bgr"
    with torch.inference_mode():
        assert (fast(images) - net(images)).abs().max() <= TOL
        with pytest.raises(AvtkError, match="expects 112x112"):
            fast.encoder(torch.zeros(1, 3, 96, 96))
    with pytest.raises(AvtkError, match="takes an IResNet"):
        fuse_iresnet(nn.Linear(2, 2))


def test_embed_faces_uses_the_fused_path_with_the_eager_embeddings(tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    net = FaceNet("iresnet18", {"width": 8, "embed_dim": 16})
    rng = np.random.default_rng(3)
    _calibrated(net, torch.from_numpy(rng.integers(0, 256, (8, 112, 112, 3), dtype=np.uint8)))
    items = []
    for u, n in enumerate([7, 3, 1]):  # 5 evenly spaced of 7, all of 3 and of 1
        d = tmp_path / f"u{u}"
        d.mkdir()
        for f in range(n):
            Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(d / f"{f:04d}.jpg")
        items.append((f"u{u}", str(d)))
    assert isinstance(prepare_for_inference(net).encoder, FusedIResNet) and not isinstance(net.encoder, FusedIResNet)
    fused = dict(embed_faces(net, items, batch_frames=4))
    eager = dict(embed_faces(net, items, batch_frames=4, fused=False))
    assert sorted(fused) == sorted(eager) == ["u0", "u1", "u2"]
    assert max(float(np.abs(fused[k] - eager[k]).max()) for k in eager) <= TOL
