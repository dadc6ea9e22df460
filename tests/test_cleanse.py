"""avtk cleanse: both steps on synthetic embeddings with injected mislabels, measured against the truth."""
import json
import math

import kaldiio
import numpy as np
import pytest

from avtk.cleanse import Modality, cleanse
from conftest import avtk, run

NUM_SPK, VIDEOS, PER_VIDEO = 40, 3, 4
NOISE_RATE = 0.05


def _make_corpus(root):
    """40 speakers x 12 utterances; audio (64-dim) and face (48-dim) embeddings = identity vector + video
    offset + utterance noise + a common offset. 5 % of the utterances are another speaker's, filed under a
    wrong one (id and label of the wrong one, embeddings of the true one). Some clean utterances have a
    badly degraded audio or face embedding (so one modality alone would misjudge them); 10 % of the
    utterances, mislabelled ones among them, have no face embedding."""
    rng = np.random.default_rng(1234)
    spks = [f"id{10001 + i}" for i in range(NUM_SPK)]
    voice = {s: rng.normal(size=64) for s in spks}
    face = {s: rng.normal(size=48) for s in spks}
    common_a, common_f = rng.normal(size=64) * 2, rng.normal(size=48) * 2
    slots = [(s, v, k) for s in spks for v in range(VIDEOS) for k in range(PER_VIDEO)]
    n = len(slots)
    bad = set(rng.choice(n, int(round(NOISE_RATE * n)), replace=False).tolist())
    degraded = rng.choice(sorted(set(range(n)) - bad), 24, replace=False).tolist()
    bad_audio, bad_face = set(degraded[:12]), set(degraded[12:])
    utts, truth, audio, faces = {}, {}, {}, {}
    video_off = {}
    for i, (label, v, k) in enumerate(slots):
        true = label
        if i in bad:
            true = spks[(spks.index(label) + int(rng.integers(1, NUM_SPK))) % NUM_SPK]
        video = f"v{v}{'x-y' if v == 2 else 'abc'}{i % 7}"  # a video id with '-' in it
        utt = f"{label}-{video}-{k + 1:05d}"
        key = (true, video)
        if key not in video_off:
            video_off[key] = (rng.normal(size=64) * 0.5, rng.normal(size=48) * 0.5)
        va, vf = video_off[key]
        audio[utt] = voice[true] + va + rng.normal(size=64) * (3.0 if i in bad_audio else 1.2) + common_a
        faces[utt] = face[true] + vf + rng.normal(size=48) * (3.0 if i in bad_face else 1.2) + common_f
        utts[utt] = label
        if true != label:
            truth[utt] = true
    order = sorted(utts)
    no_face = set(rng.choice(order, 48, replace=False).tolist()) | set(sorted(truth)[:3])
    data = root / "data" / "train"
    data.mkdir(parents=True)
    corpus = root / "corpus"

    def write(name, lines):
        (data / name).write_text("".join(f"{line}\n" for line in lines))

    def rel(utt):
        spk, rest = utt.split("-", 1)
        video, name = rest.rsplit("-", 1)
        return f"{spk}/{video}/{name}.wav"

    write("wav.scp", [f"{u} {corpus / rel(u)}" for u in order])
    write("utt2spk", [f"{u} {utts[u]}" for u in order])
    write("spk2utt", [f"{s} {' '.join(u for u in order if utts[u] == s)}" for s in spks])
    write("utt2dur", [f"{u} {2 + (i % 5) * 0.5:.2f}" for i, u in enumerate(order)])
    (data / "label_noise.txt").write_text("".join(f"{u} {utts[u]} {truth[u]}\n" for u in sorted(truth)))
    emb = root / "emb"
    emb.mkdir()
    kaldiio.save_ark(str(emb / "audio.ark"), {u: audio[u].astype(np.float32) for u in order},
                     scp=str(emb / "audio.scp"))
    face_items = {}
    for j, u in enumerate(order):
        if u in no_face:
            continue
        if j % 3 == 0:  # per-frame rows, as a face extractor without pooling writes them
            rows = faces[u] + rng.normal(size=(4, 48)) * 0.3
            face_items[u] = rows.astype(np.float32)
        else:
            face_items[u] = faces[u].astype(np.float32)
    kaldiio.save_ark(str(emb / "face.ark"), face_items, scp=str(emb / "face.scp"))
    return {
        "data": data, "corpus": corpus, "emb": emb, "truth": set(truth), "no_face": no_face,
        "order": order, "utt2spk": utts, "rel": {u: rel(u) for u in order},
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _make_corpus(tmp_path_factory.mktemp("cleanse"))


def _cleanse(c, out, *extra, check=True):
    return avtk(
        "cleanse", "--audio-emb", f"scp:{c['emb'] / 'audio.scp'}", "--face-emb", f"scp:{c['emb'] / 'face.scp'}",
        "--out-list", out / "train_all_clean.txt", "--out-dir", out / "train_clean", "--report", out / "report.json",
        "--truth", c["data"] / "label_noise.txt", "--seed", "7", *extra, c["data"], check=check,
    )


@pytest.fixture(scope="module")
def cleansed(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    proc = _cleanse(corpus, out, "--hist-plot", out / "hist.png")
    return out, proc


def _read_list(path):
    return [line.split() for line in path.read_text().splitlines()]


def test_precision_and_recall_against_injected_truth(corpus, cleansed):
    out, proc = cleansed
    report = json.loads((out / "report.json").read_text())
    truth = report["truth"]
    assert truth["mislabelled"] == len(corpus["truth"]) == 24
    assert truth["precision"] >= 0.9 and truth["recall"] >= 0.9, truth
    assert "precision" in proc.stderr and "recall" in proc.stderr
    # the flags in the list are the ones measured
    flagged = {u for u, f in zip(corpus["order"], _read_list(out / "train_all_clean.txt")) if f[5] == "noisy"}
    tp = len(flagged & corpus["truth"])
    assert tp / len(flagged) == pytest.approx(truth["precision"], abs=1e-6)
    assert tp / len(corpus["truth"]) == pytest.approx(truth["recall"], abs=1e-6)
    # both steps are visible: peculiar is a superset of noisy, the classifier and thresholds are reported
    assert report["peculiar"] >= report["noisy"] == len(flagged)
    assert set(report["classifiers"]) == {"audio", "audio_visual"}
    assert report["thresholds"]["audio"]["robust_sd"] > 0 and "visual" in report["thresholds"]
    assert report["synthetic"]["recall"] >= 0.9 and report["synthetic"]["false_flag_rate"] <= 0.1


def test_seed_format_list(corpus, cleansed):
    out, _ = cleansed
    rows = _read_list(out / "train_all_clean.txt")
    assert len(rows) == len(corpus["order"])
    durs = dict(line.split() for line in (corpus["data"] / "utt2dur").read_text().splitlines())
    for utt, fields in zip(corpus["order"], rows):
        assert len(fields) == 6
        spk, rel, dur, a, v, flag = fields
        assert spk == corpus["utt2spk"][utt] and rel == corpus["rel"][utt]
        assert float(dur) == float(durs[utt])
        assert -1 <= float(a) <= 1
        assert flag in ("clean", "noisy")
        if utt in corpus["no_face"]:
            assert v == "nan"
        else:
            assert -1 <= float(v) <= 1
    # mislabelled utterances sit far below the clean ones in both modalities
    a = np.array([float(r[3]) for r in rows])
    is_bad = np.array([u in corpus["truth"] for u in corpus["order"]])
    assert np.median(a[is_bad]) < 0.3 < np.median(a[~is_bad])


def test_missing_faces_are_judged_on_audio_and_counted(corpus, cleansed):
    out, _ = cleansed
    report = json.loads((out / "report.json").read_text())
    assert report["missing"] == {"audio": 0, "visual": len(corpus["no_face"])}
    assert report["audio_only"] >= len(corpus["no_face"])
    rows = dict(zip(corpus["order"], _read_list(out / "train_all_clean.txt")))
    faceless_bad = corpus["truth"] & corpus["no_face"]
    assert len(faceless_bad) >= 3
    assert sum(rows[u][5] == "noisy" for u in faceless_bad) >= len(faceless_bad) - 1


def test_cleaned_data_dir_validates(corpus, cleansed):
    out, _ = cleansed
    run(["validate_data_dir.sh", "--no-feats", out / "train_clean"])
    kept = [line.split()[0] for line in (out / "train_clean" / "utt2spk").read_text().splitlines()]
    rows = dict(zip(corpus["order"], _read_list(out / "train_all_clean.txt")))
    assert kept == sorted(u for u in corpus["order"] if rows[u][5] == "clean")
    assert (out / "train_clean" / "utt2dur").is_file() and (out / "train_clean" / "wav.scp").is_file()


def test_hist_plot_is_a_png(cleansed):
    out, _ = cleansed
    assert (out / "hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_outputs_and_corpus_root(corpus, cleansed, tmp_path):
    out, _ = cleansed
    _cleanse(corpus, tmp_path, "--corpus-root", corpus["corpus"])
    assert (tmp_path / "train_all_clean.txt").read_bytes() == (out / "train_all_clean.txt").read_bytes()
    assert (tmp_path / "report.json").read_bytes() == (out / "report.json").read_bytes()
    for name in ("utt2spk", "spk2utt", "wav.scp", "utt2dur"):
        assert (tmp_path / "train_clean" / name).read_bytes() == (out / "train_clean" / name).read_bytes()


def test_missing_audio_embedding_is_an_error_naming_it(corpus, tmp_path):
    victim = corpus["order"][17]
    scp = corpus["emb"] / "audio.scp"
    partial = tmp_path / "audio.scp"
    partial.write_text("".join(line + "\n" for line in scp.read_text().splitlines()
                               if not line.startswith(victim + " ")))
    proc = avtk("cleanse", "--audio-emb", f"scp:{partial}", "--out-list", tmp_path / "list.txt",
                "--report", tmp_path / "report.json", corpus["data"], check=False)
    assert proc.returncode == 1
    assert f"no embedding for utterance '{victim}'" in proc.stderr and str(partial) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "list.txt").exists() and not (tmp_path / "report.json").exists()


def _cleanse_error(corpus, tmp_path, table):
    """Run cleanse with `table` ({utt: array}) as --audio-emb; (rspecifier, its one ERROR line after the tag)."""
    kaldiio.save_ark(str(tmp_path / "a.ark"), table, scp=str(tmp_path / "a.scp"))
    spec = f"scp:{tmp_path / 'a.scp'}"
    proc = avtk("cleanse", "--audio-emb", spec, "--out-list", tmp_path / "list.txt",
                "--report", tmp_path / "report.json", corpus["data"], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "list.txt").exists() and not (tmp_path / "report.json").exists()
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1
    return spec, errors[0].split(" ERROR [avtk cleanse] ")[1]


def test_identical_embeddings_are_an_error_naming_the_table(corpus, tmp_path):
    """Identical embeddings are zero vectors once the mean is subtracted: no cosine (every audio_sim was 0.0000
    and robust_sd fell back to 1.0, exit 0); the rule of `avtk score --subtract-mean`."""
    order = corpus["order"]
    spec, error = _cleanse_error(corpus, tmp_path, {u: np.arange(1, 9, dtype=np.float32) for u in order})
    assert error.startswith(f"{spec}: embedding of utterance '{order[0]}' is all zeros once the mean is subtracted "
                            f"(the mean removed it: identical embeddings; no direction, so no cosine) "
                            f"({len(order)} utterances in all: '{order[0]}', '{order[1]}', ")


def test_feature_matrices_given_as_audio_embeddings_are_an_error(corpus, tmp_path):
    """A feature table (frame matrices) as --audio-emb gave a list computed from them, exit 0; the audio
    table holds one vector per utterance (face tables may hold per-frame rows)."""
    order = corpus["order"]
    rng = np.random.default_rng(0)
    spec, error = _cleanse_error(corpus, tmp_path, {u: rng.normal(size=(20 + i % 3, 8)).astype(np.float32)
                                                    for i, u in enumerate(order)})
    assert error == (f"{spec}: utterance '{order[0]}': a matrix of shape (20, 8) where an embedding vector is "
                     "expected (a feature table given as embeddings?)")


def test_wav_outside_corpus_root_is_an_error(corpus, tmp_path):
    proc = avtk("cleanse", "--audio-emb", f"scp:{corpus['emb'] / 'audio.scp'}", "--corpus-root", tmp_path,
                "--out-list", tmp_path / "list.txt", corpus["data"], check=False)
    assert proc.returncode == 1 and "is not under --corpus-root" in proc.stderr
    assert corpus["order"][0] in proc.stderr


def test_robust_leave_one_out_similarity_matches_brute_force():
    rng = np.random.default_rng(0)
    X = np.repeat(rng.normal(size=(5, 8)) * 2, 6, axis=0) + rng.normal(size=(30, 8))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    spk = np.repeat(np.arange(5), 6)
    mod = Modality("audio", X, spk, 5)
    for i in range(30):
        others = [j for j in range(30) if spk[j] == spk[i] and j != i]
        c = sum(mod.weights[j] * X[j] for j in others)
        assert mod.own_loo[i] == pytest.approx(X[i] @ c / np.linalg.norm(c), abs=1e-9)
    # an outlier gets a small weight, typical utterances nearly 1 (exactly 1 above the median)
    X[0] = -X[1:6].mean(0) / np.linalg.norm(X[1:6].mean(0))
    mod = Modality("audio", X, spk, 5)
    assert mod.weights[0] < 0.1 and np.mean(mod.weights[1:] > 0.8) > 0.8 and np.sum(mod.weights == 1) >= 15
    # nearest other speaker, as filed and as if relabelled
    own, other = mod.score(np.arange(30), spk)
    C = np.stack([X[spk == s].T @ mod.weights[spk == s] for s in range(5)])
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    sims = X @ C.T
    for i in range(30):
        assert other[i] == pytest.approx(max(sims[i, s] for s in range(5) if s != spk[i]), abs=1e-9)
    own_r, other_r = mod.score([7], [3])  # utterance 7 (speaker 1) filed under speaker 3
    assert own_r[0] == pytest.approx(sims[7, 3], abs=1e-9)
    assert other_r[0] == pytest.approx(max(mod.own_loo[7], sims[7, 0], sims[7, 2], sims[7, 4]), abs=1e-9)


def test_singleton_speakers_are_not_judged():
    rng = np.random.default_rng(3)
    utts = [f"u{i:03d}" for i in range(41)]
    utt2spk = {u: f"s{i // 10}" for i, u in enumerate(utts)}  # s4 has one utterance
    centres = rng.normal(size=(5, 16)) * 3
    audio = {u: centres[int(utt2spk[u][1:])] + rng.normal(size=16) for u in utts}
    result = cleanse(utts, utt2spk, audio, seed=1)
    assert math.isnan(result.audio_sim[40]) and not result.noisy[40]
    assert result.stats["not_judged"] == 1 and result.stats["missing"]["visual"] == 41


def test_benjamini_hochberg_threshold():
    from avtk.cleanse import benjamini_hochberg

    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, np.nan])
    # k/m * 0.05 with m = 8 tested: 0.00625, 0.0125, 0.01875, 0.025, ...; the largest k with p_(k) <= is 2
    assert benjamini_hochberg(p, 0.05).tolist() == [True, True] + [False] * 7
    # at 0.1: 0.074 <= 7/8 * 0.1, so the first 7 go, 0.039 (above 3/8 * 0.1) included: the step-up rule
    assert benjamini_hochberg(p, 0.1).tolist() == [True] * 7 + [False, False]
    assert not benjamini_hochberg(np.full(3, np.nan), 0.05).any()


def test_joint_step_finds_mislabels_that_the_networks_memorised():
    """Networks trained on the noisy list pull a mislabel towards its wrong label: its own similarity is only
    moderately low and its margin positive, unlike a synthetic mislabel. It is still atypical in BOTH
    modalities, while clean outliers are atypical in one: the joint step separates them."""
    rng = np.random.default_rng(5)
    spks, per = 30, 12
    utts, utt2spk, audio, face, truth = [], {}, {}, {}, set()
    ident_a, ident_v = rng.normal(size=(spks, 32)), rng.normal(size=(spks, 32))
    for s in range(spks):
        for k in range(per):
            u = f"s{s:02d}-u{k:02d}"
            utts.append(u)
            utt2spk[u] = f"s{s:02d}"
            a, v = ident_a[s] + 0.5 * rng.normal(size=32), ident_v[s] + 0.5 * rng.normal(size=32)
            if k == 0:  # mislabelled and memorised: halfway between its true speaker and its label
                t = (s + 1 + int(rng.integers(spks - 1))) % spks
                a = 0.45 * ident_a[t] + 0.55 * ident_a[s] + 0.5 * rng.normal(size=32)
                v = 0.45 * ident_v[t] + 0.55 * ident_v[s] + 0.5 * rng.normal(size=32)
                truth.add(u)
            elif k == 1:  # clean, one modality degraded
                a = a + 1.5 * rng.normal(size=32)
            elif k == 2:
                v = v + 1.5 * rng.normal(size=32)
            audio[u], face[u] = a, v
    from avtk.cleanse import evaluate

    joint = evaluate(cleanse(utts, utt2spk, audio, face), truth)
    assert joint["precision"] >= 0.9 and joint["recall"] >= 0.9, joint
    synthetic = evaluate(cleanse(utts, utt2spk, audio, face, fine="synthetic"), truth)
    assert synthetic["recall"] < 0.5, synthetic  # its synthetic mislabels are far more extreme than these


def test_bulk_table_gives_the_same_rows_and_result_as_the_dict(corpus, tmp_path):
    """The audio table read in bulk (load_vectors: one float32 matrix) and entry by entry (load_table) give
    the same unit rows, and cleanse the same flags and similarities from either; the face table of mixed
    vectors and per-frame matrices falls back to the per-entry reader."""
    from avtk.cleanse import utterance_matrix, utterance_vectors
    from avtk.errors import AvtkError
    from avtk.io.ark import VectorTable, load_table, load_vectors

    utts, spk = corpus["order"], corpus["utt2spk"]
    audio_scp, face_scp = f"scp:{corpus['emb'] / 'audio.scp'}", f"scp:{corpus['emb'] / 'face.scp'}"
    bulk = load_vectors(audio_scp)
    assert isinstance(bulk, VectorTable) and type(load_vectors(face_scp)) is dict
    rows, X = utterance_matrix(bulk, utts, "a", True)
    rows_d, X_d = utterance_matrix(load_table(audio_scp), utts, "a", True)
    assert rows.tolist() == rows_d.tolist() == list(range(len(utts))) and X.dtype == X_d.dtype == np.float32
    np.testing.assert_allclose(X, X_d, atol=1e-7)
    face = utterance_matrix(load_vectors(face_scp), utts, "f", False, frames=True)
    from_matrices = cleanse(utts, spk, (rows, X), face, seed=3)
    from_dicts = cleanse(utts, spk, utterance_vectors(load_table(audio_scp), utts, "a", True),
                         utterance_vectors(load_table(face_scp), utts, "f", False, frames=True), seed=3)
    assert from_matrices.noisy.tolist() == from_dicts.noisy.tolist()
    assert from_matrices.peculiar.tolist() == from_dicts.peculiar.tolist()
    np.testing.assert_allclose(from_matrices.audio_sim, from_dicts.audio_sim, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(from_matrices.visual_other, from_dicts.visual_other, atol=1e-6, equal_nan=True)
    with pytest.raises(AvtkError, match="^a: no embedding for utterance 'nobody'$"):
        utterance_matrix(bulk, utts + ["nobody"], "a", True)
    assert utterance_matrix(bulk, ["nobody", utts[0]], "a", False)[0].tolist() == [1]


def test_embeddings_of_any_finite_scale_keep_their_directions(corpus, tmp_path):
    """cleanse L2-normalises each embedding first (the seed's order): one vector scaled by 1e-25 (its float32
    norm underflows: numpy warnings and a false 'only 0 utterances' error before) or a whole table of subnormal
    values gives the decisions of the table as it is."""
    order = corpus["order"]
    table = dict(kaldiio.load_scp(str(corpus["emb"] / "audio.scp")))
    tables = {"plain": table, "one_tiny": {u: (v * np.float32(1e-25) if u == order[3] else v) for u, v in table.items()},
              "subnormal": {u: (np.asarray(v, np.float64) * 1e-40).astype(np.float32) for u, v in table.items()}}
    lists = {}
    for name, t in tables.items():
        kaldiio.save_ark(str(tmp_path / f"{name}.ark"), t, scp=str(tmp_path / f"{name}.scp"))
        proc = avtk("cleanse", "--audio-emb", f"scp:{tmp_path}/{name}.scp", "--out-list", tmp_path / f"{name}.txt",
                    corpus["data"])
        assert "Warning" not in proc.stderr, proc.stderr
        # the same decisions (subnormal floats keep fewer digits: the scores agree to about 1e-4)
        lists[name] = [(r[0], r[-1]) for r in _read_list(tmp_path / f"{name}.txt")]
    assert lists["plain"] == lists["one_tiny"] == lists["subnormal"] and len(lists["plain"]) == len(order)
