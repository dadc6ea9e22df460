"""avtk score: cosine scoring, AS-Norm against a naive per-trial implementation, and its input errors."""
import math
import re
import statistics

import kaldiio
import numpy as np
import pytest

from avtk.data.trials import Trials, read_trials
from avtk.errors import AvtkError
from avtk.scoring import (
    _select_top, check_duplicate_trials, cohort_stats, make_cohort, score_trials, table_mean, unit,
)
from conftest import avtk


def _unit(v):
    return [x / math.sqrt(sum(y * y for y in v)) for x in v] if any(v) else list(v)


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def naive_scores(table, trials, mean=None, cohort=None, top_n=300):
    """One trial at a time in plain Python (float64): the definition, not the implementation."""
    def prep(v):
        v = [float(x) for x in np.asarray(v, np.float64).reshape(-1)]
        return _unit([x - m for x, m in zip(v, mean)] if mean is not None else v)

    out = []
    for e, t in zip(trials.enroll, trials.test):
        a, b = prep(table[e]), prep(table[t])
        s = _dot(a, b)
        if cohort is not None:
            z = []
            for side in (a, b):
                top = sorted(_dot(side, c) for c in cohort)[-top_n:]
                z.append((s - statistics.mean(top)) / statistics.stdev(top))
            s = (z[0] + z[1]) / 2
        out.append(s)
    return np.array(out)


def naive_cohort(table, mean=None, utt2spk=None):
    """Cohort members as lists: each embedding, or per speaker the mean of its unit utterances (unit)."""
    def prep(v):
        v = [float(x) for x in np.asarray(v, np.float64).reshape(-1, np.shape(v)[-1])[0]]
        return _unit([x - m for x, m in zip(v, mean)] if mean is not None else v)

    if utt2spk is None:
        return [prep(v) for v in table.values()]
    groups = {}
    for utt, v in table.items():
        if utt in utt2spk:
            groups.setdefault(utt2spk[utt], []).append(prep(v))
    return [_unit([sum(col) / len(vs) for col in zip(*vs)]) for _, vs in sorted(groups.items())]


def random_problem(seed, n_utts=30, dim=16, n_cohort=40, n_trials=80, crops=0):
    rng = np.random.default_rng(seed)
    spk = rng.standard_normal((6, dim))
    shape = (dim,) if not crops else (1 + crops, dim)
    table = {f"u{i:03d}": (spk[i % 6] + rng.standard_normal(shape) + 0.5).astype(np.float32)
             for i in range(n_utts)}
    keys = sorted(table)
    pairs = list(dict.fromkeys((keys[a], keys[b]) for a, b in rng.integers(0, n_utts, (n_trials * 2, 2))))
    pairs = pairs[:n_trials]
    trials = Trials([p[0] for p in pairs], [p[1] for p in pairs], rng.integers(0, 2, len(pairs)).astype(np.int8))
    cohort_table = {f"c{j:03d}": (rng.standard_normal(dim) + 0.5).astype(np.float32) for j in range(n_cohort)}
    return table, trials, cohort_table


@pytest.mark.parametrize("top_n", [3, 10, 40, 1000])  # 40 = the whole cohort, 1000 > the cohort: all of it
def test_asnorm_equals_naive_per_trial(top_n):
    table, trials, cohort_table = random_problem(0)
    mean = table_mean(table)
    _, cohort = make_cohort(cohort_table, mean)
    got = score_trials(table, trials, mean, cohort, top_n)
    want = naive_scores(table, trials, mean.astype(np.float64), naive_cohort(cohort_table, mean), top_n)
    # float32 embeddings: the error scales with 1/sigma; the top 3 of 40 give sigma ~0.003 and scores ~100,
    # so that case is held to 1e-5 relative, the others to 1e-5 absolute.
    scale = np.maximum(1, np.abs(want)) if top_n == 3 else 1
    assert np.abs((got - want) / scale).max() < 1e-5
    assert np.abs(score_trials(table, trials, mean, cohort, top_n, workers=1) - got).max() < 1e-6


def test_asnorm_large_cohort_fast_selection_equals_naive():
    # 600 cohort members, top 30: the predicted-threshold selection path (and it must stay exact).
    table, trials, cohort_table = random_problem(1, n_utts=40, dim=24, n_cohort=600, n_trials=60)
    _, cohort = make_cohort(cohort_table)
    got = score_trials(table, trials, cohort=cohort, top_n=30)
    want = naive_scores(table, trials, cohort=naive_cohort(cohort_table), top_n=30)
    assert np.abs(got - want).max() < 1e-5


def test_top_selection_is_exact_whatever_the_threshold():
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((50, 500)).astype(np.float32)
    scores[3, :] = 0.25  # ties throughout a row
    want = np.sort(scores, axis=1)[:, -20:]
    for threshold in (np.full(50, 10, np.float32), np.full(50, -10, np.float32),  # too few / too many
                      np.quantile(scores, 0.9, axis=1).astype(np.float32), None):
        top, _ = _select_top(scores, 20, threshold, cap=80)
        assert np.array_equal(np.sort(top, axis=1), want)
    # the statistics of cohort_stats are those of the top n, with n - 1 in the std
    x, c = unit(rng.standard_normal((7, 8))), unit(rng.standard_normal((60, 8)))
    mu, sd = cohort_stats(x, c, 10)
    top = np.sort(x.astype(np.float64) @ c.T.astype(np.float64), axis=1)[:, -10:]
    assert np.allclose(mu, top.mean(1), atol=1e-6) and np.allclose(sd, top.std(1, ddof=1), atol=1e-6)


def test_asnorm_is_symmetric():
    table, trials, cohort_table = random_problem(3)
    _, cohort = make_cohort(cohort_table)
    swapped = Trials(trials.test, trials.enroll, trials.labels)
    a = score_trials(table, trials, cohort=cohort, top_n=10)
    b = score_trials(table, swapped, cohort=cohort, top_n=10)
    assert np.abs(a - b).max() < 1e-6


def test_cohort_from_utt2spk_averages_unit_utterances():
    table, trials, cohort_table = random_problem(4, n_cohort=30)
    utt2spk = {k: f"s{i % 7}" for i, k in enumerate(sorted(cohort_table)) if i != 5}  # c005 left out
    mean = table_mean(cohort_table)
    names, cohort = make_cohort(cohort_table, mean, utt2spk)
    assert names == [f"s{j}" for j in range(7)]
    want = np.array(naive_cohort(cohort_table, mean, utt2spk))
    assert np.abs(cohort - want).max() < 1e-6
    got = score_trials(table, trials, mean, cohort, 4)
    assert np.abs(got - naive_scores(table, trials, mean, list(want), 4)).max() < 1e-5


def test_crop_sets_use_the_whole_utterance_row_for_cohort_statistics():
    table, trials, cohort_table = random_problem(5, crops=3)
    _, cohort = make_cohort(cohort_table)
    got = score_trials(table, trials, cohort=cohort, top_n=8)
    c = np.array(naive_cohort(cohort_table), np.float64)
    for i, (e, t) in enumerate(zip(trials.enroll, trials.test)):
        a, b = unit(table[e]).astype(np.float64), unit(table[t]).astype(np.float64)
        s = (a[0] @ b[0] + (a[1:] @ b[1:].T).mean()) / 2
        top_e, top_t = np.sort(c @ a[0])[-8:], np.sort(c @ b[0])[-8:]
        want = ((s - top_e.mean()) / top_e.std(ddof=1) + (s - top_t.mean()) / top_t.std(ddof=1)) / 2
        assert abs(got[i] - want) < 1e-5


def test_library_errors():
    table, trials, cohort_table = random_problem(6)
    with pytest.raises(AvtkError, match="top 2 or more"):
        score_trials(table, trials, cohort=make_cohort({"c": cohort_table["c000"]})[1])
    dup = Trials(["a", "b", "a"], ["b", "c", "b"], lineno=[3, 4, 7])
    with pytest.raises(AvtkError, match=r"t: duplicate trial a b at line 7 \(first at line 3\)"):
        check_duplicate_trials(dup, "t")
    check_duplicate_trials(Trials(["a", "b"], ["b", "a"]), "t")  # (b, a) is another trial


# --------------------------------------------------------------------------------------------------
# the command


def write_table(path, table):
    kaldiio.save_ark(str(path.with_suffix(".ark")), table, scp=str(path.with_suffix(".scp")))
    return f"scp:{path.with_suffix('.scp')}"


def write_trials(path, trials):
    path.write_text("".join(f"{e} {t} {'target' if lab else 'nontarget'}\n"
                            for e, t, lab in zip(trials.enroll, trials.test, trials.labels)))
    return path


def read_scores(path):
    lines = [line.split() for line in path.read_text().splitlines()]
    return [(f[0], f[1]) for f in lines], np.array([float(f[2]) for f in lines]), [f[3:] for f in lines]


def test_cli_asnorm_with_utt2spk_cohort_and_mean_from(tmp_path):
    table, trials, cohort_table = random_problem(7, n_cohort=36)
    emb = write_table(tmp_path / "emb", table)
    coh = write_table(tmp_path / "train", cohort_table)
    utt2spk = {k: f"spk{i % 9}" for i, k in enumerate(sorted(cohort_table))}
    (tmp_path / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in sorted(utt2spk.items())))
    tr = write_trials(tmp_path / "trials", trials)
    out = tmp_path / "scores"
    proc = avtk("score", "--trials", tr, "--mean-from", coh, "--cohort", coh, "--cohort-utt2spk",
                tmp_path / "utt2spk", "--top-n", 6, emb, out)
    assert "AS-Norm cohort: 9 speakers" in proc.stderr
    pairs, got, labels = read_scores(out)
    assert pairs == list(zip(trials.enroll, trials.test))  # trials order
    assert labels == [["target" if x else "nontarget"] for x in trials.labels]
    mean = np.mean(np.stack(list(cohort_table.values())), axis=0, dtype=np.float64)
    want = naive_scores(table, trials, mean, naive_cohort(cohort_table, mean, utt2spk), 6)
    assert np.abs((got - want) / np.maximum(1, np.abs(want))).max() < 1e-5  # top 6 of 9: small sigma
    # --mean-from alone: plain cosine after subtracting the other table's mean
    avtk("score", "--trials", tr, "--mean-from", coh, emb, out)
    assert np.abs(read_scores(out)[1] - naive_scores(table, trials, mean)).max() < 2e-6
    # --subtract-mean: the scored table's own mean
    avtk("score", "--trials", tr, "--subtract-mean", emb, out)
    own = np.mean(np.stack(list(table.values())), axis=0, dtype=np.float64)
    assert np.abs(read_scores(out)[1] - naive_scores(table, trials, own)).max() < 2e-6


def test_cli_missing_embeddings(tmp_path):
    table, trials, _ = random_problem(8)
    gone = list(dict.fromkeys(k for pair in zip(trials.enroll, trials.test) for k in pair))[:7]
    emb = write_table(tmp_path / "emb", {k: v for k, v in table.items() if k not in gone})
    tr = write_trials(tmp_path / "trials", trials)
    n_bad = sum(e in gone or t in gone for e, t in zip(trials.enroll, trials.test))
    out = tmp_path / "scores"
    proc = avtk("score", "--trials", tr, emb, out, check=False)
    assert proc.returncode == 1 and not out.exists()
    error = proc.stderr.strip().splitlines()[-1]
    assert f"{tr}: 7 utterances in {n_bad} of {len(trials)} trials have no embedding in {emb}" in error
    assert "(first at line 1)" in error and ", ".join(repr(k) for k in gone[:5]) + ", ..." in error
    assert repr(gone[5]) not in error and "--allow-missing" in error

    proc = avtk("score", "--trials", tr, "--allow-missing", emb, out)
    assert re.search(rf"WARNING .*skipped {n_bad} of {len(trials)} trials: 7 utterances", proc.stderr)
    kept = [(e, t) for e, t in zip(trials.enroll, trials.test) if e not in gone and t not in gone]
    skipped = [f"{e} {t}" for e, t in zip(trials.enroll, trials.test) if e in gone or t in gone]
    assert read_scores(out)[0] == kept
    assert (tmp_path / "scores.missing").read_text().splitlines() == skipped
    # a complete run removes the stale list
    avtk("score", "--trials", tr, "--allow-missing", write_table(tmp_path / "all", table), out)
    assert not (tmp_path / "scores.missing").exists()


def test_cli_input_errors(tmp_path):
    table, trials, cohort_table = random_problem(9, n_trials=10)
    emb = write_table(tmp_path / "emb", table)
    out = tmp_path / "scores"

    def error(*args):
        proc = avtk("score", *args, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr and not out.exists()
        return proc.stderr.strip().splitlines()[-1]

    tr = write_trials(tmp_path / "trials", trials)
    lines = tr.read_text().splitlines()
    dup = tmp_path / "dup"
    dup.write_text("\n".join(lines[:6] + [lines[2]] + lines[6:]) + "\n")
    assert f"{dup}:7: duplicate trial {lines[2].rsplit(' ', 1)[0]} (first at line 3)" in error(
        "--trials", dup, emb, out)

    bad = tmp_path / "bad"
    bad.write_text("\n".join(lines[:4] + ["u001 u002 maybe"] + lines[4:]) + "\n")
    assert f"{bad}:5: malformed trial line" in error("--trials", bad, emb, out)

    nan = dict(table)
    nan["u004"] = nan["u004"].copy()
    nan["u004"][3] = np.nan
    nan_emb = write_table(tmp_path / "nan", nan)
    msg = error("--trials", tr, nan_emb, out)  # the table reader's rule: key, file and line
    assert f"ERROR [avtk score] {nan_emb}: key 'u004' ({nan_emb[4:]}:5): NaN or infinite value at index 3" in msg
    assert f"{nan_emb}: key 'u004' ({nan_emb[4:]}:5): NaN" in error("--trials", tr, "--mean-from", nan_emb, emb,
                                                                    out)

    assert "alternatives" in error("--trials", tr, "--subtract-mean", "--mean-from", emb, emb, out)
    assert "--cohort-utt2spk needs --cohort" in error("--trials", tr, "--cohort-utt2spk", tr, emb, out)
    small = write_table(tmp_path / "small", {k: v[:8] for k, v in cohort_table.items()})
    assert f"{emb}: embeddings have dimension 16 but the cohort has 8" in error("--trials", tr, "--cohort", small,
                                                                                  emb, out)
    proc = avtk("score", "--trials", tr, "--cohort", emb, "--top-n", 1, emb, out, check=False)  # a usage error
    assert proc.returncode == 1 and "argument --top-n: 1 is out of range (must be >= 2)" in proc.stderr
    assert not out.exists()


def test_cli_zero_embedding_and_flat_cohort_are_errors(tmp_path):
    """Degenerate statistics: an all-zero embedding has no cosine (score, cleanse and verify share the rule);
    a cohort whose top-n scores have no spread gives no AS-Norm score (it gave +-5e9)."""
    table, trials, cohort_table = random_problem(9, n_trials=10)
    out = tmp_path / "scores"
    zero = dict(table, u004=np.zeros(16, np.float32))
    proc = avtk("score", "--trials", write_trials(tmp_path / "trials", trials), write_table(tmp_path / "z", zero),
                out, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and not out.exists()
    assert proc.stderr.strip().splitlines()[-1].endswith(
        f"ERROR [avtk score] scp:{tmp_path}/z.scp: embedding of utterance 'u004' is all zeros (no direction, so "
        "no cosine)")
    flat = write_table(tmp_path / "flat", {f"c{i}": cohort_table["c000"] for i in range(8)})  # identical members
    proc = avtk("score", "--trials", tmp_path / "trials", "--cohort", flat, "--top-n", 4,
                write_table(tmp_path / "emb", table), out, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and not out.exists()
    error = proc.stderr.strip().splitlines()[-1]
    assert f"ERROR [avtk score] {flat}: the top cohort scores of utterance '{trials.enroll[0]}' have no spread " \
        "(standard deviation 0 < 1e-05)" in error and "utterances in all)" in error and "duplicate cohort" in error


def test_cli_identical_embeddings_subtract_mean_is_an_error(tmp_path):
    """Identical embeddings become zero vectors once their mean is subtracted: no cosine (it scored 0.000000,
    exit 0); the error names the table and the first utterance of the trials that the mean removed."""
    table, trials, _ = random_problem(10, n_trials=10)
    same = {k: table["u000"] for k in table}
    out = tmp_path / "scores"
    proc = avtk("score", "--trials", write_trials(tmp_path / "trials", trials), "--subtract-mean",
                write_table(tmp_path / "same", same), out, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and not out.exists()
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    first = trials.enroll[0]
    n = len(set(trials.enroll) | set(trials.test))
    assert len(errors) == 1 and errors[0].split(" ERROR ")[1].startswith(
        f"[avtk score] scp:{tmp_path}/same.scp: embedding of utterance '{first}' is all zeros once the "
        "mean is subtracted (the mean removed it: identical embeddings; no direction, so no cosine) "
        f"({n} utterances in all: '{first}', ")
    # embeddings that differ keep their direction: only a row the mean removed is refused
    from avtk.scoring import check_centred

    check_centred(np.ones((2, 4)), np.ones((2, 4)) * 1e-5, ["a", "b"], "t")
    with pytest.raises(AvtkError, match=r"^t: embedding of utterance 'b' is all zeros once the mean is subtracted"):
        check_centred(np.ones((2, 4)), np.array([[1, 0, 0, 0], [1e-9, 0, 0, 0]]), ["a", "b"], "t")


def test_check_embeddings_is_the_one_rule():
    from avtk.scoring import check_embeddings, embedding_matrix, make_cohort

    ok = np.ones((2, 3, 4), np.float32)
    check_embeddings(ok, ["a", "b"], "t")
    crops = ok.copy()
    crops[1, 2] = 0  # one zero crop row of a crop set
    with pytest.raises(AvtkError, match=r"^t: embedding of utterance 'b' is all zeros"):
        check_embeddings(crops, ["a", "b"], "t")
    with pytest.raises(AvtkError, match=r"^t: embedding of utterance 'a' has NaN or infinite values \(2 utterances"):
        check_embeddings(np.full((2, 4), np.inf), ["a", "b"], "t")
    with pytest.raises(AvtkError, match="'z' is all zeros"):
        embedding_matrix({"a": np.ones(4), "z": np.zeros(4)}, ["a", "z"], source="t")
    with pytest.raises(AvtkError, match="^cohort: embedding of utterance 'z' is all zeros"):
        make_cohort({"a": np.ones(4), "z": np.zeros(4)})
    from avtk.cleanse import utterance_vectors

    with pytest.raises(AvtkError, match=r"^emb\.scp: embedding of utterance 'z' is all zeros \(no direction"):
        utterance_vectors({"a": np.ones(4), "z": np.zeros((2, 4))}, ["a", "z"], "emb.scp", True, frames=True)


def test_cli_unlabeled_trials_and_read_trials_roundtrip(tmp_path):
    table, trials, _ = random_problem(10, n_trials=12)
    emb = write_table(tmp_path / "emb", table)
    tr = tmp_path / "pairs"
    tr.write_text("".join(f"{e} {t}\n" for e, t in zip(trials.enroll, trials.test)))
    avtk("score", "--trials", tr, emb, tmp_path / "s")
    pairs, got, labels = read_scores(tmp_path / "s")
    assert labels == [[]] * len(trials) and pairs == list(zip(trials.enroll, trials.test))
    assert np.abs(got - naive_scores(table, read_trials(tr))).max() < 2e-6


def test_one_huge_vector_in_a_mean_table_is_refused_not_every_score_one(tmp_path):
    """A finite vector 1e25 times the others would be the whole --mean-from mean (every centred test vector minus
    it: every score 1.0, exit 0); the rule of centred tables names it, in score's and enroll's --mean-from. Scored
    without a mean, as an AS-Norm cohort is, its scale does not matter."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    train = {f"t{i:02d}": rng.normal(size=8).astype(np.float32) for i in range(30)}
    train["t07"] = train["t07"] * np.float32(1e25)
    test = {f"e{i}": rng.normal(size=8).astype(np.float32) for i in range(4)}
    kaldiio.save_ark(str(tmp_path / "train.ark"), train, scp=str(tmp_path / "train.scp"))
    kaldiio.save_ark(str(tmp_path / "test.ark"), test, scp=str(tmp_path / "test.scp"))
    (tmp_path / "trials").write_text("e0 e1\ne2 e3\n")
    (tmp_path / "utt2spk").write_text("".join(f"t{i:02d} s{i % 5}\n" for i in range(30)))
    (tmp_path / "spk2utt").write_text("A e0 e1\n")
    runs = [["score", "--trials", tmp_path / "trials", "--mean-from", f"scp:{tmp_path}/train.scp"],
            ["enroll", "--spk2utt", tmp_path / "spk2utt", "--mean-from", f"scp:{tmp_path}/train.scp"]]
    outs = [tmp_path / "s1.txt", f"ark,scp:{tmp_path}/g.ark,{tmp_path}/g.scp"]
    for args, out in zip(runs, outs):
        proc = subprocess.run([sys.executable, "-m", "avtk.cli", *map(str, args), f"scp:{tmp_path}/test.scp",
                               str(out)], capture_output=True, text=True)
        errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
        assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"scp:{tmp_path}/train.scp: embedding of utterance 't07' has norm " in errors[0], errors[0]
        assert "more than 10000 times off" in errors[0]
    assert not any((tmp_path / n).exists() for n in ("s1.txt", "g.scp"))
    proc = subprocess.run([sys.executable, "-m", "avtk.cli", "score", "--trials", str(tmp_path / "trials"), "--cohort",
                           f"scp:{tmp_path}/train.scp", "--cohort-utt2spk", str(tmp_path / "utt2spk"),
                           f"scp:{tmp_path}/test.scp", str(tmp_path / "s2.txt")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
