"""avtk prepare-voxceleb: Kaldi data dirs from the seed's lists (the synthetic corpus) and the official layout."""
import os
import re
import shutil

import kaldiio
import numpy as np
import pytest
import soundfile

from avtk.data.voxceleb import find_existing, read_seed_list, scan_tree
from avtk.errors import AvtkError
from conftest import avtk


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("vox")
    avtk("make-synthetic-corpus", "--num-train-speakers", 3, "--num-test-speakers", 2, "--videos-per-speaker", 2,
         "--utts-per-video", 2, "--min-duration", 1.5, "--max-duration", 2, "--no-raw-frames",
         root / "corpus", root / "data")
    return root


def table(path):
    """{key: value} of a table, with paths resolved (the corpus writes resolved paths)."""
    out = {}
    for line in open(path, encoding="utf-8"):
        key, value = line.rstrip("\n").split(" ", 1)
        out[key] = os.path.realpath(value) if value.startswith("/") else value
    return out


def keys(path):
    return [line.split()[0] for line in open(path, encoding="utf-8")]


def validate(*dirs):
    for d in dirs:
        avtk("validate-data-dir", "--no-feats", d)


def fails(*args):
    proc = avtk(*args, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(r"^\S+ \S+ ERROR \[avtk prepare-voxceleb\] ", proc.stderr, re.M), proc.stderr
    return proc.stderr


# ------------------------------------------------------------------------------------------------ seed layout


def test_seed_layout_gives_the_corpus_data_dirs(corpus, tmp_path):
    c, data = corpus / "corpus", tmp_path / "data"
    proc = avtk("prepare-voxceleb", "seed", "--vox2", c, "--vox1", c, data)
    assert sorted(os.listdir(data)) == ["vox1_O", "vox2_train"]  # no E/H lists, no train_all_clean.txt
    for ours, theirs in (("vox2_train", "train"), ("vox1_O", "test")):
        for name in ("wav.scp", "utt2spk", "spk2utt", "utt2dur", "frames.scp"):
            assert table(data / ours / name) == table(corpus / "data" / theirs / name), (ours, name)
            assert keys(data / ours / name) == sorted(keys(data / ours / name))
        assert all(os.path.isabs(p) for p in table(data / ours / "wav.scp").values())
    # same pairs and labels, in the same order
    assert (data / "vox1_O" / "trials").read_text() == (corpus / "data" / "test" / "trials").read_text()
    assert "data/vox2_train: 12 utterances, 3 speakers, 12 with face frames" in proc.stderr
    assert "data/vox1_O: 8 utterances, 2 speakers, 16 trials, 8 with face frames" in proc.stderr
    validate(data / "vox2_train", data / "vox1_O")


def test_seed_layout_clean_list_frames_option_and_rerun(corpus, tmp_path):
    c = corpus / "corpus"
    root = tmp_path / "vox2"  # the seed's VoxCeleb2 root: the corpus's wav/ and a train_all_clean.txt of ours
    root.mkdir()
    (root / "wav").symlink_to(c / "wav")
    lines = (c / "train_all.txt").read_text().splitlines()
    (root / "train_all.txt").write_text("\n".join(lines) + "\n")
    noisy = {2, 5, 6}
    (root / "train_all_clean.txt").write_text("".join(
        f"{line} 0.{i}1 0.{i}2 {'noisy' if i in noisy else 'clean'}\n" for i, line in enumerate(lines)))
    # a frame tree that lacks one utterance, given with --vox2-frames
    frames = tmp_path / "frames"
    stems = [line.split()[1][:-4] for line in lines]
    for stem in stems[1:]:
        (frames / stem).parent.mkdir(parents=True, exist_ok=True)
        (frames / stem).symlink_to(c / "frame_align" / stem)
    data = tmp_path / "data"
    (data / "vox2_train").mkdir(parents=True)
    (data / "vox2_train" / "feats.scp").write_text("stale 1\n")  # of an earlier run: removed
    proc = avtk("prepare-voxceleb", "seed", "--vox2", root, "--vox2-frames", frames, data)
    assert "1 of 12 utterances have no face frame directory" in proc.stderr
    assert "9 clean and 3 noisy utterances" in proc.stderr
    assert not (data / "vox2_train" / "feats.scp").exists()
    all_utts = keys(data / "vox2_train" / "utt2spk")
    first = stems[0].replace("/", "-")
    assert len(all_utts) == 12 and first in all_utts
    assert first not in table(data / "vox2_train" / "frames.scp")
    assert table(data / "vox2_train" / "frames.scp")[stems[1].replace("/", "-")] == \
        os.path.realpath(c / "frame_align" / stems[1])
    clean = keys(data / "vox2_train_clean" / "utt2spk")
    assert clean == sorted(stems[i].replace("/", "-") for i in range(12) if i not in noisy)
    durs = table(data / "vox2_train_clean" / "utt2dur")
    assert all(durs[u] == lines[i].split()[2] for i, u in ((i, stems[i].replace("/", "-")) for i in range(12))
               if u in durs)
    validate(data / "vox2_train", data / "vox2_train_clean")


@pytest.fixture
def seed_root(tmp_path):
    """A hand-made seed root (lists only; the wav files need not exist to prepare the lists)."""
    root = tmp_path / "seed"
    root.mkdir()
    (root / "train_all.txt").write_text(
        "id00001 id00001/vidA/00001.wav 3.20\nid00001 id00001/vidA/00002.wav 4.00\nid00002 id00002/vidB/00001.wav 5\n")
    (root / "O_list.txt").write_text("id10001/v1/00001.wav 4.1\nid10001/v2/00001.wav 5.2\nid10002/v3/00001.wav 6.3\n")
    (root / "O_trials.txt").write_text(
        "1 id10001/v1/00001.wav id10001/v2/00001.wav\n0 id10001/v1/00001.wav id10002/v3/00001.wav\n")
    return root


def test_seed_layout_by_hand_and_one_side_only(seed_root, tmp_path):
    proc = avtk("prepare-voxceleb", "seed", "--vox1", seed_root, tmp_path / "data")
    assert sorted(os.listdir(tmp_path / "data")) == ["vox1_O"]
    assert "has no wav/ directory" in proc.stderr
    o = tmp_path / "data" / "vox1_O"
    assert (o / "trials").read_text() == ("id10001-v1-00001 id10001-v2-00001 target\n"
                                          "id10001-v1-00001 id10002-v3-00001 nontarget\n")
    assert (o / "spk2utt").read_text() == "id10001 id10001-v1-00001 id10001-v2-00001\nid10002 id10002-v3-00001\n"
    assert table(o / "wav.scp")["id10002-v3-00001"] == os.path.realpath(seed_root / "wav/id10002/v3/00001.wav")
    assert not (o / "frames.scp").exists()
    validate(o)


def test_seed_layout_bad_input(seed_root, tmp_path):
    data = tmp_path / "data"
    train, olist, otrials = seed_root / "train_all.txt", seed_root / "O_list.txt", seed_root / "O_trials.txt"
    good = train.read_text()

    train.write_text(good + "id00002 id00002/vidB/00002.wav\n")
    assert f"{train}:4: malformed line (expected 3 fields" in \
        fails("prepare-voxceleb", "seed", "--vox2", seed_root, data)
    train.write_text(good + "id00002 id00002/vidB/00002.wav 4,5\n")
    assert f"{train}:4: duration '4,5' is not a non-negative number" in \
        fails("prepare-voxceleb", "seed", "--vox2", seed_root, data)
    train.write_text(good + "id00001 id00001/vidA/00002.wav 4.00\n")
    err = fails("prepare-voxceleb", "seed", "--vox2", seed_root, data)
    assert f"{train}:4: duplicate utterance 'id00001-vidA-00002': also at line 2" in err
    train.write_text(good)
    (seed_root / "train_all_clean.txt").write_text("id00001 id00001/vidA/00001.wav 3.2 0.8 0.9 maybe\n")
    assert "train_all_clean.txt:1: flag 'maybe' is not 'clean' or 'noisy'" in \
        fails("prepare-voxceleb", "seed", "--vox2", seed_root, data)
    (seed_root / "train_all_clean.txt").unlink()

    otrials.write_text(otrials.read_text() + "0 id10001/v2/00001.wav id10009/v9/00001.wav\n")
    err = fails("prepare-voxceleb", "seed", "--vox1", seed_root, data)
    assert f"{otrials}:3: id10009/v9/00001.wav is not in {olist} (--allow-missing drops such trials)" in err
    assert not data.exists()  # nothing written when the input is bad
    proc = avtk("prepare-voxceleb", "seed", "--vox1", seed_root, "--allow-missing", data)
    assert (f"{otrials}: dropped 1 of 3 trials whose wav is not in {olist} "
            "(1 distinct paths; first id10009/v9/00001.wav at line 3)") in proc.stderr
    assert len((data / "vox1_O" / "trials").read_text().splitlines()) == 2
    validate(data / "vox1_O")

    os.remove(train)
    assert f"{train} not found: --vox2 must be the seed's VoxCeleb2 root" in \
        fails("prepare-voxceleb", "seed", "--vox2", seed_root, data)
    assert "--vox2 " + str(tmp_path / "nowhere") + ": no such directory" in \
        fails("prepare-voxceleb", "seed", "--vox2", tmp_path / "nowhere", data)
    assert "nothing to prepare: pass --vox2" in fails("prepare-voxceleb", "seed", data)
    assert "--vox2-dev is an option of the official layout" in \
        fails("prepare-voxceleb", "seed", "--vox2-dev", seed_root, data)
    for f in (olist, otrials):
        f.unlink()
    assert "no {O,E,H}_list.txt with {O,E,H}_trials.txt in" in \
        fails("prepare-voxceleb", "seed", "--vox1", seed_root, data)


# -------------------------------------------------------------------------------------------- official layout


def _link_tree(src_root, dst_root, rels):
    for rel in rels:
        (dst_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst_root / rel).symlink_to(src_root / rel)


def test_official_layout(corpus, tmp_path):
    media = pytest.importorskip("avtk.io.media")
    pytest.importorskip("av")
    c = corpus / "corpus"
    test_wavs = [line.split()[0] for line in (c / "O_list.txt").read_text().splitlines()]
    train_wavs = [line.split()[1] for line in (c / "train_all.txt").read_text().splitlines()]
    vox1 = tmp_path / "vox1"
    _link_tree(c / "wav", vox1 / "wav", test_wavs + train_wavs)  # VoxCeleb1 dev and test wavs in one wav/
    (vox1 / "wav" / "id10001" / ".DS_Store").write_text("")  # not an utterance: ignored
    _link_tree(c / "frame_align", vox1 / "frame_align", [w[:-4] for w in test_wavs[1:]])
    trials_dir = tmp_path / "lists"
    trials_dir.mkdir()
    shutil.copy(c / "O_trials.txt", trials_dir / "veri_test2.txt")
    (trials_dir / "list_test_hard.txt").write_text("1 x/y/z.wav x/y/w.wav\n")  # only the uncleaned H list

    vox2 = tmp_path / "vox2_dev"
    for i, rel in enumerate(train_wavs[:4]):
        wave, sr = soundfile.read(c / "wav" / rel, dtype="float32")
        media.write_audio(vox2 / "aac" / (rel[:-4] + ".m4a"), wave, sr)
        if i < 3:
            frames = np.full((4, 32, 32, 3), 40 * i, np.uint8)
            media.write_video(vox2 / "mp4" / (rel[:-4] + ".mp4"), frames, wave=wave, sample_rate=sr)

    data = tmp_path / "data"
    proc = avtk("prepare-voxceleb", "official", "--vox2-dev", vox2, "--vox1", vox1, "--trials-dir", trials_dir, data)
    err = proc.stderr
    assert sorted(os.listdir(data)) == ["vox1", "vox1_O", "vox2_dev"]
    assert "found list_test_hard.txt but not the cleaned list_test_hard2.txt" in err
    assert "1 of 4 utterances have no mp4" in err and "ignored 1 entries" in err
    assert "13 of 20 utterances have no face frame directory" in err
    assert "data/vox2_dev: 4 utterances, 1 speakers, 3 with video" in err
    assert "data/vox1: 20 utterances, 5 speakers, 7 with face frames" in err
    assert "data/vox1_O: 8 utterances, 2 speakers, 16 trials, 7 with face frames" in err

    dev = data / "vox2_dev"
    wav = table(dev / "wav.scp")
    utts = sorted(r[:-4].replace("/", "-") for r in train_wavs[:4])
    assert list(wav) == utts and all(p.endswith(".m4a") for p in wav.values())
    assert list(table(dev / "video.scp")) == sorted(utts[:3])
    assert table(dev / "video.scp")[utts[0]] == os.path.realpath(vox2 / "mp4" / (train_wavs[0][:-4] + ".mp4"))
    assert not (dev / "utt2dur").exists() and not (dev / "frames.scp").exists()
    assert table(data / "vox1" / "utt2spk") == {**table(corpus / "data" / "train" / "utt2spk"),
                                                **table(corpus / "data" / "test" / "utt2spk")}
    assert (data / "vox1_O" / "trials").read_text() == (corpus / "data" / "test" / "trials").read_text()
    assert list(table(data / "vox1_O" / "wav.scp")) == keys(corpus / "data" / "test" / "wav.scp")
    assert table(data / "vox1_O" / "wav.scp")[keys(corpus / "data" / "test" / "wav.scp")[0]] == \
        table(corpus / "data" / "test" / "wav.scp")[keys(corpus / "data" / "test" / "wav.scp")[0]]
    validate(dev, data / "vox1", data / "vox1_O")

    # the m4a entries are read by compute-fbank (in process, through PyAV), at the wav's length
    avtk("compute-fbank", f"scp:{dev}/wav.scp", f"ark,t:{tmp_path}/fbank.txt")
    feats = dict(kaldiio.load_ark(str(tmp_path / "fbank.txt")))
    assert sorted(feats) == utts
    durs = table(corpus / "data" / "train" / "utt2dur")
    for u in utts:
        assert feats[u].shape[1] == 80 and abs(feats[u].shape[0] - float(durs[u]) * 100) <= 3


def test_official_layout_bad_input(corpus, tmp_path):
    c = corpus / "corpus"
    test_wavs = [line.split()[0] for line in (c / "O_list.txt").read_text().splitlines()]
    vox1 = tmp_path / "vox1"
    _link_tree(c / "wav", vox1 / "wav", test_wavs[1:])  # one wav of the trials is missing
    trials = vox1 / "veri_test2.txt"  # the default --trials-dir is --vox1
    shutil.copy(c / "O_trials.txt", trials)
    lines = trials.read_text().splitlines()
    bad = [i for i, line in enumerate(lines, 1) if test_wavs[0] in line.split()]
    data = tmp_path / "data"
    err = fails("prepare-voxceleb", "official", "--vox1", vox1, data)
    assert f"{trials}:{bad[0]}: {test_wavs[0]} does not exist under {vox1}/wav (--allow-missing drops" in err
    proc = avtk("prepare-voxceleb", "official", "--vox1", vox1, "--allow-missing", data)
    assert (f"{trials}: dropped {len(bad)} of {len(lines)} trials whose wav does not exist under {vox1}/wav "
            "(1 distinct") in proc.stderr
    assert len((data / "vox1_O" / "trials").read_text().splitlines()) == len(lines) - len(bad)
    validate(data / "vox1", data / "vox1_O")

    trials.write_text("id10001/a/00001.wav id10001/b/00001.wav target\n")
    assert f"{trials}:1: expected VoxCeleb trial lines `1|0 <wav path> <wav path>`" in \
        fails("prepare-voxceleb", "official", "--vox1", vox1, data)
    trials.unlink()
    # two paths that give one utterance id
    (vox1 / "wav" / "id10001-x" / "y").mkdir(parents=True)
    (vox1 / "wav" / "id10001" / "x-y").mkdir(parents=True)
    (vox1 / "wav" / "id10001-x" / "y" / "00001.wav").write_bytes(b"")
    (vox1 / "wav" / "id10001" / "x-y" / "00001.wav").write_bytes(b"")
    assert "id10001/x-y/00001.wav and id10001-x/y/00001.wav give the same utterance id 'id10001-x-y-00001'" in \
        fails("prepare-voxceleb", "official", "--vox1", vox1, data)
    assert f"{tmp_path}/aac not found: --vox2-dev must be the unpacked VoxCeleb2 dev set" in \
        fails("prepare-voxceleb", "official", "--vox2-dev", tmp_path, data)
    assert f"{vox1}/wav/wav not found: --vox1 must be the VoxCeleb1 root" in \
        fails("prepare-voxceleb", "official", "--vox1", vox1 / "wav", data)
    assert "--vox2 is an option of the seed layout" in fails("prepare-voxceleb", "official", "--vox2", vox1, data)


# ------------------------------------------------------------------------------------------------ library


def test_library_functions(tmp_path):
    lst = tmp_path / "O_list.txt"
    lst.write_text("b/v/2.wav 1.5\na/v/1.wav 2\n\n")
    utts = read_seed_list(lst, tmp_path / "wav", "eval")
    assert [(u.utt, u.spk, u.stem, u.dur) for u in utts] == [("a-v-1", "a", "a/v/1", "2"),
                                                             ("b-v-2", "b", "b/v/2", "1.5")]
    assert utts[0].audio == str(tmp_path / "wav" / "a" / "v" / "1.wav")
    lst.write_text("/abs/v/1.wav 2\n")
    with pytest.raises(AvtkError, match=r"O_list.txt:1: '/abs/v/1.wav' is not a path relative to"):
        read_seed_list(lst, tmp_path / "wav", "eval")

    for rel in ("s2/v1/2.m4a", "s1/v2/1.m4a", "s1/v1/2.m4a", "s1/v1/1.m4a", "s1/v1/1.txt", "s1/top.m4a"):
        (tmp_path / "aac" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "aac" / rel).write_bytes(b"")
    paths, ignored = scan_tree(tmp_path / "aac", ".m4a")
    assert paths == ["s1/v1/1.m4a", "s1/v1/2.m4a", "s1/v2/1.m4a", "s2/v1/2.m4a"] and ignored == 2
    (tmp_path / "fa" / "s1" / "v1" / "1").mkdir(parents=True)
    found = find_existing(tmp_path / "fa", ["s1/v1/1", "s1/v1/2", "s9/v1/1"], directory=True)
    assert "s1/v1/1" in found and len(found) == 1 and found.path("s1/v1/1") == str(tmp_path / "fa/s1/v1/1")


def test_seed_root_with_spaces_and_a_repeated_trial(tmp_path):
    """A root path with spaces is fine (a wav.scp path is the rest of its line); a repeated trial is the error
    `score` would give, here already."""
    root = tmp_path / "my corpus" / "vox1"
    root.mkdir(parents=True)
    (root / "O_list.txt").write_text("id10001/v1/00001.wav 4.1\nid10001/v2/00001.wav 5.2\nid10002/v3/00001.wav 6.3\n")
    trials = root / "O_trials.txt"
    trials.write_text("1 id10001/v1/00001.wav id10001/v2/00001.wav\n0 id10001/v1/00001.wav id10002/v3/00001.wav\n")
    data = tmp_path / "data"
    avtk("prepare-voxceleb", "seed", "--vox1", root, data)
    wav = (data / "vox1_O" / "wav.scp").read_text().splitlines()
    assert wav[0] == f"id10001-v1-00001 {os.path.realpath(root)}/wav/id10001/v1/00001.wav"
    validate(data / "vox1_O")
    shutil.rmtree(data)
    trials.write_text(trials.read_text() + "1 id10001/v1/00001.wav id10001/v2/00001.wav\n")
    assert f"{trials}:3: duplicate trial id10001/v1/00001.wav id10001/v2/00001.wav (first at line 1)" in \
        fails("prepare-voxceleb", "seed", "--vox1", root, data)
    assert not data.exists()
