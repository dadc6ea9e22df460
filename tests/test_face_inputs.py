"""Face inputs of every kind, read the way users read them: image modes (one reader, avtk.face.frames.read_frame),
landmarks that cannot make a face, variable-frame-rate video, and the input type extract-embeddings decides."""
import os
import struct
import zlib

import kaldiio
import numpy as np
import pytest
from PIL import Image

from avtk.errors import AvtkError
from avtk.face.align import TEMPLATE_112
from avtk.face.frames import read_frame
from conftest import SMALL_FACE, SMALL_SPEAKER, avtk, write_model

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 7, 3)).astype(np.uint8)  # the picture every mode below encodes
GREY = RNG.integers(0, 256, (6, 7)).astype(np.uint8)
ALPHA = RNG.integers(0, 256, (6, 7)).astype(np.uint8)
PALETTE = RNG.integers(0, 256, (256, 3)).astype(np.uint8)
INDEX = RNG.integers(0, 256, (6, 7)).astype(np.uint8)


def write_png16(path, samples):
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the last axis) written from the PNG specification, since
    PIL cannot write 16-bit colour."""
    height, width, channels = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\0" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def _grey3(grey):
    return np.repeat(grey[..., None], 3, axis=2)


def _palette(mode, alpha=False):
    img = Image.fromarray(np.dstack([INDEX, ALPHA]) if alpha else INDEX, mode)
    img.putpalette(PALETTE.ravel().tolist())
    return img


def _ycbcr(rgb):
    """JFIF's full-range YCbCr of an RGB picture (an oracle independent of PIL)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.rint(np.dstack([y, cb, cr])).clip(0, 255).astype(np.uint8)


NOISE16 = RNG.integers(-100, 101, GREY.shape)  # within half a step of 257: rounds back to GREY
# mode -> (how to write a file that PIL opens in that mode, the RGB uint8 picture expected, tolerance)
MODES = {
    "1": (lambda p: Image.fromarray(GREY > 127).save(p, "PNG"), _grey3(np.where(GREY > 127, 255, 0)), 0),
    "L": (lambda p: Image.fromarray(GREY).save(p, "PNG"), _grey3(GREY), 0),
    "LA": (lambda p: Image.fromarray(np.dstack([GREY, ALPHA]), "LA").save(p, "PNG"), _grey3(GREY), 0),
    "P": (lambda p: _palette("P").save(p, "PNG"), PALETTE[INDEX], 0),
    "PA": (lambda p: _palette("PA", alpha=True).save(p, "TIFF"), PALETTE[INDEX], 0),
    "RGB": (lambda p: Image.fromarray(RGB).save(p, "PNG"), RGB, 0),
    "RGBA": (lambda p: Image.fromarray(np.dstack([RGB, ALPHA]), "RGBA").save(p, "PNG"), RGB, 0),
    # K = 0: every CMYK -> RGB formula gives 255 - C
    "CMYK": (lambda p: Image.fromarray(np.dstack([255 - RGB, np.zeros_like(GREY)]), "CMYK").save(p, "TIFF"), RGB, 0),
    "YCbCr": (lambda p: Image.fromarray(_ycbcr(RGB), "YCbCr").save(p, "TIFF"), RGB, 3),
    "I;16": (lambda p: Image.fromarray((GREY.astype(np.int64) * 257 + NOISE16).clip(0, 65535).astype(np.uint16)).save(p, "PNG"),
             _grey3(GREY), 0),
    "I;16B": (lambda p: Image.frombytes("I;16B", (7, 6), (GREY.astype(np.int64) * 257 + NOISE16).clip(0, 65535)
                                        .astype(">u2").tobytes()).save(p, "TIFF"), _grey3(GREY), 0),
    "16-bit RGB PNG": (lambda p: write_png16(p, RGB.astype(np.uint16) * 257), RGB, 0),
    "16-bit RGBA PNG": (lambda p: write_png16(p, np.dstack([RGB, ALPHA]).astype(np.uint16) * 257), RGB, 0),
    "16-bit grey+alpha PNG": (lambda p: write_png16(p, np.dstack([GREY, ALPHA]).astype(np.uint16) * 257),
                              _grey3(GREY), 0),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_image_mode_reads_as_the_picture_in_8_bits(mode, tmp_path):
    write, want, tolerance = MODES[mode]
    path = tmp_path / "frame.img"
    write(path)
    with Image.open(path) as img:
        if " " not in mode:
            assert img.mode == mode  # the file really opens in the mode under test
    got = read_frame("u1", path)
    assert got.dtype == np.uint8 and got.shape == (6, 7, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= tolerance


def test_white_16_bit_grey_is_white_and_dark_is_dark(tmp_path):
    """The fault this guards against: PIL's convert('RGB') clips 16-bit grey, so every frame read as white."""
    Image.fromarray(np.array([[0, 257, 32896, 65535]], np.uint16)).save(tmp_path / "g.png")
    assert read_frame("u1", tmp_path / "g.png")[0, :, 0].tolist() == [0, 1, 128, 255]


@pytest.mark.parametrize("mode,what", [("I", "32-bit integer pixels"), ("F", "32-bit float pixels")])
def test_32_bit_frames_are_errors_naming_the_file(mode, what, tmp_path):
    path = tmp_path / "frame.tif"
    Image.fromarray(GREY.astype(np.int32 if mode == "I" else np.float32), mode).save(path)
    with pytest.raises(AvtkError) as err:
        read_frame("u1", path)
    assert str(err.value) == (f"utterance u1: frame {path} has PIL mode {mode} ({what}, whose white level the file "
                              "does not state); save frames as 8-bit or 16-bit grey, RGB or RGBA images")


@pytest.fixture(scope="module")
def face_model(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("face_model") / "face.pt", SMALL_FACE)


def _frames_dir(path, images):
    path.mkdir()
    for i, save in enumerate(images, 1):
        save(path / f"{i * 10:04d}.png")
    return path


def test_extract_embeddings_reads_16_bit_frames_as_their_8_bit_picture(face_model, tmp_path):
    """Through the command users run: a frame directory of 16-bit grey PNGs embeds as the same picture in 8-bit
    grey does; a 32-bit float frame is one ERROR line naming it, exit 1, no table written."""
    faces = [RNG.integers(0, 256, (112, 112)).astype(np.uint8) for _ in range(2)]
    d8 = _frames_dir(tmp_path / "u8", [lambda p, f=f: Image.fromarray(f).save(p) for f in faces])
    d16 = _frames_dir(tmp_path / "u16", [lambda p, f=f: Image.fromarray(f.astype(np.uint16) * 257).save(p)
                                         for f in faces])
    (tmp_path / "frames.scp").write_text(f"a8 {d8}\nb16 {d16}\n")
    avtk("extract-embeddings", "--model", face_model, f"scp:{tmp_path}/frames.scp",
         f"ark,scp:{tmp_path}/e.ark,{tmp_path}/e.scp")
    emb = dict(kaldiio.load_scp(str(tmp_path / "e.scp")))
    assert np.allclose(emb["a8"], emb["b16"], rtol=0, atol=1e-5)  # the same pixels (one batch, two rows)

    dbad = _frames_dir(tmp_path / "bad", [lambda p: Image.fromarray(faces[0].astype(np.float32)).save(
        p.with_suffix(".png"), format="TIFF")])
    (tmp_path / "frames.scp").write_text(f"a8 {d8}\nbad {dbad}\n")
    proc = avtk("extract-embeddings", "--model", face_model, f"scp:{tmp_path}/frames.scp",
                f"ark,scp:{tmp_path}/f.ark,{tmp_path}/f.scp", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("ERROR") == 1
    assert (f"ERROR [avtk extract-embeddings] utterance bad: frame {dbad}/0010.png has PIL mode F (32-bit float "
            "pixels, whose white level the file does not state)") in proc.stderr
    assert not (tmp_path / "f.scp").exists() and not (tmp_path / "f.ark").exists()


def _landmark_line(name, points):
    return name + " " + " ".join(f"{v:.3f}" for v in np.asarray(points).ravel()) + "\n"


def test_landmarks_that_cannot_make_a_face_count_as_no_face(tmp_path):
    """Coinciding landmarks, a landmark outside the frame and a uniform (black) warp give no aligned face: they
    are counted without a face, and only real faces are on disk."""
    raw = tmp_path / "raw"
    raw.mkdir()
    picture = RNG.integers(0, 256, (160, 160, 3)).astype(np.uint8)
    for name in ("0010.jpg", "0020.jpg", "0030.jpg"):
        Image.fromarray(picture).save(raw / name)
    Image.fromarray(np.zeros((160, 160, 3), np.uint8)).save(raw / "0040.jpg")
    good = TEMPLATE_112 + 20
    same = np.repeat(good[:1], 5, axis=0)
    outside = good + [[0, 0], [0, 0], [0, 0], [0, 0], [0, 60]]  # a mouth corner below the frame
    (raw / "landmarks.txt").write_text(_landmark_line("0010.jpg", good) + _landmark_line("0020.jpg", same)
                                       + _landmark_line("0030.jpg", outside) + _landmark_line("0040.jpg", good))
    (tmp_path / "raw.scp").write_text(f"u1 {raw}\n")
    proc = avtk("extract-face-frames", "--detector", "landmarks", "--verbose", tmp_path / "raw.scp",
                tmp_path / "align", tmp_path / "frames.scp")
    assert "1 utterances: 4 frames, 1 with a face (3 without)" in proc.stderr
    assert "WARNING [avtk extract-face-frames] 3 frames had landmarks that cannot align a face" in proc.stderr
    assert "frame 0020.jpg counted without a face: landmarks 1 and 2 coincide (0.00 px apart)" in proc.stderr
    assert "frame 0030.jpg counted without a face: landmark 5 (90.7, 172.2) is outside the 160x160 image" \
        in proc.stderr
    assert "frame 0040.jpg counted without a face: the aligned face is uniform (every pixel 0)" in proc.stderr
    assert sorted(os.listdir(tmp_path / "align/u1")) == ["0010.jpg"]


def test_a_frame_listed_twice_in_landmarks_is_an_error_naming_both_lines(tmp_path):
    """landmarks.txt follows the duplicate-key rule of every table (the second line silently won)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    picture = RNG.integers(0, 256, (160, 160, 3)).astype(np.uint8)
    for name in ("0010.jpg", "0020.jpg"):
        Image.fromarray(picture).save(raw / name)
    good = TEMPLATE_112 + 20
    (raw / "landmarks.txt").write_text(_landmark_line("0010.jpg", good) + _landmark_line("0020.jpg", good)
                                       + _landmark_line("0010.jpg", good + 1))
    (tmp_path / "raw.scp").write_text(f"u1 {raw}\n")
    proc = avtk("extract-face-frames", "--detector", "landmarks", tmp_path / "raw.scp", tmp_path / "align",
                tmp_path / "frames.scp", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith(
        f"ERROR [avtk extract-face-frames] {raw / 'landmarks.txt'}:3: duplicate key '0010.jpg' (first on line 1)")
    assert not (tmp_path / "frames.scp").exists() and not (tmp_path / "align" / "u1").exists()


def test_two_images_of_one_name_are_an_error(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    picture = RNG.integers(0, 256, (160, 160, 3)).astype(np.uint8)
    Image.fromarray(picture).save(raw / "0010.jpg")
    Image.fromarray(picture).save(raw / "0010.png")
    (raw / "landmarks.txt").write_text(_landmark_line("0010.jpg", TEMPLATE_112 + 20)
                                       + _landmark_line("0010.png", TEMPLATE_112 + 20))
    (tmp_path / "raw.scp").write_text(f"u1 {raw}\n")
    proc = avtk("extract-face-frames", "--detector", "landmarks", tmp_path / "raw.scp", tmp_path / "align",
                tmp_path / "frames.scp", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (f"ERROR [avtk extract-face-frames] utterance u1: frames 0010.jpg and 0010.png of {raw} would both be "
            "written as 0010.jpg") in proc.stderr
    assert not (tmp_path / "frames.scp").exists() and not (tmp_path / "align/u1").exists()


def write_vfr_video(path, times_ms, images):
    """An mp4 whose frames have the given presentation times (ms): a variable frame rate."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.codec_context.qmax = 4
        for t, image in zip(times_ms, images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_variable_frame_rate_video_gives_each_frame_once(tmp_path):
    """A frame held from 0.08 s to 2 s is nearest to the sampling times 0.4, 0.8 and 1.2 s: it is taken once,
    and the counts logged are the files written."""
    import matplotlib

    from avtk.io.media import frame_name, video_frames

    photo = np.asarray(Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))
                       .convert("RGB").resize((256, 320)))
    times = [0, 40, 80, 2000, 2040, 2080]
    write_vfr_video(tmp_path / "v.mp4", times, [photo] * len(times))
    taken = [(round(t, 3), frame_name(t)) for t, _ in video_frames(tmp_path / "v.mp4", 0.4)]
    assert taken == [(0.08, "0002.jpg"), (2.0, "0050.jpg")]
    (tmp_path / "video.scp").write_text(f"u1 {tmp_path}/v.mp4\n")
    proc = avtk("extract-face-frames", tmp_path / "video.scp", tmp_path / "align", tmp_path / "frames.scp")
    assert "1 utterances: 2 frames, 2 with a face (0 without)" in proc.stderr
    assert sorted(os.listdir(tmp_path / "align/u1")) == ["0002.jpg", "0050.jpg"]


# ----------------------------------------------------------------------------- what extract-embeddings is given


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """One second of audio as wav and flac, a speaker model, and the Kaldi-style lists users name freely."""
    import soundfile

    root = tmp_path_factory.mktemp("inputs")
    wave = (np.random.default_rng(1).standard_normal(16000) * 3000).astype(np.int16)  # the same samples in both
    soundfile.write(root / "a.wav", wave, 16000)
    soundfile.write(root / "a.flac", wave, 16000)
    (root / "wav.1.scp").write_text(f"u1 {root}/a.wav\n")  # split_scp's name for a split
    (root / "flac.list").write_text(f"u1 {root}/a.flac\n")
    (root / "pipe.scp").write_text(f"u1 cat {root}/a.wav |\n")
    speaker = write_model(root / "speaker.pt", SMALL_SPEAKER)
    face = write_model(root / "face.pt", SMALL_FACE)
    avtk("compute-fbank", f"scp:{root}/wav.1.scp", f"ark,scp:{root}/fbank.ark,{root}/fbank.1.scp")
    return root, speaker, face


def _embed(model, rspecifier, out, *extra, check=True):
    return avtk("extract-embeddings", "--model", model, *extra, rspecifier, f"ark,scp:{out}.ark,{out}.scp",
                check=check)


def _failed(proc, out, message):
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stderr.count("ERROR") == 1
    assert message in proc.stderr, proc.stderr
    assert not os.path.exists(f"{out}.ark") and not os.path.exists(f"{out}.scp")


def test_audio_lists_are_recognised_by_content_not_name(audio, tmp_path):
    """wav.1.scp, a flac list and a pipe list are audio whatever their names; a feats table is features."""
    root, speaker, _ = audio
    emb = {}
    for name in ("wav.1.scp", "flac.list", "pipe.scp", "fbank.1.scp"):
        proc = _embed(speaker, f"scp:{root}/{name}", tmp_path / name)
        kind = "feats" if name.startswith("fbank") else "wav"
        assert f"input: {kind} (scp:{root}/{name})" in proc.stderr
        emb[name] = dict(kaldiio.load_scp(str(tmp_path / f"{name}.scp")))["u1"]
    assert np.array_equal(emb["wav.1.scp"], emb["flac.list"]) and np.array_equal(emb["wav.1.scp"], emb["pipe.scp"])
    # the features compute-fbank wrote are the ones the model computes from the audio
    assert np.allclose(emb["fbank.1.scp"], emb["wav.1.scp"], rtol=0, atol=1e-4 * np.abs(emb["wav.1.scp"]).max())


def test_wrong_tables_for_the_model_name_the_real_mismatch(audio, tmp_path):
    root, speaker, face = audio
    out = tmp_path / "e"
    feats = (root / "fbank.1.scp").read_text().split()[1]
    _failed(_embed(face, f"scp:{root}/fbank.1.scp", out, check=False), out,
            f"ERROR [avtk extract-embeddings] model {face} is a face network (iresnet18) but {root}/fbank.1.scp is "
            f"a feature table (it points into Kaldi arks): line 1, utterance u1 -> {feats}; a face network embeds "
            "a frames.scp (utterance -> directory of aligned face images)")
    _failed(_embed(face, f"scp:{root}/pipe.scp", out, check=False), out,
            f"model {face} is a face network (iresnet18) but {root}/pipe.scp is an audio list (audio files or "
            f"command pipes): line 1, utterance u1 -> cat {root}/a.wav |; a face network embeds a frames.scp")
    (tmp_path / "frames.scp").write_text(f"u1 {tmp_path}\n")
    _failed(_embed(speaker, f"scp:{tmp_path}/frames.scp", out, check=False), out,
            f"model {speaker} is a speaker network (ecapa_tdnn) but {tmp_path}/frames.scp is a frames.scp "
            f"(directories of face images): line 1, utterance u1 -> {tmp_path}; a speaker network embeds a "
            "feats.scp or a wav.scp")
    _failed(_embed(speaker, f"scp:{root}/wav.1.scp", out, "--input-type", "feats", check=False), out,
            f"ERROR [avtk extract-embeddings] --input-type feats but {root}/wav.1.scp is an audio list (audio "
            f"files or command pipes): line 1, utterance u1 -> {root}/a.wav")
    kaldiio.save_ark(str(tmp_path / "w.ark"), {"u1": (16000, np.zeros(1600, np.int16))}, scp=str(tmp_path / "w.scp"))
    _failed(_embed(speaker, f"scp:{tmp_path}/w.scp", out, check=False), out,
            f"{tmp_path}/w.scp is audio stored inside a Kaldi ark: line 1, utterance u1 -> {tmp_path}/w.ark:3: avtk "
            "reads audio from files or pipes")


def test_a_table_of_two_kinds_is_an_error_naming_the_utterance(audio, tmp_path):
    root, speaker, _ = audio
    (tmp_path / "mixed.scp").write_text((root / "fbank.1.scp").read_text() + f"u2 {root}/a.wav\n")
    out = tmp_path / "e"
    _failed(_embed(speaker, f"scp:{tmp_path}/mixed.scp", out, check=False), out,
            f"ERROR [avtk extract-embeddings] scp:{tmp_path}/mixed.scp: key 'u2' ({tmp_path}/mixed.scp:2): holds "
            "audio (a wave file), not a Kaldi matrix or vector")
