"""The face path: iresnet layout, alignment, face frames, face training and face embeddings, bad input."""
import os
import re

import kaldiio
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from avtk.face.align import TEMPLATE_112, align_face, apply_affine, umeyama
from avtk.face.extract import read_landmarks
from avtk.face.frames import augment_face, evenly_spaced
from avtk.models import build_encoder
from avtk.models.face_net import FaceNet
from conftest import avtk

TINY_FACE = {
    "model": {"encoder": "iresnet18", "encoder_args": {"width": 4, "embed_dim": 16}},
    "optim": {"lr": 0.002},
    "data": {"batch_size": 8},
    "runtime": {"epochs": 2, "log_interval": 2, "average_last": 2},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("face")
    avtk("make-synthetic-corpus", "--num-train-speakers", 4, "--num-test-speakers", 3, "--videos-per-speaker", 2,
         "--utts-per-video", 3, "--min-duration", 1.5, "--max-duration", 3, root / "corpus", root / "data")
    return root


def insightface_layout(depth_blocks, width=64, embed_dim=512, size=112):
    """{key: shape} of an insightface iresnet backbone.pth, written out from its layout description."""
    shapes = {"conv1.weight": (width, 3, 3, 3), "prelu.weight": (width,)}

    def bn(prefix, n):
        shapes.update({f"{prefix}.weight": (n,), f"{prefix}.bias": (n,), f"{prefix}.running_mean": (n,),
                       f"{prefix}.running_var": (n,), f"{prefix}.num_batches_tracked": ()})

    bn("bn1", width)
    cin = width
    for stage, blocks in enumerate(depth_blocks, 1):
        planes = width * 2 ** (stage - 1)
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            bn(f"{p}.bn1", cin)
            shapes[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.prelu.weight"] = (planes,)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn3", planes)
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                bn(f"{p}.downsample.1", planes)
            cin = planes
    bn("bn2", cin)
    shapes["fc.weight"] = (embed_dim, cin * (size // 16) ** 2)
    shapes["fc.bias"] = (embed_dim,)
    bn("features", embed_dim)
    return shapes


@pytest.mark.parametrize("name,blocks,params,keys", [
    ("iresnet18", [2, 2, 2, 2], 24_025_600, 187),
    ("iresnet50", [3, 4, 14, 3], 43_590_848, 475),
])
def test_iresnet_parameter_counts_and_insightface_layout(name, blocks, params, keys, tmp_path):
    net = build_encoder(name)
    assert sum(p.numel() for p in net.parameters()) == params
    layout = insightface_layout(blocks)
    assert len(layout) == keys
    state = {k: torch.randn(s) if s else torch.tensor(7) for k, s in layout.items()}
    state["features.weight"] = torch.ones(512)
    torch.save(state, tmp_path / "backbone.pth")
    net.load_state_dict(torch.load(tmp_path / "backbone.pth"), strict=True)  # no key mapping
    assert torch.equal(net.fc.weight, state["fc.weight"])
    assert not net.features.weight.requires_grad


def test_iresnet_depths_and_embedding_shape():
    for depth, blocks in ((34, [3, 4, 6, 3]), (100, [3, 13, 30, 3])):
        net = build_encoder(f"iresnet{depth}", width=4, embed_dim=8)
        assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == blocks
    net = build_encoder("iresnet18", width=4, embed_dim=8).eval()
    assert net(torch.randn(2, 3, 112, 112)).shape == (2, 8)
    with pytest.raises(Exception, match="expects 112x112"):
        net(torch.randn(1, 3, 96, 96))


def test_bgr_channel_order_feeds_the_encoder_bgr():
    torch.manual_seed(0)
    rgb, bgr = FaceNet("iresnet18", {"width": 4, "embed_dim": 8}), FaceNet("iresnet18", {"width": 4, "embed_dim": 8}, "bgr")
    bgr.load_state_dict(rgb.state_dict())
    rgb.eval(), bgr.eval()
    images = torch.randint(0, 256, (2, 112, 112, 3), dtype=torch.uint8)
    assert torch.allclose(bgr(images), rgb(images.flip(-1)), atol=1e-6)
    x = rgb.normalize(images)
    assert x.shape == (2, 3, 112, 112) and x.min() >= -1 and x.max() <= 1


def test_warp_puts_landmarks_on_the_template_within_half_a_pixel():
    """Bright dots drawn at 5 landmarks of a posed face land, after alignment, on the template points."""
    rng = np.random.default_rng(3)
    for _ in range(5):
        angle, scale = rng.uniform(-0.4, 0.4), rng.uniform(0.9, 1.6)
        rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = (TEMPLATE_112 - 56) @ rot.T + rng.uniform(70, 90, size=2)
        yy, xx = np.mgrid[0:160, 0:160]
        image = np.zeros((160, 160), np.float64)
        for x, y in points:
            image += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5 ** 2))
        aligned, m = align_face((image * 255 / image.max()).astype(np.float32), points)
        assert np.abs(apply_affine(m, points) - TEMPLATE_112).max() < 1e-6
        for tx, ty in TEMPLATE_112:
            x0, y0 = int(round(tx)), int(round(ty))
            win = aligned[y0 - 6:y0 + 7, x0 - 6:x0 + 7].astype(np.float64)
            wy, wx = np.mgrid[y0 - 6:y0 + 7, x0 - 6:x0 + 7]
            cx, cy = (win * wx).sum() / win.sum(), (win * wy).sum() / win.sum()
            assert abs(cx - tx) < 0.5 and abs(cy - ty) < 0.5, (cx, cy, tx, ty)


def test_extract_face_frames_from_raw_frames_and_ground_truth_landmarks(corpus, tmp_path):
    frames = dict(line.split() for line in (corpus / "data/test/frames.scp").read_text().splitlines())
    raw = {u: d.replace("/frame_align/", "/frame_raw/") for u, d in sorted(frames.items())[:6]}
    (tmp_path / "raw.scp").write_text("".join(f"{u} {d}\n" for u, d in raw.items()))
    avtk("extract-face-frames", "--detector", "landmarks", tmp_path / "raw.scp", tmp_path / "align",
         tmp_path / "frames.scp")
    out = dict(line.split() for line in (tmp_path / "frames.scp").read_text().splitlines())
    assert sorted(out) == sorted(raw)
    for utt, d in out.items():
        assert d == str(tmp_path / "align" / utt)
        marks = read_landmarks(utt, os.path.join(raw[utt], "landmarks.txt"))
        names = sorted(os.listdir(d))
        assert names == sorted(marks) and names == sorted(os.listdir(frames[utt]))
        for name in names:
            # ground-truth landmarks map onto the template within 0.5 px
            m = umeyama(marks[name], TEMPLATE_112)
            assert np.abs(apply_affine(m, marks[name]) - TEMPLATE_112).max() < 0.5
            ours = np.asarray(Image.open(os.path.join(d, name)), np.float32)
            ref = np.asarray(Image.open(os.path.join(frames[utt], name)), np.float32)
            assert ours.shape == (112, 112, 3)
            assert np.abs(ours - ref).mean() < 4.0  # the same warp; only the raw frame's JPEG coding differs


def test_extract_face_frames_bad_input(corpus, tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(d / "0010.jpg")
    (d / "landmarks.txt").write_text("0010.jpg 1 2 3\n")
    (tmp_path / "in.scp").write_text(f"u1 {d}\n")
    proc = avtk("extract-face-frames", "--detector", "landmarks", tmp_path / "in.scp", tmp_path / "a",
                tmp_path / "f.scp", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{d}/landmarks.txt:1: expected '<frame> x1 y1 ... x5 y5'" in proc.stderr
    (d / "0010.jpg").write_bytes(b"not a jpeg")
    (d / "landmarks.txt").write_text("0010.jpg " + " ".join(map(str, TEMPLATE_112.ravel())) + "\n")
    proc = avtk("extract-face-frames", "--detector", "landmarks", tmp_path / "in.scp", tmp_path / "a",
                tmp_path / "f.scp", check=False)
    assert proc.returncode == 1 and f"utterance u1: cannot read frame {d}/0010.jpg" in proc.stderr
    proc = avtk("extract-face-frames", "--detector", "landmarks", "--skip-bad", tmp_path / "in.scp",
                tmp_path / "a", tmp_path / "f.scp")
    assert "skipped 1 of 1 utterances that could not be read" in proc.stderr
    assert (tmp_path / "f.scp").read_text() == ""


def test_evenly_spaced_frames_and_augmentation_are_deterministic():
    assert evenly_spaced(list("abcdefghij"), 5) == list("acegj")
    assert evenly_spaced(list("ab"), 5) == list("abbbb")
    assert evenly_spaced([], 5) == []
    image = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    a = augment_face(image, np.random.default_rng([1, 2]))
    b = augment_face(image, np.random.default_rng([1, 2]))
    assert np.array_equal(a, b)
    assert np.array_equal(augment_face(image, np.random.default_rng(0), 1, 0, 0), image[:, ::-1])
    grey = augment_face(image, np.random.default_rng(0), 0, 0, 1)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    stds = [augment_face(image, np.random.default_rng(i), 0, 1, 0).std() for i in range(8)]
    assert max(stds) <= image.std() and min(stds) < 0.5 * image.std()  # sigma 0.1-5: from none to strong


def _train_face(corpus, tmp_path, *extra):
    conf = tmp_path / "face.yaml"
    conf.write_text(yaml.safe_dump(TINY_FACE))
    exp = tmp_path / "exp"
    proc = avtk("train", "--config", conf, "--train-data", corpus / "data/train", "--exp", exp,
                "--val-trials", corpus / "data/test/trials", *extra)
    return exp, proc


def test_face_training_extraction_and_missing_faces(corpus, tmp_path):
    exp, proc = _train_face(corpus, tmp_path)
    cfg = yaml.safe_load((exp / "config.yaml").read_text())
    assert cfg["data"]["input"] == "frames" and cfg["loss"]["margin"] == 0.4 and cfg["loss"]["scale"] == 64.0
    assert re.search(r"epoch 2 validation EER \S+%", proc.stderr)
    state = torch.load(exp / "avg_model.pt", map_location="cpu", weights_only=False)["model"]
    assert torch.all(state["encoder.features.weight"] == 1)  # insightface keeps it fixed

    # frames.scp with one utterance whose directory is empty: listed in no_face, never a zero vector
    frames = dict(line.split() for line in (corpus / "data/test/frames.scp").read_text().splitlines())
    empty = tmp_path / "empty"
    empty.mkdir()
    utts = sorted(frames)
    frames[utts[0]] = str(empty)
    scp = tmp_path / "frames.scp"
    scp.write_text("".join(f"{u} {frames[u]}\n" for u in utts))
    proc = avtk("extract-embeddings", "--model", exp / "avg_model.pt", f"scp:{scp}",
                f"ark,scp:{tmp_path}/emb.ark,{tmp_path}/emb.scp")
    assert f"1 of {len(utts)} utterances have no face frames" in proc.stderr
    assert (tmp_path / "emb.no_face").read_text() == f"{utts[0]} no_face\n"
    emb = dict(kaldiio.load_scp(str(tmp_path / "emb.scp")))
    assert sorted(emb) == utts[1:] and all(v.shape == (16,) for v in emb.values())

    # face embedding = mean of the L2-normalised embeddings of 5 evenly spaced frames (sorted names), so the
    # dot product of two equals the mean of the seed's 5x5 cosine matrix
    from avtk.embed import load_model
    from avtk.face.frames import frame_paths, read_frame

    net, _ = load_model(exp / "avg_model.pt")

    def frame_embeddings(utt):
        paths = evenly_spaced(frame_paths(utt, frames[utt]), 5)
        x = torch.from_numpy(np.stack([read_frame(utt, p) for p in paths]))
        with torch.no_grad():
            return torch.nn.functional.normalize(net(x), dim=1).numpy()

    a, b = utts[1], utts[-1]
    ea, eb = frame_embeddings(a), frame_embeddings(b)
    assert np.allclose(emb[a], ea.mean(0), atol=1e-5)
    assert abs(float(emb[a] @ emb[b]) - float((ea @ eb.T).mean())) < 1e-5

    # an unreadable frame is an error naming the file, or a counted skip with --skip-bad
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "0010.jpg").write_bytes(b"\xff\xd8 truncated")
    scp.write_text(f"{utts[1]} {frames[utts[1]]}\n{utts[2]} {bad}\n")
    proc = avtk("extract-embeddings", "--model", exp / "avg_model.pt", f"scp:{scp}",
                f"ark,scp:{tmp_path}/e2.ark,{tmp_path}/e2.scp", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"utterance {utts[2]}: cannot read frame {bad}/0010.jpg" in proc.stderr
    assert not (tmp_path / "e2.scp").exists()
    proc = avtk("extract-embeddings", "--model", exp / "avg_model.pt", "--skip-bad", f"scp:{scp}",
                f"ark,scp:{tmp_path}/e2.ark,{tmp_path}/e2.scp")
    assert "skipped 1 of 2 utterances with unreadable frames" in proc.stderr
    assert list(dict(kaldiio.load_scp(str(tmp_path / "e2.scp")))) == [utts[1]]

    # a face model cannot embed speech, and a speech config cannot train on frames
    proc = avtk("extract-embeddings", "--model", exp / "avg_model.pt", "--input-type", "wav",
                f"scp:{corpus}/data/test/wav.scp", f"ark,scp:{tmp_path}/e3.ark,{tmp_path}/e3.scp", check=False)
    assert proc.returncode == 1 and (f"is a face network (iresnet18) but {corpus}/data/test/wav.scp is an audio "
                                     "list (audio files or command pipes): line 1, utterance") in proc.stderr
    proc = avtk("train", "--config", tmp_path / "face.yaml", "--train-data", corpus / "data/train", "--exp",
                tmp_path / "x", "model.encoder=ecapa_tdnn", "model.encoder_args={}", "data.input=frames", check=False)
    assert proc.returncode == 1 and ("config data.input is frames but model.encoder ecapa_tdnn is a speech "
                                     "encoder") in proc.stderr


def test_extract_face_frames_with_the_mtcnn_detector(tmp_path):
    """A directory of real frames through the MTCNN detector: the photo's face is aligned, a blank frame has
    none, and an utterance with no face at all keeps an empty directory (no_face at extraction)."""
    import matplotlib

    photo = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    face_dir, blank_dir = tmp_path / "u1", tmp_path / "u2"
    face_dir.mkdir(), blank_dir.mkdir()
    Image.open(photo).convert("RGB").save(face_dir / "0010.jpg")
    Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(face_dir / "0020.jpg")
    Image.fromarray(np.full((240, 320, 3), 90, np.uint8)).save(blank_dir / "0010.jpg")
    (tmp_path / "raw.scp").write_text(f"u1 {face_dir}\nu2 {blank_dir}\n")
    proc = avtk("extract-face-frames", "--detector", "mtcnn", tmp_path / "raw.scp", tmp_path / "align",
                tmp_path / "frames.scp")
    assert "1 of 2 utterances have no face in any frame" in proc.stderr
    assert "2 utterances: 3 frames, 1 with a face (2 without)" in proc.stderr
    assert sorted(os.listdir(tmp_path / "align/u1")) == ["0010.jpg"] and os.listdir(tmp_path / "align/u2") == []
    aligned = np.asarray(Image.open(tmp_path / "align/u1/0010.jpg"))
    assert aligned.shape == (112, 112, 3)
    # the eyes are dark against the skin at the template's eye points, the nose between them is not
    grey = aligned.astype(np.float32).mean(2)
    eyes = [grey[int(round(y)) - 2:int(round(y)) + 3, int(round(x)) - 2:int(round(x)) + 3].mean()
            for x, y in TEMPLATE_112[:2]]
    cheek = grey[60:66, 53:59].mean()
    assert max(eyes) < cheek, (eyes, cheek)


def test_extract_face_frames_from_a_video(tmp_path):
    """An mp4 (written with PyAV) decoded every 0.4 s, faces found by MTCNN, frames named by 25-fps number."""
    import matplotlib

    from avtk.io.media import write_video

    photo = np.asarray(Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))
                       .convert("RGB").resize((300, 256)))
    frames = [photo] * 25 + [np.full_like(photo, 100)] * 25  # 1 s of face, then 1 s without
    write_video(tmp_path / "v.mp4", frames, fps=25)
    (tmp_path / "video.scp").write_text(f"u1 {tmp_path}/v.mp4\nu2 {tmp_path}/missing.mp4\n")
    proc = avtk("extract-face-frames", tmp_path / "video.scp", tmp_path / "align", tmp_path / "frames.scp",
                check=False)
    assert proc.returncode == 1 and f"utterance u2: video {tmp_path}/missing.mp4 does not exist" in proc.stderr
    proc = avtk("extract-face-frames", "--skip-bad", tmp_path / "video.scp", tmp_path / "align",
                tmp_path / "frames.scp")
    assert "1 utterances: 4 frames, 2 with a face (2 without)" in proc.stderr  # 0.4, 0.8 | 1.2, 1.6 s
    assert sorted(os.listdir(tmp_path / "align/u1")) == ["0010.jpg", "0020.jpg"]
    assert (tmp_path / "frames.scp").read_text() == f"u1 {tmp_path}/align/u1\n"
