"""Audio and video in media containers (m4a, mp4, aac, mkv, webm, ogg, opus, and anything FFmpeg reads), via PyAV.

VoxCeleb2 ships audio as m4a (AAC) and video as mp4 (H.264 + AAC), which libsndfile cannot read. PyAV (the
FFmpeg libraries, no ffmpeg binary needed) is imported only when one of these functions is called, so avtk
works without it until a container file is met; then the error says how to install it.

Reading audio:
  * `read_audio(path)`: (float32 (samples, channels), native rate) of the first audio stream. Integer samples
    are scaled to [-1, 1) as libsndfile does (16-bit PCM divided by 32768). `avtk.io.audio` reads the files
    of a wav.scp whose extension is in `MEDIA_EXTENSIONS` through it, so they follow that module's rules
    (channel 0, native rate checked against 16 kHz, `--resample`), exactly as wav and flac do.
  * `decode_audio(path, sample_rate=16000)`: float32 mono at `sample_rate` (the channels averaged), rate
    converted with `avtk.io.resample.resample`, the same resampler `--resample` uses for wav files. It was
    chosen over FFmpeg's libswresample (`av.AudioResampler`): on 44.1/48/22.05 kHz FLAC input its largest
    error against the analytic band-limited signal is half swresample's (2.3e-3 against 4.5e-3, tones up to
    7 kHz), with no delay between the two; swresample is faster (decoding and resampling 8 s of AAC took
    5-10 ms against 12-20 ms, 1 thread), a difference of milliseconds per file, and with no resampling
    (VoxCeleb2 is 16 kHz) neither runs.

AAC encoder delay: AAC encoders prepend priming samples (1024 for FFmpeg's encoder) and pad the last frame.
In MP4/M4A/MOV the edit list starts the track after the priming (the priming packet has a negative pts),
FFmpeg's demuxer marks those samples and the decoder drops them; the sample table gives the last packet the
duration of its real samples only, and `read_audio` cuts the decoded audio there (the edit list's own
duration is rounded to the millisecond, so it only serves to detect a truncated file). A written and re-read
m4a thus lines up with the original sample for sample and has its length. Matroska/WebM with AAC drops the
priming but keeps the end padding (under 1024 samples of near silence); Ogg/WebM Opus trim both in the
decoder; raw ADTS `.aac` records neither: its audio keeps the 1024 priming samples and the padding.

Reading video: `video_frames(path, interval=0.4)` decodes sequentially (no seeking) and yields the frame
nearest to each time k * interval (k = 1, 2, ...), as RGB uint8, each decoded frame once (with a variable
frame rate several times can pick one frame); `frame_name` gives the seed's jpg name of
such a frame (25 fps frame number: 0.4 s -> 0010.jpg).

Writing (`write_audio`, `write_video`) picks the container from the file's extension and is atomic (a
temporary name in the same directory, renamed when complete), as every avtk output is.

Every failure is an `AvtkError` naming the file.
"""
from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

from avtk.errors import AvtkError
from avtk.io.atomic import atomic_path

# Extensions that avtk.io.audio decodes through PyAV instead of libsndfile (compared in lower case).
MEDIA_EXTENSIONS = (".m4a", ".mp4", ".aac", ".mkv", ".webm", ".ogg", ".opus")

# Container (FFmpeg muxer name) for each extension written; the temporary name hides the extension.
_MUXERS = {
    ".m4a": "ipod", ".mp4": "mp4", ".mov": "mov", ".aac": "adts", ".mkv": "matroska", ".webm": "webm",
    ".ogg": "ogg", ".opus": "ogg", ".flac": "flac", ".wav": "wav",
}
_LAYOUTS = {1: "mono", 2: "stereo"}
# Decoded samples may fall short of the stream's declared duration by this much before it is an error.
_SHORT_TOLERANCE = 0.25  # seconds


def _av(path):
    """The `av` module, or an AvtkError saying how to install it."""
    try:
        import av
    except ImportError:
        raise AvtkError(f"{path}: reading or writing media files (m4a, mp4, ...) needs PyAV: "
                        "pip install av (or install avtk with the 'video' extra)") from None
    return av


def _reason(err):
    """FFmpeg's words for an error, without PyAV's errno and file name."""
    text = getattr(err, "strerror", None)
    return text if text else str(err)


def _open_input(av, path, kind):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AvtkError(f"{kind} file {path} does not exist")
    if os.path.isdir(path):
        raise AvtkError(f"{kind} file {path} is a directory")
    try:
        return av.open(path, "r")
    except (av.FFmpegError, OSError, ValueError) as err:
        raise AvtkError(f"cannot read {kind} file {path}: {_reason(err)}") from None


_DTYPES = {"u8": np.uint8, "s16": np.int16, "s32": np.int32, "s64": np.int64, "flt": np.float32, "dbl": np.float64}


def _planes(frame):
    """(channels, samples) float32 in [-1, 1) of a decoded audio frame, whatever its sample format."""
    kind = frame.format.name.rstrip("p")
    dtype, n = _DTYPES[kind], frame.samples
    if frame.format.is_planar:  # one buffer per channel (AAC decodes to planar float)
        array = np.stack([np.frombuffer(plane, dtype, n) for plane in frame.planes])
    else:  # packed: one buffer, channels interleaved
        channels = frame.layout.nb_channels
        array = np.frombuffer(frame.planes[0], dtype, n * channels).reshape(n, channels).T
    if kind == "u8":
        return (array.astype(np.float32) - 128.0) / 128.0
    if kind == "s16":
        return array.astype(np.float32) / 32768.0
    if kind in ("s32", "s64"):
        return (array / float(np.iinfo(dtype).max + 1)).astype(np.float32)
    return array.astype(np.float32, copy=False)  # flt, dbl


def read_audio(path):
    """(float32 (samples, channels) in [-1, 1], sample rate) of the first audio stream of a media file.

    AAC priming and end padding are removed where the container records them (see the module notes).
    """
    path = os.fspath(path)
    av = _av(path)
    with _open_input(av, path, "audio") as container:
        if not container.streams.audio:
            raise AvtkError(f"cannot read audio file {path}: it has no audio stream")
        stream = container.streams.audio[0]
        stream.thread_type = "AUTO"
        # MP4/M4A/MOV: the sample table gives every packet's exact duration (the last one counting only the
        # real samples of the padded final frame); other containers trim in the decoder (Opus) or not at all.
        mp4 = "mp4" in container.format.name.split(",")
        chunks, first_pts, end_pts = [], None, None
        try:
            for packet in container.demux(stream):
                if mp4 and packet.pts is not None and packet.duration:
                    end_pts = max(end_pts if end_pts is not None else packet.pts, packet.pts + packet.duration)
                for frame in packet.decode():
                    if first_pts is None and frame.pts is not None:
                        first_pts = frame.pts
                    chunks.append(_planes(frame))
        except (av.FFmpegError, OSError, ValueError) as err:
            done = sum(c.shape[1] for c in chunks) / (stream.rate or 1)
            raise AvtkError(f"cannot read audio file {path}: corrupt data after {done:.3f} s: {_reason(err)}") \
                from None
        rate = stream.rate or stream.codec_context.sample_rate
        if not chunks or not rate:
            raise AvtkError(f"cannot read audio file {path}: its audio stream decodes to no samples")
        data = np.concatenate(chunks, axis=1)
        if mp4 and first_pts is not None:
            tb = stream.time_base
            if stream.duration:  # the edit list's duration (to the millisecond): less means a truncated file
                declared = (stream.start_time or 0) + stream.duration - first_pts
                if data.shape[1] < declared * tb * rate - _SHORT_TOLERANCE * rate:
                    raise AvtkError(f"cannot read audio file {path}: truncated: decoded "
                                    f"{data.shape[1] / rate:.3f} s of the {float(declared * tb):.3f} s it declares")
            if end_pts is not None and end_pts > first_pts:
                data = data[:, :int(round((end_pts - first_pts) * tb * rate))]
    return np.ascontiguousarray(data.T), int(rate)


def decode_audio(path, sample_rate=16000):
    """float32 mono samples in [-1, 1] of the first audio stream of a media file, at `sample_rate`.

    Channels are averaged; another native rate is converted with `avtk.io.resample.resample`.
    sample_rate None keeps the native rate (see `read_audio` to learn it).
    """
    data, rate = read_audio(path)
    wave = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if sample_rate is None or int(sample_rate) == rate:
        return wave
    import torch

    from avtk.io.resample import resample

    try:
        return resample(torch.from_numpy(wave), rate, int(sample_rate)).numpy()
    except ValueError as err:
        raise AvtkError(f"cannot resample audio file {path} from {rate} Hz: {err}") from None


# ---------------------------------------------------------------------------------------------- video


def _fraction(value):
    return value if isinstance(value, Fraction) else Fraction(value).limit_denominator(1_000_000)


def video_frames(path, interval=0.4):
    """Yield (time in seconds, RGB uint8 (height, width, 3)) of one frame every `interval` seconds.

    For k = 1, 2, ... the frame whose presentation time (from the stream's start) is nearest to k * interval
    (a tie goes to the later frame); a time past the last frame by more than half a frame period ends the
    iteration. Each decoded frame is yielded at most once: when several sampling times pick the same frame
    (variable frame rate, a frame held longer than `interval`), it comes once, at its own time, so the times
    yielded strictly increase. Frames are decoded in order, without seeking; only the chosen ones are
    converted to RGB.
    """
    path = os.fspath(path)
    step = _fraction(interval)
    if step <= 0:
        raise AvtkError(f"{path}: the frame interval must be positive, got {interval}")
    av = _av(path)
    with _open_input(av, path, "video") as container:
        if not container.streams.video:
            raise AvtkError(f"cannot read video file {path}: it has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = stream.time_base
        rate = stream.average_rate or stream.guessed_rate
        period = Fraction(1) / _fraction(rate) if rate else None
        start = stream.start_time
        k, previous, target = 1, None, step  # previous: (time, frame)
        last_yielded = None  # time of the frame yielded last: one frame is never yielded twice
        try:
            for frame in container.decode(stream):
                if frame.pts is not None:
                    if start is None:
                        start = frame.pts
                    now = (frame.pts - start) * tb
                elif previous is not None and period is not None:
                    now = previous[0] + period
                else:
                    now = Fraction(0)
                while now >= target:
                    # The frame at or after the target, or the one before it if that is strictly nearer.
                    if previous is not None and target - previous[0] < now - target:
                        chosen_time, chosen = previous
                    else:
                        chosen_time, chosen = now, frame
                    if chosen_time != last_yielded:
                        last_yielded = chosen_time
                        yield float(chosen_time), chosen.to_ndarray(format="rgb24")
                    k += 1
                    target = k * step
                previous = (now, frame)
        except (av.FFmpegError, OSError, ValueError) as err:
            raise AvtkError(f"cannot read video file {path}: corrupt data: {_reason(err)}") from None
        if previous is not None:
            last_time, last = previous
            half = period / 2 if period is not None else Fraction(0)
            if target < last_time + half and last_time != last_yielded:
                yield float(last_time), last.to_ndarray(format="rgb24")


def frame_name(time_seconds, fps=25):
    """The seed's jpg name of the frame at `time_seconds`: its frame number at `fps`, 4 digits (0.4 -> 0010.jpg)."""
    return f"{int(round(float(time_seconds) * float(fps))):04d}.jpg"


# ---------------------------------------------------------------------------------------------- writing


def _muxer(path):
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in _MUXERS:
        raise AvtkError(f"{path}: cannot choose a container for extension {ext!r} "
                        f"(one of {' '.join(sorted(_MUXERS))})")
    return _MUXERS[ext]


def _as_samples(path, wave):
    """float32 (channels, samples) of a 1-D or (samples, channels) wave (float in [-1, 1], or int16)."""
    if hasattr(wave, "detach"):
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave)
    if wave.ndim == 1:
        wave = wave[:, None]
    if wave.ndim != 2 or wave.shape[0] == 0 or wave.shape[1] not in _LAYOUTS:
        raise AvtkError(f"{path}: cannot write audio of shape {wave.shape} (samples, or samples x 1-2 channels)")
    if wave.dtype == np.int16:
        wave = wave.astype(np.float32) / 32768.0
    elif not np.issubdtype(wave.dtype, np.floating):
        raise AvtkError(f"{path}: cannot write audio of dtype {wave.dtype} (float in [-1, 1], or int16)")
    return np.ascontiguousarray(np.clip(wave, -1.0, 1.0).T, dtype=np.float32)


def _add_audio_stream(container, codec, sample_rate, channels, bit_rate):
    stream = container.add_stream(codec, rate=int(sample_rate), layout=_LAYOUTS[channels])
    if bit_rate:
        stream.bit_rate = int(bit_rate)
    return stream


def _audio_frame(av, samples, sample_rate, pts):
    """A packed float frame of (channels, n) samples; the encoder's own resampler re-blocks and re-formats it."""
    channels = samples.shape[0]
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T).reshape(1, -1), format="flt",
                                       layout=_LAYOUTS[channels])
    frame.sample_rate = int(sample_rate)
    frame.pts = pts
    frame.time_base = Fraction(1, int(sample_rate))
    return frame


def _encode(container, stream, frame):
    for packet in stream.encode(frame):
        container.mux(packet)


def write_audio(path, wave, sample_rate=16000, codec="aac", bit_rate=None):
    """Write samples (float in [-1, 1] or int16; 1-D, or (samples, 1 or 2 channels)) to a media file, atomically.

    The container comes from the extension (.m4a, .mp4, .mov, .aac, .mkv, .webm, .ogg, .opus, .flac, .wav);
    `codec` is an FFmpeg encoder name that the container accepts (aac; flac; libopus at 48 kHz; pcm_s16le).
    bit_rate: bits per second (None: the encoder's default).
    """
    path = os.fspath(path)
    fmt = _muxer(path)
    samples = _as_samples(path, wave)
    av = _av(path)
    try:
        with atomic_path(path) as tmp:
            with av.open(tmp, "w", format=fmt) as container:
                stream = _add_audio_stream(container, codec, sample_rate, samples.shape[0], bit_rate)
                _encode(container, stream, _audio_frame(av, samples, sample_rate, 0))
                _encode(container, stream, None)
    except (av.FFmpegError, OSError, ValueError) as err:
        raise AvtkError(f"cannot write audio file {path} ({codec} in {fmt}): {_reason(err)}") from None


def video_codec():
    """The H.264 encoder when this PyAV build has it (libx264), else MPEG-4 part 2 (mpeg4)."""
    av = _av("video")
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_video(path, frames, fps=25, wave=None, sample_rate=16000, *, codec=None, crf=18):
    """Write RGB uint8 frames ((height, width, 3), even sizes) as a video (mp4: H.264 or MPEG-4 video,
    optional AAC audio), atomically.

    frames: an iterable of arrays, or one (n, height, width, 3) array; fps: frames per second (a number or
    Fraction); wave: optional audio samples (as for `write_audio`) at `sample_rate`, muxed interleaved with
    the video; codec: the video encoder (default `video_codec()`); crf: libx264's quality (0 lossless, 18
    visually lossless, 23 FFmpeg's default).
    """
    path = os.fspath(path)
    fmt = _muxer(path)
    av = _av(path)
    codec = codec or video_codec()
    rate = _fraction(fps)
    samples = None if wave is None else _as_samples(path, wave)
    images = iter(frames)
    first = next(images, None)
    if first is None:
        raise AvtkError(f"{path}: no frames to write")
    first = _check_image(path, first, 0, None)
    height, width = first.shape[:2]
    if height % 2 or width % 2:
        raise AvtkError(f"{path}: frames of {width}x{height}: width and height must be even")
    try:
        with atomic_path(path) as tmp:
            with av.open(tmp, "w", format=fmt) as container:
                video = container.add_stream(codec, rate=rate)
                video.width, video.height, video.pix_fmt = width, height, "yuv420p"
                if codec == "libx264":
                    video.options = {"crf": str(crf)}
                elif codec == "mpeg4":
                    video.codec_context.qmax = 4  # near-lossless (the default quality is blocky)
                audio = None if samples is None else _add_audio_stream(
                    container, "aac", sample_rate, samples.shape[0], None)
                sent = 0  # audio samples encoded so far
                count = 0
                image = first
                while image is not None:
                    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                    frame.pts = count
                    frame.time_base = 1 / rate
                    _encode(container, video, frame)
                    count += 1
                    if audio is not None:  # the audio up to the end of this frame, interleaved
                        until = min(samples.shape[1], int(count / rate * sample_rate))
                        if until > sent:
                            _encode(container, audio, _audio_frame(av, samples[:, sent:until], sample_rate, sent))
                            sent = until
                    image = next(images, None)
                    if image is not None:
                        image = _check_image(path, image, count, (height, width))
                _encode(container, video, None)
                if audio is not None:
                    if sent < samples.shape[1]:
                        _encode(container, audio, _audio_frame(av, samples[:, sent:], sample_rate, sent))
                    _encode(container, audio, None)
    except (av.FFmpegError, OSError, ValueError) as err:
        raise AvtkError(f"cannot write video file {path} ({codec} in {fmt}): {_reason(err)}") from None


def _check_image(path, image, index, size):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise AvtkError(f"{path}: frame {index} is {image.dtype} {image.shape}, expected uint8 (height, width, 3) RGB")
    if size is not None and image.shape[:2] != size:
        raise AvtkError(f"{path}: frame {index} is {image.shape[1]}x{image.shape[0]}, "
                        f"the first was {size[1]}x{size[0]}")
    return np.ascontiguousarray(image)
