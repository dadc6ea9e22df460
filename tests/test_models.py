"""Speaker networks and losses: sizes and checkpoint names of the seed and the peers' networks (CAM++, ResNet34/221/293
as WeSpeaker configures them, ERes2NetV2 as 3D-Speaker does), exact variable-length batching, AAM."""
import math

import pytest
import torch
import torch.nn.functional as F

from avtk.errors import AvtkError
from avtk.models import (ENCODERS, LOSSES, AamSoftmax, CamPlusPlus, EcapaTdnn, ERes2NetV2, MarginScheduler, ResNet34,
                         ResNet221, ResNet293, build_encoder, build_loss)
from avtk.models.ecapa import split_seed_state_dict
from conftest import randomize_bn


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def randomize_stats(model, seed=0):
    """randomize_bn for networks with BNs without affine terms too (CAM++'s last): every BN gets non-trivial
    running statistics, and affine terms where it has them; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.5)
    return model.eval()


# Small widths of the peers' networks for the masking, folding and export tests (the counts use the full sizes).
SMALL_CAMPP = dict(in_dim=40, embed_dim=32, base_width=4, init_channels=16, growth_rate=8, bn_size=2)
SMALL_ERES2NET = dict(in_dim=40, embed_dim=32, base_width=8)  # branches of 3, 6, 13 and 26 channels


def padded_vs_single(model, lengths, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = [torch.randn(dim, n, generator=g) for n in lengths]
    batch = torch.zeros(len(items), dim, max(lengths))
    for i, x in enumerate(items):
        batch[i, :, : x.shape[1]] = x
        batch[i, :, x.shape[1]:] = 7.0  # garbage in the padding must not matter
    with torch.no_grad():
        together = model(batch, torch.tensor(lengths))
        alone = torch.cat([model(x[None]) for x in items])
        unmasked = model(batch)
    return together, alone, unmasked


# ---------------------------------------------------------------- ECAPA-TDNN


@pytest.mark.parametrize("channels, expected", [(1024, 15_444_544), (512, 6_978_176)])
def test_ecapa_parameter_count_matches_seed(channels, expected):
    assert n_params(EcapaTdnn(in_dim=80, channels=channels, embed_dim=192)) == expected


def test_ecapa_state_dict_has_seed_key_names():
    keys = list(EcapaTdnn(channels=256).state_dict())
    for k in ["conv1.weight", "bn1.running_var", "layer1.conv1.bias", "layer1.convs.6.weight",
              "layer3.bns.6.num_batches_tracked", "layer1.conv3.weight", "layer2.bn3.running_mean",
              "layer2.se.se.1.weight", "layer3.se.se.3.bias", "layer4.weight", "attention.0.weight",
              "attention.2.running_mean", "attention.4.bias", "bn5.running_mean", "fc6.weight",
              "bn6.num_batches_tracked"]:
        assert k in keys, k
    assert not any(k.startswith("torchfbank.") for k in keys)
    # The seed's 234 keys = these 231 + 3 torchfbank front-end buffers.
    assert len(keys) == 231


def test_seed_checkpoint_loads_with_identity_mapping():
    src = EcapaTdnn(channels=256)
    seed = dict(src.state_dict())
    seed["torchfbank.0.flipped_filter"] = torch.tensor([[[-0.97, 1.0]]])
    seed["torchfbank.1.spectrogram.window"] = torch.hamming_window(400)
    seed["torchfbank.1.mel_scale.fb"] = torch.zeros(257, 80)
    seed["weight"] = torch.randn(7, 192)
    for prefixed in (False, True):
        state = seed
        if prefixed:  # ECAPA-TDNN pretrain.model style
            state = {("speaker_loss.weight" if k == "weight" else f"speaker_encoder.{k}"): v for k, v in seed.items()}
        enc, loss, front = split_seed_state_dict(state)
        dst, aam = EcapaTdnn(channels=256), AamSoftmax(192, 7)
        dst.load_state_dict(enc, strict=True)
        aam.load_state_dict(loss, strict=True)
        assert sorted(front) == ["torchfbank.0.flipped_filter", "torchfbank.1.mel_scale.fb",
                                 "torchfbank.1.spectrogram.window"]
        assert torch.equal(dst.layer2.convs[3].weight, src.layer2.convs[3].weight)
        assert torch.equal(aam.weight, seed["weight"])


def test_ecapa_padded_batch_equals_items_alone():
    model = randomize_bn(EcapaTdnn(in_dim=80, channels=256, embed_dim=192))
    lengths = [300, 50, 173, 299, 88]
    together, alone, unmasked = padded_vs_single(model, lengths, 80)
    assert together.shape == (5, 192)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    # The full-length item needs no mask; the padded ones would differ without lengths.
    assert (unmasked[1] - alone[1]).abs().max() > 1e-2


def test_ecapa_full_lengths_equal_fast_path_and_short_input_is_finite():
    model = randomize_bn(EcapaTdnn(in_dim=40, channels=64, embed_dim=32))
    x = torch.randn(3, 40, 60)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor([60, 60, 60])), model(x), atol=1e-6, rtol=0)
        x = torch.randn(2, 40, 5)
        out = model(x, torch.tensor([1, 5]))  # a 1-frame item: variance clamped, not NaN
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[0], model(x[:1, :, :1])[0], atol=1e-5, rtol=0)


def test_ecapa_rejects_bad_input():
    model = EcapaTdnn(in_dim=40, channels=64, embed_dim=32).eval()
    with pytest.raises(AvtkError, match=r"expects features \(batch, 40, frames\)"):
        model(torch.randn(2, 80, 10))
    with pytest.raises(AvtkError, match=r"lengths must lie in \[1, 10\]"):
        model(torch.randn(2, 40, 10), torch.tensor([10, 11]))
    with pytest.raises(AvtkError, match=r"lengths must have shape \(2,\)"):
        model(torch.randn(2, 40, 10), torch.tensor([10]))
    with pytest.raises(AvtkError, match="multiple of the Res2Net scale"):
        EcapaTdnn(channels=100)


# ---------------------------------------------------------------- ResNet34


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ecapa_pooling_statistics_stay_float32_under_autocast(dtype):
    """Attentive pooling of activations of |h| >= 256 (h*h beyond float16's 65504) under autocast, as the
    trainer's AMP runs it: finite, and within low-precision rounding of the float32 pooling."""
    torch.manual_seed(0)
    model = randomize_bn(EcapaTdnn(in_dim=16, channels=32, embed_dim=8, pooled=48, attention=16))
    h = torch.rand(2, 48, 30) * 400 + 100  # layer4's ReLU output, large
    lengths = torch.tensor([30, 21])
    mask = (torch.arange(30)[None, None, :] < lengths[:, None, None]).float()
    count = lengths.float().view(-1, 1, 1)
    h = h * mask
    with torch.no_grad():
        reference = model._pool(h, mask, count)
        with torch.autocast("cpu", dtype=dtype):
            low = model._pool(h.to(dtype), mask, count)  # conv outputs are low precision under autocast
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert torch.allclose(low, reference, rtol=0.02, atol=0.5)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):  # and the whole network, end to end
        out = model(torch.randn(2, 16, 30) * 1e3, lengths)
    assert torch.isfinite(out).all()


def test_resnet34_size_and_names():
    model = ResNet34(in_dim=80, embed_dim=256, base_width=32)
    assert n_params(model) == 6_634_336  # WeSpeaker's ResNet34: ~6.6M
    keys = model.state_dict()
    assert "layer4.2.conv2.weight" in keys and "layer2.0.shortcut.0.weight" in keys and "seg_1.weight" in keys
    assert keys["seg_1.weight"].shape == (256, 2 * 256 * 10)
    assert ResNet34(in_dim=81, base_width=8).seg_1.in_features == 2 * 64 * 11  # ceil at each halving


@pytest.mark.parametrize("model", [
    pytest.param(lambda: ResNet34(in_dim=40, embed_dim=64, base_width=8), id="resnet34"),
    pytest.param(lambda: ResNet221(in_dim=40, embed_dim=16, base_width=4), id="resnet221"),
    pytest.param(lambda: ResNet293(in_dim=40, embed_dim=16, base_width=2), id="resnet293"),
    pytest.param(lambda: CamPlusPlus(**SMALL_CAMPP), id="campplus"),
    pytest.param(lambda: ERes2NetV2(**SMALL_ERES2NET), id="eres2netv2"),
])
def test_resnets_and_campplus_padded_batch_equals_items_alone(model):
    """Odd and even lengths exercise ceil(L / 2) at each stride (CAM++: its strided tdnn); 201, 297 and 233 input
    frames give CAM++ 101, 149 and 117 frames after it: two 100-frame segments, the last of 1, 49 or 17 frames;
    1 and 2 frames the shortest inputs."""
    model = randomize_stats(model())
    lengths = [97, 50, 201, 297, 233, 64, 1, 2]
    together, alone, unmasked = padded_vs_single(model, lengths, 40)
    assert together.shape == (8, model.embed_dim) and torch.isfinite(together).all()
    assert alone.abs().max() > 0.5  # not a degenerate network
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    assert (unmasked[1] - alone[1]).abs().max() > 1e-3  # the padding would matter without lengths


# ------------------------------------------------------- the peers' networks at their published sizes


@pytest.mark.parametrize("name, args, expected, published", [
    # WeSpeaker examples/voxceleb/v2: conf/campplus.yaml (emb 512), conf/resnet.yaml with ResNet221/293 (emb 256,
    # one embedding layer); published counts from its README's results table.
    ("campplus", {}, 7_176_224, 7.18e6),
    ("resnet221", {}, 23_792_224, 23.79e6),
    ("resnet293", {}, 28_626_016, 28.62e6),
    ("resnet34", {}, 6_634_336, 6.63e6),
    ("campplus", {"embed_dim": 192}, 6_848_544, None),
    # 3D-Speaker egs/voxceleb/sv-eres2netv2/conf/eres2netv2.yaml (m_channels 64, embedding 192; baseWidth 26,
    # scale 2, expansion 2 its model's defaults): the embedding network alone, no classifier; its model file
    # counts 17.86 M, its tables 17.8 M
    ("eres2netv2", {}, 17_859_632, 17.86e6),
])
def test_peer_networks_match_the_published_parameter_counts(name, args, expected, published):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = build_encoder(name, in_dim=80, **args)
    assert n_params(model) == expected
    if published:
        assert abs(expected - published) / published < 0.01
        assert round(expected / 1e6, 2) == pytest.approx(published / 1e6, abs=0.011)


def test_campplus_layout_and_wespeaker_key_names():
    model = CamPlusPlus(in_dim=80)
    keys = model.state_dict()
    assert model.head.out_channels == 320 and model.xvector.channels == 512 and model.embed_dim == 512
    assert keys["xvector.tdnn.linear.weight"].shape == (128, 320, 5)
    # dense blocks of 12, 24, 16 layers adding 32 channels each; transits halve: 512 -> 256, 1024 -> 512, 1024 -> 512
    assert keys["xvector.block1.tdnnd12.linear1.weight"].shape == (128, 128 + 11 * 32, 1)
    assert keys["xvector.block2.tdnnd24.cam_layer.linear_local.weight"].shape == (32, 128, 3)
    assert "xvector.block3.tdnnd16.cam_layer.linear2.bias" in keys
    assert "xvector.block3.tdnnd17.linear1.weight" not in keys
    assert model.xvector.block2.tdnnd1.cam_layer.linear_local.dilation == (2,)
    assert keys["xvector.block3.tdnnd1.cam_layer.linear1.weight"].shape == (64, 128, 1)
    assert keys["xvector.transit1.linear.weight"].shape == (256, 512, 1)
    assert keys["xvector.transit2.linear.weight"].shape == (512, 1024, 1)
    assert keys["xvector.transit3.linear.weight"].shape == (512, 1024, 1)
    assert keys["xvector.dense.linear.weight"].shape == (512, 1024, 1)
    assert "xvector.dense.nonlinear.batchnorm.running_var" in keys  # a BN without affine terms
    assert "xvector.dense.nonlinear.batchnorm.weight" not in keys
    assert keys["head.layer2.0.shortcut.0.weight"].shape == (32, 32, 1, 1) and "head.conv2.weight" in keys
    assert model.head.layer1[0].conv1.stride == (2, 1)  # the FCM strides on frequency only


def test_eres2netv2_layout_and_3dspeaker_key_names():
    with torch.device("meta"):
        model = ERes2NetV2(in_dim=80)
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert keys["conv1.weight"] == (64, 1, 3, 3)
    # branches of floor(planes x 26 / 64) channels: 26, 52, 104, 208; two per block; outputs 2 x planes
    assert keys["layer1.0.conv1.weight"] == (52, 64, 1, 1) and keys["layer1.0.convs.1.weight"] == (26, 26, 3, 3)
    assert keys["layer1.0.conv3.weight"] == (128, 52, 1, 1) and keys["layer1.0.shortcut.0.weight"] == (128, 64, 1, 1)
    assert "layer1.1.shortcut.0.weight" not in keys and "layer1.0.convs.2.weight" not in keys
    assert keys["layer4.2.convs.1.weight"] == (208, 208, 3, 3) and keys["layer4.2.conv3.weight"] == (1024, 416, 1, 1)
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[1].conv1.stride == (1, 1)
    # local fusion (AFF over [x; y], 2C -> C / 4 -> C) in layer3 and layer4 only
    assert keys["layer3.5.fuse_models.0.local_att.0.weight"] == (26, 208, 1, 1)
    assert keys["layer4.0.fuse_models.0.local_att.3.weight"] == (208, 52, 1, 1)
    assert "layer2.0.fuse_models.0.local_att.0.weight" not in keys
    assert "layer3.0.fuse_models.1.local_att.0.bias" not in keys
    # global fusion: layer3's output (512 channels) down-sampled to layer4's (1024), AFF; pooling over 1024 x 10
    assert keys["layer3_ds.weight"] == (1024, 512, 3, 3) and "layer3_ds.bias" not in keys
    assert keys["fuse34.local_att.0.weight"] == (256, 2048, 1, 1) and keys["fuse34.local_att.4.running_var"] == (1024,)
    assert keys["seg_1.weight"] == (192, 2 * 1024 * 10) and len([k for k in keys if k.startswith("seg_")]) == 2
    assert ERes2NetV2(in_dim=81, base_width=4).seg_1.in_features == 2 * 64 * 11  # ceil at each halving


def test_eres2netv2_fusion_and_clipped_activation():
    """AFF(x, y) = x * a + y * (2 - a) with a = 1 + tanh(local_att([x; y])): 2x when y = x whatever the attention,
    and the direct formula otherwise; the blocks' activations are clipped at 20."""
    from avtk.models.eres2net import Aff, ERes2NetV2Block

    aff = randomize_stats(Aff(8))
    x, y = torch.randn(2, 8, 5, 7), torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(aff(x, x), 2 * x)
        a = 1 + torch.tanh(aff.local_att(torch.cat([x, y], dim=1)))
        torch.testing.assert_close(aff(x, y), x * a + y * (2 - a))
        assert aff.local_att(torch.cat([x, y], dim=1)).abs().max() > 0.1  # not a trivial attention
        block = ERes2NetV2Block(4, 4, 2, 2).eval()
        out = block(torch.full((1, 4, 3, 3), 1e3))
    assert out.max() == 20.0 and out.min() >= 0


def test_campplus_segment_context_and_short_inputs():
    """The CAM context of a frame: the utterance mean plus its 100-frame segment's mean (the last segment
    shorter), equal to a direct computation; a batch of full lengths takes the plain path with the same result."""
    from avtk.models.campplus import segment_means

    h = torch.randn(2, 3, 250)
    want = torch.cat([h[..., s:s + 100].mean(-1, keepdim=True).expand(-1, -1, min(100, 250 - s))
                      for s in range(0, 250, 100)], dim=-1)
    torch.testing.assert_close(segment_means(h, None), want)
    lengths = torch.tensor([250, 130])
    mask = (torch.arange(250)[None, None] < lengths[:, None, None]).float()
    got = segment_means(h * mask, mask)
    torch.testing.assert_close(got[0], want[0])
    short = h[1:, :, :130]
    want1 = torch.cat([short[..., :100].mean(-1, keepdim=True).expand(-1, -1, 100),
                       short[..., 100:].mean(-1, keepdim=True).expand(-1, -1, 30)], dim=-1)
    torch.testing.assert_close(got[1, :, :130], want1[0])
    assert not got[1, :, 200:].any()  # a segment with no valid frame: 0, not NaN
    model = randomize_stats(CamPlusPlus(**SMALL_CAMPP))
    x = torch.randn(3, 40, 60)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor([60, 60, 60])), model(x), atol=1e-6, rtol=0)


def test_peer_networks_reject_bad_input():
    model = CamPlusPlus(**SMALL_CAMPP).eval()
    with pytest.raises(AvtkError, match=r"CAM\+\+ expects features \(batch, 40, frames\), got \(2, 80, 10\)"):
        model(torch.randn(2, 80, 10))
    with pytest.raises(AvtkError, match=r"lengths must lie in \[1, 10\]"):
        model(torch.randn(2, 40, 10), torch.tensor([0, 10]))
    with pytest.raises(AvtkError, match=r"ResNet221 expects features \(batch, 40, frames\)"):
        ResNet221(in_dim=40, base_width=2)(torch.randn(1, 40))
    with pytest.raises(AvtkError, match=r"CAM\+\+ needs bn_size x growth_rate >= 2 \(the CAM layer halves it\), "
                                        r"got 1 x 1"):
        CamPlusPlus(growth_rate=1, bn_size=1)
    with pytest.raises(AvtkError, match=r"ERes2NetV2 expects features \(batch, 40, frames\), got \(2, 80, 10\)"):
        ERes2NetV2(**SMALL_ERES2NET)(torch.randn(2, 80, 10))
    with pytest.raises(AvtkError, match=r"lengths must lie in \[1, 10\]"):
        ERes2NetV2(**SMALL_ERES2NET)(torch.randn(2, 40, 10), torch.tensor([11, 10]))
    with pytest.raises(AvtkError, match=r"ERes2NetV2 needs base_width x branch_width >= 64 \(branches of at least one "
                                        r"channel\), got 2 x 26"):
        ERes2NetV2(base_width=2)


# ---------------------------------------------------------------- AAM softmax


def test_aam_margin_zero_is_scaled_cosine_softmax():
    torch.manual_seed(0)
    aam = AamSoftmax(16, 10, margin=0.0, scale=30.0)
    x, y = torch.randn(8, 16), torch.randint(0, 10, (8,))
    loss, acc = aam(x, y)
    cos = F.normalize(x) @ F.normalize(aam.weight).t()
    torch.testing.assert_close(loss, F.cross_entropy(30.0 * cos, y))
    assert acc.item() == pytest.approx(100.0 * (cos.argmax(1) == y).float().mean().item())


def test_aam_margin_on_target_and_non_easy_branch():
    m, s = 0.2, 30.0
    aam = AamSoftmax(4, 3, margin=m, scale=s)
    cos = torch.tensor([[0.5, 0.1, -0.3], [-0.99, 0.2, 0.0], [0.3, -0.995, 0.1]])
    labels = torch.tensor([0, 0, 1])
    got = aam.logits(cos, labels)
    # ordinary region: s * cos(theta + m) on the target, s * cos elsewhere
    assert got[0, 0].item() == pytest.approx(s * math.cos(math.acos(0.5) + m), rel=1e-5)
    assert got[0, 1].item() == pytest.approx(s * 0.1, rel=1e-6)
    # cos(theta) <= cos(pi - m): the target logit is cos - sin(pi - m) * m
    assert -0.99 <= math.cos(math.pi - m) and -0.995 <= math.cos(math.pi - m)
    assert got[1, 0].item() == pytest.approx(s * (-0.99 - math.sin(math.pi - m) * m), rel=1e-5)
    assert got[2, 1].item() == pytest.approx(s * (-0.995 - math.sin(math.pi - m) * m), rel=1e-5)
    # easy margin: no margin where cos <= 0
    easy = AamSoftmax(4, 3, margin=m, scale=s, easy_margin=True).logits(cos, labels)
    assert easy[1, 0].item() == pytest.approx(s * -0.99, rel=1e-6)
    assert easy[0, 0].item() == pytest.approx(got[0, 0].item(), rel=1e-6)


def test_aam_margin_is_mutable_and_raises_the_loss():
    torch.manual_seed(1)
    aam = AamSoftmax(8, 5, margin=0.0)
    x, y = torch.randn(6, 8), torch.randint(0, 5, (6,))
    base, _ = aam(x, y)
    aam.margin = 0.3
    harder, _ = aam(x, y)
    assert harder.item() > base.item()
    harder.backward()
    assert aam.weight.grad is not None and torch.isfinite(aam.weight.grad).all()


def test_aam_subcenters():
    aam = AamSoftmax(6, 4, subcenters=3)
    assert aam.weight.shape == (12, 6)
    x = torch.randn(5, 6)
    full = F.normalize(x) @ F.normalize(aam.weight).t()
    torch.testing.assert_close(aam.cosine(x), full.view(5, 4, 3).amax(2))
    # an embedding equal to sub-centre 2 of class 1 is classified as class 1
    loss, acc = aam(aam.weight.detach()[[1 * 3 + 2]], torch.tensor([1]))
    assert acc.item() == 100.0 and torch.isfinite(loss)


def test_aam_weight_init_and_validation():
    aam = AamSoftmax(192, 500)
    std = math.sqrt(2.0 / (192 + 500))  # Xavier normal
    assert aam.weight.std().item() == pytest.approx(std, rel=0.05)
    with pytest.raises(AvtkError, match="subcenters must be >= 1"):
        AamSoftmax(4, 3, subcenters=0)


# ---------------------------------------------------------------- margin schedule


def test_margin_scheduler():
    sched = MarginScheduler(0.2, warmup_start_epoch=2, warmup_epochs=4)
    assert [sched.value(e) for e in (0, 1.9, 2)] == [0.0, 0.0, 0.0]
    assert sched.value(3) == pytest.approx(0.05)
    assert sched.value(5) == pytest.approx(0.15)
    assert sched.value(6) == pytest.approx(0.2) and sched.value(40) == pytest.approx(0.2)
    assert MarginScheduler(0.3).value(0.0) == pytest.approx(0.3)
    assert MarginScheduler(0.3, warmup_start_epoch=1).value(0.5) == 0.0
    aam = AamSoftmax(4, 3, margin=0.2)
    assert sched.step(aam, 4.0) == pytest.approx(0.1) and aam.margin == pytest.approx(0.1)
    with pytest.raises(AvtkError, match="must be >= 0"):
        MarginScheduler(0.2, warmup_epochs=-1)


# ---------------------------------------------------------------- registries


def test_registries():
    assert set(ENCODERS) == {"ecapa_tdnn", "resnet34", "resnet221", "resnet293", "campplus", "iresnet18", "iresnet34",
                             "iresnet50", "iresnet100", "gated_fusion", "eres2netv2"}
    assert set(LOSSES) == {"aam_softmax"}
    enc = build_encoder("ecapa_tdnn", in_dim=40, channels=64, embed_dim=32)
    assert isinstance(enc, EcapaTdnn) and enc.embed_dim == 32
    assert isinstance(build_encoder("resnet34", base_width=8), ResNet34)
    assert build_loss("aam_softmax", embed_dim=32, num_classes=4, margin=0.1).margin == 0.1
    assert isinstance(build_encoder("resnet293", base_width=2), ResNet293)
    assert isinstance(build_encoder("campplus", growth_rate=4), CamPlusPlus)
    assert isinstance(build_encoder("eres2netv2", base_width=4, scale=3), ERes2NetV2)
    with pytest.raises(AvtkError, match="unknown encoder 'tdnn'; known: campplus, ecapa_tdnn, eres2netv2, gated_fusion, "
                                        "iresnet100, iresnet18, iresnet34, iresnet50, resnet221, resnet293, resnet34"):
        build_encoder("tdnn")
    with pytest.raises(AvtkError, match="unknown argument chanels for encoder 'ecapa_tdnn'; accepted: in_dim, channels"):
        build_encoder("ecapa_tdnn", chanels=512)
    with pytest.raises(AvtkError, match="unknown loss 'softmax'; known: aam_softmax"):
        build_loss("softmax", embed_dim=4, num_classes=2)
    with pytest.raises(AvtkError, match="unknown arguments foo, margn for loss 'aam_softmax'"):
        build_loss("aam_softmax", embed_dim=4, num_classes=2, margn=0.1, foo=1)
