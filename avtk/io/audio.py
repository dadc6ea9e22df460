"""Audio from Kaldi data directories: float32 mono waveforms at 16 kHz.

A data directory's ``wav.scp`` maps a recording id to a source, either a file path or a Kaldi pipe
(``COMMAND ARGS |``, run with bash; its standard output is parsed as an audio file). When the directory has a
``segments`` file (``utt reco start end``, seconds; ``end`` -1 means the end of the recording), utterances are
those segments; otherwise the utterances are the recordings themselves.

Conventions:
  * samples are float32 in [-1, 1) (16-bit PCM is divided by 32768), shape (samples,);
  * a multi-channel file gives its first channel (channel 0), as Kaldi's default ``--channel`` does
    for segment extraction;
  * a sample rate other than the one asked for is an error unless ``resample=True``, in which case the
    recording is resampled with `avtk.io.resample.resample` (segments are cut after resampling);
  * a segment's sample range is [round(start * sr), round(end * sr)); an end past the recording by at most
    `MAX_OVERSHOOT` seconds is clipped to the recording (Kaldi's extract-segments default), more is an error.

Files whose extension is in `avtk.io.media.MEDIA_EXTENSIONS` (.m4a .mp4 .aac .mkv .webm .ogg .opus, any case:
VoxCeleb2's m4a and mp4) are decoded with PyAV (`avtk.io.media.read_audio`, AAC priming removed) at their native
rate and then follow the rules above like any other file; all else is read with libsndfile.

Sample values. Every sample read (file or pipe) must be finite, and no float sample may lie beyond
±`MAX_AMPLITUDE` (32768, the full scale of 16-bit PCM: float wavs are sometimes written at that scale, and
the log-mel features with mean normalisation do not mind the gain; anything larger, such as 1e30, is no
recording at any PCM scale and would overflow the float32 power spectrum). Either is an error naming the
utterance, the file and the first offending sample.

Truncated files. A file given by path whose header declares more audio than the file holds (the file was cut
short while copying or writing) is an error naming the declared and the present duration, instead of being
read as a shorter utterance: libsndfile reports the declared size of the audio data chunk (WAV and its
variants, AIFF) in its log (`data : DECLARED (should be PRESENT)`) and `read_file` compares it with what it
reads. A declared size of at least `UNKNOWN_SIZE` bytes is a placeholder that streaming writers put in a
header they cannot go back to fix, and means "unknown length": the file is read to its end. A pipe's output
is read as it arrives (its header may not know its length). Media files detect truncation themselves
(`avtk.io.media`), FLAC through its decoder.

Every failure (missing, empty, truncated or corrupt file, failing pipe, non-finite or absurd samples, wrong
rate, segment out of range) is an `AvtkError` naming the utterance and the file or command.
"""
from __future__ import annotations

import io
import os
import re
import subprocess
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import soundfile as sf
import torch

from avtk.data.table import read_lines
from avtk.errors import AvtkError
from avtk.io import media
from avtk.io.atomic import atomic_path, note_input
from avtk.io.resample import resample as _resample

SAMPLE_RATE = 16000
MAX_OVERSHOOT = 0.5  # seconds a segment may end past its recording (clipped), as Kaldi's extract-segments
_STDERR_TAIL = 800
MAX_AMPLITUDE = 32768.0  # the largest |float sample| accepted: the full scale of 16-bit PCM (module doc)
UNKNOWN_SIZE = 0x7FFF0000  # declared data sizes from here up are streaming placeholders (0x7FFFF000, 0xFFFFFFFF)
# libsndfile's log line for an audio data chunk whose declared size differs from what the file holds
_ARK_ENTRY = re.compile(r"(?P<path>.+):\d+(?:\[[^\]]*\])?")  # Kaldi `file:offset[range]`
_DECLARED = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


@dataclass(frozen=True)
class AudioSource:
    """Where an utterance's audio comes from: a wav.scp value (path or pipe) and an optional segment."""

    location: str  # the wav.scp value: a path, or 'COMMAND ARGS |'
    reco: str  # the recording id (the utterance id when there are no segments)
    segment: Optional[Tuple[float, float]] = None  # (start, end) seconds; end -1: end of the recording

    @property
    def is_pipe(self):
        return is_pipe(self.location)


def is_pipe(location):
    """True for a Kaldi input pipe, `COMMAND ARGS |`."""
    return location.rstrip().endswith("|")


def read_wav_scp(data_dir_or_wav_scp, segments=None):
    """{utt: AudioSource} from a data directory (wav.scp, plus segments when present) or a wav.scp file
    (plus the `segments` file given).

    Order: that of the segments file when present, else of wav.scp. A segment naming a recording absent from
    wav.scp, a malformed segments line and duplicate ids are errors naming the file and line, and so is a
    Kaldi ark entry (`file:offset` whose file exists, as in a feats.scp) among the audio locations.
    """
    path = os.fspath(data_dir_or_wav_scp)
    if os.path.isdir(path):
        wav_scp = os.path.join(path, "wav.scp")
        segments = os.path.join(path, "segments")
        if not os.path.exists(segments):
            segments = None
    else:
        wav_scp = path
    recos = {}
    for line in read_lines(wav_scp):
        if line.key in recos:
            raise AvtkError(f"{wav_scp}:{line.lineno}: duplicate recording id {line.key!r}")
        ark = _ARK_ENTRY.fullmatch(line.value)  # only such values cost a stat
        if ark and not os.path.exists(line.value) and os.path.isfile(ark["path"]):
            raise AvtkError(f"{wav_scp}:{line.lineno}: utterance {line.key}: {line.value} is a feature (Kaldi ark) "
                            f"entry in an audio table; avtk reads audio from files or pipes (a feats.scp line "
                            f"in a wav.scp?)")
        recos[line.key] = line.value
    if segments is None:
        return {reco: AudioSource(location, reco) for reco, location in recos.items()}

    sources = {}
    for line in read_lines(segments, min_fields=4):
        where = f"{segments}:{line.lineno}"
        fields = line.value.split()
        if len(fields) != 3:
            raise AvtkError(f"{where}: malformed segment for utterance {line.key!r} (expected 'utt reco start end')")
        reco, start_text, end_text = fields
        try:
            start, end = float(start_text), float(end_text)
        except ValueError:
            raise AvtkError(f"{where}: utterance {line.key!r}: start/end are not numbers: {start_text} {end_text}") \
                from None
        if not (np.isfinite(start) and np.isfinite(end)) or start < 0 or (end != -1 and end <= start):
            raise AvtkError(f"{where}: utterance {line.key!r}: invalid segment times {start_text} {end_text}")
        if reco not in recos:
            raise AvtkError(f"{where}: utterance {line.key!r}: recording {reco!r} is not in {wav_scp}")
        if line.key in sources:
            raise AvtkError(f"{where}: duplicate utterance id {line.key!r}")
        sources[line.key] = AudioSource(recos[reco], reco, (start, end))
    return sources


def _stderr_tail(data):
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= _STDERR_TAIL else "..." + text[-_STDERR_TAIL:]


def _sf_error(err):
    """libsndfile's own words for a read failure, without soundfile's 'Error opening <object>' prefix."""
    return getattr(err, "error_string", None) or str(err)


def _read_pipe(utt, location):
    command = location.rstrip()[:-1].strip()
    try:
        proc = subprocess.run(["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as err:
        raise AvtkError(f"utterance {utt}: cannot run '{command}': {err}") from None
    if proc.returncode != 0:
        tail = _stderr_tail(proc.stderr)
        raise AvtkError(f"utterance {utt}: command '{command}' exited with status {proc.returncode}"
                        + (f": {tail}" if tail else ""))
    if not proc.stdout:
        raise AvtkError(f"utterance {utt}: command '{command}' wrote no audio")
    try:
        data, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
        if data.shape[0] == 0:
            patched = _fix_streamed_wav_header(proc.stdout)
            if patched is not None:
                data, rate = sf.read(io.BytesIO(patched), dtype="float32", always_2d=True)
    except (RuntimeError, TypeError, ValueError) as err:  # soundfile.LibsndfileError is a RuntimeError
        raise AvtkError(f"utterance {utt}: output of command '{command}' is not readable audio: "
                        f"{_sf_error(err)}") from None
    check_samples(data, rate, f"utterance {utt}: output of command '{command}'")
    return data, rate, f"command '{command}'"


def _fix_streamed_wav_header(data):
    """A copy of a wav written to a pipe with zero chunk sizes, its 'data' size set to the bytes that follow.

    Programs that stream a wav to a pipe cannot seek back to fill in the sizes; None if nothing to fix.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if chunk == b"data":
            if size != 0 or pos + 8 == len(data):
                return None
            fixed = bytearray(data)
            fixed[pos + 4:pos + 8] = (len(data) - pos - 8).to_bytes(4, "little")
            fixed[4:8] = (len(data) - 8).to_bytes(4, "little")
            return bytes(fixed)
        pos += 8 + size + (size & 1)
    return None


def check_samples(data, rate, what):
    """Raise AvtkError(`what` has ...) unless every sample of `data` (float, any shape with samples first) is
    finite and within ±MAX_AMPLITUDE; the message gives the first offending sample and its time (rate Hz)."""
    data = np.asarray(data)
    if data.size == 0 or (np.isfinite(data).all() and np.abs(data).max() <= MAX_AMPLITUDE):
        return
    flat = data.reshape(len(data), -1)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(flat) | (np.abs(flat) > MAX_AMPLITUDE)
    row, col = np.argwhere(bad)[0]
    value = flat[row, col]
    kind = "a NaN or infinite sample" if not np.isfinite(value) else \
        f"a sample of {value:.3g}, beyond ±{MAX_AMPLITUDE:g} (the 16-bit full scale)"
    count = int(bad.sum())
    more = f" ({count} such samples)" if count > 1 else ""
    raise AvtkError(f"{what} has {kind} at sample {row} ({row / rate:.3f} s){more}")


def _check_declared(path, log_text, frames, rate, where):
    """AvtkError when libsndfile's log says the audio data chunk holds less than its header declares."""
    match = _DECLARED.search(log_text or "")
    if match is None:
        return
    declared, present = int(match.group(1)), int(match.group(2))
    if present >= declared or declared >= UNKNOWN_SIZE:
        return
    if frames == 0:
        raise AvtkError(f"{where}audio file {path} is truncated: its header declares {declared} bytes of "
                        f"audio but the file holds {present}")
    frame_bytes = max(1, present // frames)
    if declared // frame_bytes <= frames:
        return
    raise AvtkError(f"{where}audio file {path} is truncated: its header declares "
                    f"{declared // frame_bytes / rate:.3f} s ({declared // frame_bytes} samples) but the file "
                    f"holds {frames / rate:.3f} s ({frames} samples)")


def _check_exists(path, where):
    """A missing path, a directory or an empty file is an AvtkError naming it (after `where`)."""
    if not os.path.exists(path):
        raise AvtkError(f"{where}audio file {path} does not exist")
    if os.path.isdir(path):
        raise AvtkError(f"{where}audio file {path} is a directory")
    if os.path.getsize(path) == 0:
        raise AvtkError(f"{where}audio file {path} is empty (0 bytes)")


def _open_file(path, where):
    """The open soundfile.SoundFile of `path` after the checks that need no decoding (exists, not empty,
    readable header, not truncated); the caller closes it. Media files are not for this (read_file)."""
    _check_exists(path, where)
    try:
        f = sf.SoundFile(path)
    except (RuntimeError, TypeError, ValueError, OSError) as err:
        raise AvtkError(f"{where}cannot read audio file {path}: {_sf_error(err)}") from None
    note_input(path, bulk=True)  # an input of the running command: no output may replace it
    try:
        _check_declared(path, f.extra_info, f.frames, f.samplerate, where)
    except AvtkError:
        f.close()
        raise
    return f


def is_media(path):
    """True for a file decoded by PyAV rather than libsndfile (extension in avtk.io.media.MEDIA_EXTENSIONS)."""
    return os.path.splitext(os.fspath(path))[1].lower() in media.MEDIA_EXTENSIONS


def file_info(path, utt=None):
    """(frames, sample rate) of a libsndfile-readable file from its header, without decoding it; a missing,
    unreadable or truncated file is an AvtkError (after `utterance <utt>: ` when utt is given). Media files
    (`is_media`) need decoding to know their length and are refused here."""
    where = "" if utt is None else f"utterance {utt}: "
    if is_media(path):
        raise AvtkError(f"{where}{path}: file_info reads libsndfile headers only, not media files")
    with _open_file(path, where) as f:
        return f.frames, f.samplerate


def read_file(path, utt=None):
    """(float32 (samples, channels), native sample rate) of an audio or media file. Errors name the file, after
    `utterance <utt>: ` when utt is given: a missing, empty, corrupt or truncated file (module doc), and
    non-finite or absurd samples (`check_samples`)."""
    where = "" if utt is None else f"utterance {utt}: "
    if is_media(path):
        _check_exists(path, where)
        note_input(path, bulk=True)  # an input of the running command: no output may replace it
        try:
            data, rate = media.read_audio(path)
        except AvtkError as err:
            raise AvtkError(f"{where}{err}") from None
    else:
        with _open_file(path, where) as f:
            try:
                data, rate = f.read(dtype="float32", always_2d=True), f.samplerate
            except (RuntimeError, TypeError, ValueError, OSError) as err:
                raise AvtkError(f"{where}cannot read audio file {path}: {_sf_error(err)}") from None
    check_samples(data, rate, f"{where}audio file {path}")
    return data, rate


def read_span(path, start, count, utt=None):
    """float32 (count,) samples [start, start + count) of channel 0 of a libsndfile-readable file, and its sample
    rate, read without decoding the rest (a seek: a 2 s crop of a 5-minute file costs what a 2 s file does).
    The file checks of `read_file` apply (missing, empty, corrupt, truncated), `check_samples` to what is read;
    a span past the end is an AvtkError. Media files (`is_media`) are refused: decode them whole (read_file)."""
    where = "" if utt is None else f"utterance {utt}: "
    if is_media(path):
        raise AvtkError(f"{where}{path}: read_span reads libsndfile files only, not media files")
    with _open_file(path, where) as f:
        if start < 0 or count < 0 or start + count > f.frames:
            raise AvtkError(f"{where}audio file {path} has {f.frames} samples, not the span {start}-{start + count}")
        try:
            f.seek(start)
            data = f.read(count, dtype="float32", always_2d=True)
        except (RuntimeError, TypeError, ValueError, OSError) as err:
            raise AvtkError(f"{where}cannot read audio file {path}: {_sf_error(err)}") from None
        rate = f.samplerate
    if len(data) != count:
        raise AvtkError(f"{where}audio file {path}: read {len(data)} samples at {start}, not {count}")
    check_samples(data, rate, f"{where}audio file {path} (the span from sample {start})")
    return np.ascontiguousarray(data[:, 0]), rate


def read_recording(utt, location):
    """(float32 mono samples, sample rate, description) of a wav.scp value; channel 0 of a multi-channel file."""
    data, rate, what = _read_pipe(utt, location) if is_pipe(location) else (*read_file(location, utt), location)
    if data.shape[0] == 0:
        raise AvtkError(f"utterance {utt}: {what} has no samples")
    return np.ascontiguousarray(data[:, 0], dtype=np.float32), int(rate), what


def _convert_rate(utt, wave, rate, what, sample_rate, resample):
    if rate == sample_rate:
        return wave
    if not resample:
        raise AvtkError(f"utterance {utt}: {what} has sample rate {rate} Hz, expected {sample_rate} Hz "
                        "(resample it, or read with resample=True)")
    try:
        out = _resample(torch.from_numpy(wave), rate, sample_rate)
    except ValueError as err:
        raise AvtkError(f"utterance {utt}: cannot resample {what}: {err}") from None
    return out.numpy().astype(np.float32, copy=False)


def _cut(utt, wave, sample_rate, segment, what):
    if segment is None:
        return wave
    start, end = float(segment[0]), float(segment[1])
    duration = len(wave) / sample_rate
    if start < 0 or (end != -1 and end <= start):
        raise AvtkError(f"utterance {utt}: invalid segment {start}-{end} s of {what}")
    if end == -1:
        end = duration
    if start >= duration or end > duration + MAX_OVERSHOOT:
        raise AvtkError(f"utterance {utt}: segment {start:g}-{end:g} s is outside {what} ({duration:g} s)")
    first = int(round(start * sample_rate))
    last = min(int(round(end * sample_rate)), len(wave))
    if last <= first:
        raise AvtkError(f"utterance {utt}: segment {start:g}-{end:g} s of {what} has no samples")
    return np.ascontiguousarray(wave[first:last])


def load_audio(utt, source, *, sample_rate=SAMPLE_RATE, resample=False, segment=None):
    """float32 mono samples of one utterance, at sample_rate.

    source: an AudioSource (from read_wav_scp; its segment applies) or a wav.scp value (path or pipe).
    segment: (start, end) seconds, overriding the source's own.
    """
    location = source.location if isinstance(source, AudioSource) else os.fspath(source)
    if segment is None and isinstance(source, AudioSource):
        segment = source.segment
    wave, rate, what = read_recording(utt, location)
    wave = _convert_rate(utt, wave, rate, what, sample_rate, resample)
    return _cut(utt, wave, sample_rate, segment, what)


class AudioReader:
    """Iterate (utt, float32 wave) over a data directory (or wav.scp) in sorted utterance order (or file order
    with sort=False).

    A recording shared by several segments is read (and resampled) once and kept until its last segment
    has been served; at most `max_cached` recordings are kept at a time.
    """

    def __init__(self, data_dir, resample=False, *, segments=None, sample_rate=SAMPLE_RATE, max_cached=8, sort=True):
        self.data_dir = os.fspath(data_dir)  # a data directory, or a wav.scp (with an optional segments file)
        self.resample = resample
        self.sample_rate = sample_rate
        self.max_cached = max(1, int(max_cached))
        self.sources = read_wav_scp(self.data_dir, segments)
        self.utts = sorted(self.sources) if sort else list(self.sources)

    def __len__(self):
        return len(self.utts)

    def __contains__(self, utt):
        return utt in self.sources

    def __getitem__(self, utt):
        """One utterance's samples (no caching)."""
        if utt not in self.sources:
            raise AvtkError(f"{self.data_dir}: no utterance {utt!r}")
        return load_audio(utt, self.sources[utt], sample_rate=self.sample_rate, resample=self.resample)

    def __iter__(self):
        return self.items(self.utts)

    def items(self, utts):
        """Iterate (utt, float32 wave) over `utts` (ids of this reader) in that order, a recording shared by
        several of them read once: random access for loader workers, each reading its share (avtk.embed)."""
        remaining = {}
        for utt in utts:
            key = self.sources[utt].location
            remaining[key] = remaining.get(key, 0) + 1
        cache = OrderedDict()  # location -> (wave at sample_rate, description)
        for utt in utts:
            source = self.sources[utt]
            key = source.location
            if key in cache:
                cache.move_to_end(key)
                wave, what = cache[key]
            else:
                wave, rate, what = read_recording(utt, key)
                wave = _convert_rate(utt, wave, rate, what, self.sample_rate, self.resample)
            remaining[key] -= 1
            if remaining[key] > 0:
                cache[key] = (wave, what)
                while len(cache) > self.max_cached:
                    cache.popitem(last=False)
            else:
                cache.pop(key, None)
            yield utt, _cut(utt, wave, self.sample_rate, source.segment, what)


def write_wav(path, wave, sample_rate=SAMPLE_RATE):
    """Write samples (float in [-1, 1], or int16; 1-D or (samples, channels)) as 16-bit PCM wav, atomically.

    Floats are scaled by 32768, rounded and clipped, the inverse of how they are read.
    """
    if hasattr(wave, "detach"):
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave)
    if wave.ndim not in (1, 2) or wave.shape[0] == 0:
        raise AvtkError(f"{path}: cannot write audio of shape {wave.shape}")
    if np.issubdtype(wave.dtype, np.floating):
        # Scale by 32768 ourselves (libsndfile scales floats by 32767), so reading back is exact for PCM values.
        wave = np.clip(np.round(wave.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    elif wave.dtype != np.int16:
        raise AvtkError(f"{path}: cannot write audio of dtype {wave.dtype} (float in [-1, 1], or int16)")
    with atomic_path(path) as tmp:
        sf.write(tmp, wave, int(sample_rate), subtype="PCM_16", format="WAV")
