"""Empty embeddings ((0,) vectors, (0, dim) matrices) are refused by the one rule of every embedding table
(avtk.io.ark.load_vectors): one ERROR line naming the table and the utterance, exit 1, no output; and
extract-embeddings --seed-crops skips a 0-row feature matrix as it does without crops."""
import kaldiio
import numpy as np
import pytest

from avtk import cli
from conftest import SMALL_SPEAKER, avtk, write_model

DIM = 8
SPEAKERS = {"a": ["a1", "a2"], "b": ["b1", "b2"], "c": ["c1", "c2"]}
UTTS = [u for us in SPEAKERS.values() for u in us]


def write_table(path, table):
    """A binary ark/scp written by kaldiio as given (a (0, dim) matrix stays (0, dim)); its scp rspecifier."""
    kaldiio.save_ark(f"{path}.ark", table, scp=f"{path}.scp")
    return f"scp:{path}.scp"


def good_vectors(seed=0):
    rng = np.random.default_rng(seed)
    return {u: rng.normal(size=DIM).astype(np.float32) for u in UTTS}


def run(capsys, *args):
    """(exit status, stderr) of `avtk ARGS` through avtk.cli.main, in this process."""
    rc = cli.main([str(a) for a in args])
    return rc, capsys.readouterr().err


def one_error(capsys, command, *args):
    """The one ERROR line (after its tag) of `avtk COMMAND ARGS`, which must exit 1 without a traceback."""
    rc, err = run(capsys, command, *args)
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert rc == 1 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0].split(f" ERROR [avtk {command}] ", 1)[1]


def empty_message(spec, utt, shape):
    return (f"{spec}: utterance {utt!r}: an empty embedding of shape {shape} (an embedding is a vector of "
            "dimension >= 1, or a crop set (1+K, dim) of >= 1 row)")


@pytest.fixture
def files(tmp_path):
    """A good table, tables whose every entry is empty ((0, DIM) matrices: the per-entry reader; (0,) vectors:
    the bulk reader), one with a single empty entry among good vectors, trials, spk2utt and a data dir."""
    good = good_vectors()
    one_empty = dict(good_vectors(1), b2=np.zeros((0, DIM), np.float32))
    (tmp_path / "trials").write_text("a1 b1 nontarget\na1 a2 target\nc1 c2 target\nb2 c1 nontarget\n")
    (tmp_path / "spk2utt").write_text("".join(f"{s} {' '.join(us)}\n" for s, us in SPEAKERS.items()))
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text("".join(f"{u} /nowhere/{u}.wav\n" for u in UTTS))
    (data / "utt2spk").write_text("".join(f"{u} {s}\n" for s, us in SPEAKERS.items() for u in us))
    (data / "spk2utt").write_text((tmp_path / "spk2utt").read_text())
    return {
        "dir": tmp_path, "data": data,
        "good": write_table(tmp_path / "good", good),
        "rows0": write_table(tmp_path / "rows0", {u: np.zeros((0, DIM), np.float32) for u in UTTS}),
        "dim0": write_table(tmp_path / "dim0", {u: np.zeros(0, np.float32) for u in UTTS}),
        "one_empty": write_table(tmp_path / "one_empty", one_empty),
    }


@pytest.mark.parametrize("table,shape", [("rows0", (0, DIM)), ("dim0", (0,))])
def test_score_enroll_identify_cleanse_refuse_a_table_of_empty_embeddings(files, capsys, table, shape):
    d, spec = files["dir"], files[table]
    message = empty_message(spec, "a1", shape)
    assert one_error(capsys, "score", "--trials", d / "trials", spec, d / "scores") == message
    assert one_error(capsys, "enroll", "--spk2utt", d / "spk2utt", spec, f"ark,scp:{d}/g.ark,{d}/g.scp") == message
    assert one_error(capsys, "cleanse", "--audio-emb", spec, "--out-list", d / "list.txt", files["data"]) == message
    assert run(capsys, "enroll", "--spk2utt", d / "spk2utt", files["good"], f"ark,scp:{d}/g.ark,{d}/g.scp")[0] == 0
    assert one_error(capsys, "identify", f"scp:{d}/g.scp", spec, d / "id.txt") == message
    # an empty gallery model (a gallery is an embedding table too)
    write_table(d / "g0", {s: np.zeros(0, np.float32) for s in SPEAKERS})
    assert one_error(capsys, "identify", f"scp:{d}/g0.scp", files["good"], d / "id.txt") == \
        empty_message(f"scp:{d}/g0.scp", "a", (0,))
    for out in ("scores", "g0.spk2utt", "id.txt", "list.txt"):
        assert not (d / out).exists(), out


def test_one_empty_embedding_among_good_ones_is_refused_in_every_statistics_table(files, capsys):
    """A mean, a cohort or an enrollment mean over a table with one (0, dim) entry was computed from the
    other entries, exit 0."""
    d, bad, good = files["dir"], files["one_empty"], files["good"]
    message = empty_message(bad, "b2", (0, DIM))
    assert one_error(capsys, "score", "--trials", d / "trials", "--mean-from", bad, good, d / "scores") == message
    assert one_error(capsys, "score", "--trials", d / "trials", "--cohort", bad, "--top-n", "3", good,
                     d / "scores") == message
    assert one_error(capsys, "score", "--trials", d / "trials", bad, d / "scores") == message
    assert not (d / "scores").exists()
    assert one_error(capsys, "enroll", "--spk2utt", d / "spk2utt", "--mean-from", bad, good,
                     f"ark,scp:{d}/g.ark,{d}/g.scp") == message
    assert not (d / "g.scp").exists() and not (d / "g.ark").exists()
    assert run(capsys, "enroll", "--spk2utt", d / "spk2utt", good, f"ark,scp:{d}/g.ark,{d}/g.scp")[0] == 0
    assert one_error(capsys, "identify", "--cohort", bad, "--top-n", "3", f"scp:{d}/g.scp", good,
                     d / "id.txt") == message
    assert not (d / "id.txt").exists()


def test_cleanse_refuses_an_empty_face_embedding_instead_of_calling_it_no_face(files, capsys):
    d = files["dir"]
    face = write_table(d / "face", dict(good_vectors(2), c1=np.zeros((0, 5), np.float32)))
    assert one_error(capsys, "cleanse", "--audio-emb", files["good"], "--face-emb", face, "--out-list",
                     d / "list.txt", "--report", d / "report.json", files["data"]) == \
        empty_message(face, "c1", (0, 5))
    assert not (d / "list.txt").exists() and not (d / "report.json").exists()


def test_good_tables_still_score_enroll_and_identify(files, capsys):
    """The rule refuses only empty entries: the same commands on good tables (vectors and crop sets) work,
    and the scores are the cosines computed here."""
    d, good = files["dir"], files["good"]
    assert run(capsys, "score", "--trials", d / "trials", "--mean-from", good, "--cohort", good, "--top-n", "3",
               good, d / "scores")[0] == 0
    assert len((d / "scores").read_text().splitlines()) == 4
    assert run(capsys, "score", "--trials", d / "trials", good, d / "plain")[0] == 0
    vectors = good_vectors()
    for line in (d / "plain").read_text().splitlines():
        e, t, score, _ = line.split()
        x, y = vectors[e], vectors[t]
        assert float(score) == pytest.approx(x @ y / np.linalg.norm(x) / np.linalg.norm(y), abs=1e-4)
    crops = write_table(d / "crops", {u: np.stack([v, v + 1, v - 1]) for u, v in vectors.items()})
    assert run(capsys, "score", "--trials", d / "trials", crops, d / "crop_scores")[0] == 0
    assert run(capsys, "enroll", "--spk2utt", d / "spk2utt", "--mean-from", good, good,
               f"ark,scp:{d}/g.ark,{d}/g.scp")[0] == 0
    assert run(capsys, "identify", "--cohort", good, "--top-n", "3", f"scp:{d}/g.scp", good, d / "id.txt")[0] == 0
    assert len((d / "id.txt").read_text().splitlines()) == len(UTTS)


def test_seed_crops_skip_a_0_row_feature_matrix_as_without_crops(tmp_path):
    """--seed-crops on a 0-row matrix gave a numpy traceback (wrap-padding an empty axis); it is skipped with
    the WARNING and the .skipped list of the run without crops, and the other utterances are embedded."""
    model = write_model(tmp_path / "model.pt", SMALL_SPEAKER)
    rng = np.random.default_rng(0)
    feats = {"u1": rng.normal(size=(120, 80)).astype(np.float32), "u2": np.zeros((0, 80), np.float32),
             "u3": rng.normal(size=(90, 80)).astype(np.float32)}
    spec = write_table(tmp_path / "feats", feats)
    for name, extra in (("plain", []), ("crops", ["--seed-crops", "2", "--crop-seconds", "0.5"])):
        proc = avtk("extract-embeddings", "--model", model, *extra, spec,
                    f"ark,scp:{tmp_path}/{name}.ark,{tmp_path}/{name}.scp", check=False)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        warnings = [line for line in proc.stderr.splitlines() if " WARNING " in line]
        assert len(warnings) == 1 and warnings[0].endswith(
            f"skipped 1 of 3 utterances that give no frames (ids in {tmp_path}/{name}.skipped)"), proc.stderr
        assert (tmp_path / f"{name}.skipped").read_text() == "u2 no_frames\n"
        out = dict(kaldiio.load_scp(f"{tmp_path}/{name}.scp"))
        assert sorted(out) == ["u1", "u3"]
        assert out["u1"].shape == ((16,) if name == "plain" else (3, 16))
