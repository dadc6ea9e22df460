"""Kaldi data directories: validate/fix/subset/combine/split through utils/, plus trials files."""
import os
import re

import numpy as np
import pytest
import soundfile as sf

from avtk.data import datadir
from avtk.data.trials import Trials, path_to_utt, read_trials, write_trials
from avtk.errors import AvtkError
from conftest import run

SPK_UTTS = {"spkA": ["spkA-u1", "spkA-u2", "spkA-u3"], "spkB": ["spkB-u1", "spkB-u2"], "spkC": ["spkC-u1"]}
UTTS = sorted(u for utts in SPK_UTTS.values() for u in utts)
SPK_OF = {u: s for s, utts in SPK_UTTS.items() for u in utts}


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def lines(path):
    return path.read_text().splitlines()


def make_dir(root, name="train", utts=UTTS, with_dur=True):
    """A valid data dir root/data/<name> whose wav.scp points at real 16 kHz wavs (relative to root)."""
    d = root / "data" / name
    d.mkdir(parents=True)
    (root / "wav").mkdir(exist_ok=True)
    for i, u in enumerate(utts):
        sf.write(root / "wav" / f"{u}.wav", np.full(1600 + 160 * i, 0.01, np.float32), 16000)
    write(d / "wav.scp", "".join(f"{u} wav/{u}.wav\n" for u in utts))
    write(d / "utt2spk", "".join(f"{u} {SPK_OF[u]}\n" for u in utts))
    spk2utt = {}
    for u in utts:
        spk2utt.setdefault(SPK_OF[u], []).append(u)
    write(d / "spk2utt", "".join(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items())))
    if with_dur:
        write(d / "utt2dur", "".join(f"{u} {(1600 + 160 * i) / 16000}\n" for i, u in enumerate(utts)))
    return d


def validate(root, *opts, check=False):
    return run(["validate_data_dir.sh", *opts, "data/train"], cwd=root, check=check)


# --------------------------------------------------------------------------- validate


def test_valid_dir_passes(tmp_path):
    make_dir(tmp_path)
    proc = validate(tmp_path, "--no-feats", "--check-audio")
    assert proc.returncode == 0, proc.stderr
    assert "data/train: OK" in proc.stderr
    # Kaldi's default: feats.scp is required unless --no-feats.
    proc = validate(tmp_path)
    assert proc.returncode == 1
    assert "data/train/feats.scp: missing (required unless --no-feats)" in proc.stderr


def _swap_lines(path, i, j):
    ls = lines(path)
    ls[i], ls[j] = ls[j], ls[i]
    write(path, "\n".join(ls) + "\n")


def _drop_line(path, i):
    ls = lines(path)
    del ls[i]
    write(path, "\n".join(ls) + "\n")


def _append(path, text):
    with open(path, "a") as f:
        f.write(text)


# (how to break the dir, options, the messages a user must see)
BAD_INPUTS = {
    "unsorted": (
        lambda d: _swap_lines(d / "utt2spk", 0, 1), [],
        [r"data/train/utt2spk:2: not sorted: key 'spkA-u1' comes after 'spkA-u2' \(line 1\)"],
    ),
    "duplicate": (
        lambda d: _append(d / "utt2dur", "spkC-u1 0.5\n"), [],
        [r"data/train/utt2dur:7: duplicate key 'spkC-u1' \(first on line 6\)"],
    ),
    "utt2spk-not-in-wav": (
        lambda d: _drop_line(d / "wav.scp", 4), [],  # spkB-u2
        [r"data/train/utt2spk:5: utterance 'spkB-u2' is in utt2spk but not in wav.scp"],
    ),
    "wav-not-in-utt2spk": (
        lambda d: _append(d / "wav.scp", "spkD-u1 wav/spkA-u1.wav\n"), [],
        [r"data/train/wav.scp:7: utterance 'spkD-u1' is in wav.scp but not in utt2spk"],
    ),
    "speaker-without-utterances": (
        lambda d: _append(d / "spk2utt", "spkD\n"), [],
        [r"data/train/spk2utt:4: speaker 'spkD' has no utterances"],
    ),
    "spk2utt-inconsistent": (
        lambda d: write(d / "spk2utt", "spkA spkA-u1 spkA-u2\nspkB spkA-u3 spkB-u1 spkB-u2\nspkC spkC-u1\n"), [],
        [r"data/train/spk2utt:1: speaker 'spkA': utterances differ from utt2spk \(only in utt2spk: 'spkA-u3'\)",
         r"data/train/spk2utt:2: speaker 'spkB': utterances differ from utt2spk \(only in spk2utt: 'spkA-u3'\)"],
    ),
    "malformed-utt2spk": (
        lambda d: write(d / "utt2spk", (d / "utt2spk").read_text().replace("spkA-u2 spkA", "spkA-u2 spkA extra")), [],
        [r"data/train/utt2spk:2: malformed line: expected exactly 2 fields \(<utterance> <speaker>\), "
         r"got 3: 'spkA-u2 spkA extra'"],
    ),
    "malformed-utt2dur": (
        lambda d: write(d / "utt2dur", (d / "utt2dur").read_text().replace("spkB-u1 0.13", "spkB-u1 -1")), [],
        [r"data/train/utt2dur:4: malformed line for utterance 'spkB-u1': duration '-1' is not a non-negative number"],
    ),
    "optional-not-subset": (
        lambda d: write(d / "frames.scp", "spkA-u1 faces/spkA-u1\nspkZ-u1 faces/spkZ-u1\n"), [],
        [r"data/train/frames.scp:2: utterance 'spkZ-u1' is not in utt2spk"],
    ),
    "missing-audio": (
        lambda d: os.remove(d.parents[1] / "wav" / "spkB-u1.wav"), ["--check-audio"],
        [r"data/train/wav.scp:4: utterance 'spkB-u1': audio file 'wav/spkB-u1.wav' does not exist"],
    ),
    "missing-spk2utt": (
        lambda d: os.remove(d / "spk2utt"), [],
        [r"data/train/spk2utt: missing \(required; make it with: utt2spk_to_spk2utt"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_validate_reports_bad_input(tmp_path, case):
    breaker, opts, expected = BAD_INPUTS[case]
    d = make_dir(tmp_path)
    breaker(d)
    proc = validate(tmp_path, "--no-feats", *opts)
    assert proc.returncode == 1, proc.stderr
    for pattern in expected:
        assert re.search(pattern, proc.stderr), f"{pattern!r} not in:\n{proc.stderr}"
    assert re.search(r"ERROR \[avtk validate-data-dir\] data/train: \d+ problem\(s\)", proc.stderr)


def test_pipes_not_checked_and_every_problem_listed(tmp_path):
    d = make_dir(tmp_path)
    write(d / "wav.scp", (d / "wav.scp").read_text().replace("spkA-u1 wav/spkA-u1.wav",
                                                             "spkA-u1 sox wav/nothing.wav -t wav - |"))
    assert validate(tmp_path, "--no-feats", "--check-audio").returncode == 0
    # several problems in one run: all of them are printed, one per line
    _swap_lines(d / "utt2spk", 0, 1)
    _append(d / "spk2utt", "spkD\n")
    os.remove(tmp_path / "wav" / "spkC-u1.wav")
    proc = validate(tmp_path, "--no-feats", "--check-audio")
    problems = [ln for ln in proc.stderr.splitlines() if ln.startswith("data/train/")]
    assert len(problems) == 3, proc.stderr
    assert "3 problem(s)" in proc.stderr


def test_validate_segments(tmp_path):
    d = make_dir(tmp_path, with_dur=False)
    write(d / "wav.scp", "rec1 wav/spkA-u1.wav\nrec2 wav/spkB-u1.wav\n")
    segs = {"spkA-u1": "rec1 0.0 0.5", "spkA-u2": "rec1 0.5 1.0", "spkA-u3": "rec1 1.0 1.5",
            "spkB-u1": "rec2 0 1", "spkB-u2": "rec3 0 1", "spkC-u1": "rec2 2.0 1.5"}
    write(d / "segments", "".join(f"{u} {s}\n" for u, s in sorted(segs.items())))
    proc = validate(tmp_path, "--no-feats")
    assert proc.returncode == 1
    assert "data/train/segments:5: utterance 'spkB-u2': recording 'rec3' is not in wav.scp" in proc.stderr
    assert ("data/train/segments:6: malformed line for utterance 'spkC-u1': end time 1.5 <= start time 2.0"
            in proc.stderr)
    problems = datadir.validate(d)
    assert len(problems) == 2, problems


def test_validate_trials_in_dir(tmp_path):
    d = make_dir(tmp_path)
    write(d / "trials", "1 spkA/u1.wav spkA/u2.wav\n0 spkA/u1.wav spkB/u9.wav\n")
    problems = datadir.validate(d)
    assert problems == [f"{d}/trials:2: 'spkB/u9.wav' (utterance 'spkB-u9') is neither an utterance "
                        f"nor a speaker in utt2spk"]


# --------------------------------------------------------------------------- fix


def test_fix_data_dir(tmp_path):
    d = make_dir(tmp_path)
    # unsorted, an utterance missing from utt2dur, one missing from wav.scp, a repeated line,
    # a speaker left with nothing, and spk2utt out of date
    write(d / "utt2spk", "spkB-u2 spkB\nspkA-u1 spkA\n" + "".join(f"{u} {SPK_OF[u]}\n" for u in UTTS[1:]))
    _drop_line(d / "utt2dur", 0)  # spkA-u1
    _drop_line(d / "wav.scp", 5)  # spkC-u1: speaker spkC has no utterance left
    _swap_lines(d / "wav.scp", 0, 2)
    _append(d / "spk2utt", "spkD\n")
    original = {name: (d / name).read_text() for name in ("wav.scp", "utt2spk", "spk2utt", "utt2dur")}
    assert validate(tmp_path, "--no-feats").returncode == 1

    proc = run(["fix_data_dir.sh", "data/train"], cwd=tmp_path)
    assert "data/train/utt2spk: dropping 1 repeated identical lines" in proc.stderr
    assert "data/train/utt2spk: removed 2 of 6 lines" in proc.stderr
    assert "data/train: removed 2 speakers without utterances: 'spkC', 'spkD'" in proc.stderr
    assert "kept 4 of 6 utterances, 2 speakers" in proc.stderr
    assert validate(tmp_path, "--no-feats").returncode == 0
    kept = ["spkA-u2", "spkA-u3", "spkB-u1", "spkB-u2"]
    assert [ln.split()[0] for ln in lines(d / "utt2spk")] == kept
    assert [ln.split()[0] for ln in lines(d / "wav.scp")] == kept
    assert [ln.split()[0] for ln in lines(d / "utt2dur")] == kept
    assert lines(d / "spk2utt") == ["spkA spkA-u2 spkA-u3", "spkB spkB-u1 spkB-u2"]
    for name, text in original.items():
        assert (d / ".backup" / name).read_text() == text


def test_fix_refuses_conflicting_duplicates(tmp_path):
    d = make_dir(tmp_path)
    _append(d / "utt2spk", "spkA-u1 spkB\n")
    before = (d / "utt2spk").read_text()
    proc = run(["fix_data_dir.sh", "data/train"], cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert "data/train/utt2spk:7: duplicate key 'spkA-u1' (first on line 1)" in proc.stderr
    assert (d / "utt2spk").read_text() == before


# --------------------------------------------------------------------------- subset / combine


def test_subset_data_dir(tmp_path):
    make_dir(tmp_path)
    run(["subset_data_dir.sh", "--first", "data/train", "2", "data/first2"], cwd=tmp_path)
    assert lines(tmp_path / "data/first2/utt2spk") == ["spkA-u1 spkA", "spkA-u2 spkA"]
    assert lines(tmp_path / "data/first2/spk2utt") == ["spkA spkA-u1 spkA-u2"]
    assert len(lines(tmp_path / "data/first2/utt2dur")) == 2

    run(["subset_data_dir.sh", "--random", "--seed", "3", "data/train", "4", "data/r1"], cwd=tmp_path)
    run(["subset_data_dir.sh", "--seed", "3", "data/train", "4", "data/r2"], cwd=tmp_path)
    assert lines(tmp_path / "data/r1/utt2spk") == lines(tmp_path / "data/r2/utt2spk")
    assert len(lines(tmp_path / "data/r1/wav.scp")) == 4

    write(tmp_path / "spks", "spkB\nspkC\n")
    run(["subset_data_dir.sh", "--spk-list", "spks", "data/train", "data/bc"], cwd=tmp_path)
    assert [ln.split()[0] for ln in lines(tmp_path / "data/bc/wav.scp")] == ["spkB-u1", "spkB-u2", "spkC-u1"]

    write(tmp_path / "utts", "spkA-u3\nspkC-u1 extra fields ignored\n")
    run(["subset_data_dir.sh", "--utt-list", "utts", "data/train", "data/u"], cwd=tmp_path)
    assert lines(tmp_path / "data/u/spk2utt") == ["spkA spkA-u3", "spkC spkC-u1"]
    for sub in ("first2", "r1", "bc", "u"):
        assert datadir.validate(tmp_path / "data" / sub) == [], sub

    proc = run(["subset_data_dir.sh", "--first", "data/train", "7", "data/x"], cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert "cannot take 7 utterances from data/train, which has 6" in proc.stderr


def test_subset_with_segments_keeps_used_recordings(tmp_path):
    d = make_dir(tmp_path, with_dur=False)
    write(d / "wav.scp", "rec1 wav/spkA-u1.wav\nrec2 wav/spkB-u1.wav\n")
    write(d / "segments", "".join(f"{u} {'rec1' if u < 'spkB' else 'rec2'} 0 0.1\n" for u in UTTS))
    assert datadir.validate(d) == []
    keep = datadir.subset(d, tmp_path / "data/a", spk_list=["spkA"])
    assert keep == ["spkA-u1", "spkA-u2", "spkA-u3"]
    assert lines(tmp_path / "data/a/wav.scp") == ["rec1 wav/spkA-u1.wav"]
    assert datadir.validate(tmp_path / "data/a") == []
    assert datadir.load(tmp_path / "data/a").segments["spkA-u2"] == datadir.Segment("rec1", 0.0, 0.1)


def test_combine_data(tmp_path, monkeypatch):
    make_dir(tmp_path, "a", utts=UTTS[:3])
    make_dir(tmp_path, "b", utts=UTTS[3:])
    write(tmp_path / "data/a/frames.scp", "spkA-u1 faces/spkA-u1\n")
    proc = run(["combine_data.sh", "data/all", "data/a", "data/b"], cwd=tmp_path)
    assert "frames.scp is in data/a but not in every source: not combined" in proc.stderr
    all_dir = tmp_path / "data/all"
    assert [ln.split()[0] for ln in lines(all_dir / "utt2spk")] == UTTS
    assert len(lines(all_dir / "utt2dur")) == 6
    assert not (all_dir / "frames.scp").exists()
    monkeypatch.chdir(tmp_path)  # relative wav paths resolve from the recipe directory
    assert datadir.validate("data/all", check_audio=True) == []

    make_dir(tmp_path, "c", utts=["spkB-u2", "spkC-u1"])
    proc = run(["combine_data.sh", "data/all2", "data/a", "data/b", "data/c"], cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert "duplicate utterance id 'spkB-u2' in data/b/utt2spk:2 and data/c/utt2spk:1" in proc.stderr
    assert not (tmp_path / "data/all2").exists()


# --------------------------------------------------------------------------- split / filter / conversions


def test_split_scp_by_lines_and_speakers(tmp_path):
    d = make_dir(tmp_path)
    outs = [tmp_path / f"split3/{i}/wav.scp" for i in (1, 2, 3)]
    run(["split_scp", d / "wav.scp", *outs])
    assert [len(lines(o)) for o in outs] == [2, 2, 2]
    assert sum((lines(o) for o in outs), []) == lines(d / "wav.scp")

    outs = [tmp_path / f"s{i}" for i in (1, 2)]
    run(["split_scp", "--utt2spk", d / "utt2spk", d / "wav.scp", *outs])
    parts = [[ln.split()[0] for ln in lines(o)] for o in outs]
    assert parts == [["spkA-u1", "spkA-u2", "spkA-u3"], ["spkB-u1", "spkB-u2", "spkC-u1"]]

    proc = run(["split_scp", "--utt2spk", d / "utt2spk", d / "wav.scp", *[tmp_path / f"t{i}" for i in range(4)]],
               check=False)
    assert proc.returncode == 1
    assert "cannot split the 3 speakers" in proc.stderr
    write(tmp_path / "odd.scp", "spkA-u1 x\nnobody y\n")
    proc = run(["split_scp", "--utt2spk", d / "utt2spk", tmp_path / "odd.scp", tmp_path / "o1"], check=False)
    assert proc.returncode == 1
    assert f"{tmp_path}/odd.scp:2: utterance 'nobody' is not in {d}/utt2spk" in proc.stderr

    assert datadir.split_scp(d / "wav.scp", [tmp_path / "p1", tmp_path / "p2", tmp_path / "p3", tmp_path / "p4"]) \
        == [2, 2, 1, 1]


def test_filter_scp(tmp_path):
    write(tmp_path / "in.scp", "a x\nb a\nc y\nd b\n")
    write(tmp_path / "ids", "a\nd other\n")
    assert run(["filter_scp", tmp_path / "ids", tmp_path / "in.scp"]).stdout == "a x\nd b\n"
    assert run(["filter_scp", "--exclude", tmp_path / "ids", tmp_path / "in.scp"]).stdout == "b a\nc y\n"
    assert run(["filter_scp", "-f", "2", tmp_path / "ids"], input="a x\nb a\nd b\n").stdout == "b a\n"
    write(tmp_path / "none", "")
    assert run(["filter_scp", "--exclude", tmp_path / "none", tmp_path / "in.scp"]).stdout == "a x\nb a\nc y\nd b\n"


def test_utt2spk_spk2utt_conversions(tmp_path):
    # C byte order: upper case before lower case, '-' before digits
    utt2spk = "b-2 s\nB-1 S\na_1 s\na-1 s\n"
    spk2utt = run(["utt2spk_to_spk2utt"], input=utt2spk).stdout
    assert spk2utt == "S B-1\ns a-1 a_1 b-2\n"
    write(tmp_path / "spk2utt", spk2utt)
    assert run(["spk2utt_to_utt2spk", tmp_path / "spk2utt"]).stdout == "B-1 S\na-1 s\na_1 s\nb-2 s\n"
    d = make_dir(tmp_path)
    assert run(["utt2spk_to_spk2utt", d / "utt2spk"]).stdout == (d / "spk2utt").read_text()


# --------------------------------------------------------------------------- trials


def test_trials_both_styles(tmp_path):
    write(tmp_path / "kaldi", "spkA-u1 spkA-u2 target\n\nspkA-u1 spkB-u1 nontarget\n")
    t = read_trials(tmp_path / "kaldi")
    assert (t.enroll, t.test, t.style, t.lineno) == (["spkA-u1", "spkA-u1"], ["spkA-u2", "spkB-u1"], "kaldi", [1, 3])
    assert t.labels.dtype == np.int8 and t.labels.tolist() == [1, 0]

    write(tmp_path / "seed", "1 id10001/1zcIwhmdeo4/00001.wav id10001/7w0IBEWc9Qw/00002.wav\n"
                             "0 id10001/1zcIwhmdeo4/00001.wav id10002/xyz/00003.wav\n")
    s = read_trials(tmp_path / "seed")
    assert s.style == "seed" and s.labels.tolist() == [1, 0]
    assert s.enroll[0] == "id10001/1zcIwhmdeo4/00001.wav"
    m = read_trials(tmp_path / "seed", map_paths=True)
    assert m.enroll == ["id10001-1zcIwhmdeo4-00001"] * 2
    assert m.test == ["id10001-7w0IBEWc9Qw-00002", "id10002-xyz-00003"]
    assert path_to_utt("a.b/c") == "a.b-c"

    write(tmp_path / "pairs", "e1 t1\ne2 t2\n")
    u = read_trials(tmp_path / "pairs")
    assert u.labels is None and u.style == "unlabeled" and len(u) == 2

    write_trials(tmp_path / "out.kaldi", s)  # written in its own (seed) style
    assert lines(tmp_path / "out.kaldi")[0] == "1 id10001/1zcIwhmdeo4/00001.wav id10001/7w0IBEWc9Qw/00002.wav"
    write_trials(tmp_path / "out.k", m, style="kaldi")
    assert lines(tmp_path / "out.k")[1] == "id10001-1zcIwhmdeo4-00001 id10002-xyz-00003 nontarget"
    back = read_trials(tmp_path / "out.k")
    assert back.labels.tolist() == [1, 0] and back.test == m.test
    write_trials(tmp_path / "out.u", Trials(["a"], ["b"]))
    assert lines(tmp_path / "out.u") == ["a b"]


@pytest.mark.parametrize("text, message", [
    ("a b target\na b maybe\n", "trials:2: malformed trial line (expected `<enroll> <test> target|nontarget`): 'a b maybe'"),
    ("1 a b\n2 a b\n", "trials:2: malformed trial line (expected `1|0 <enroll> <test>`): '2 a b'"),
    ("a b c d\n", "trials:1: malformed trial line"),
    ("1 a b\na b target\n", "trials:2: mixed trial styles: this line is kaldi style"),
    ("a b\n1 a b\n", "trials:2: mixed trial styles: this line is seed style"),
    ("\n", "trials: no trials (empty file)"),
])
def test_trials_malformed(tmp_path, text, message):
    write(tmp_path / "trials", text)
    with pytest.raises(AvtkError) as err:
        read_trials(tmp_path / "trials")
    assert f"{tmp_path}/{message}" in str(err.value)
