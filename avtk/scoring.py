"""Trial scoring: cosine similarity of embeddings, and adaptive symmetric score normalisation (AS-Norm).

Everything is vectorised; nothing loops over trials in Python.

Embeddings that are scored must be finite and not all zeros (`check_embeddings`, the one rule for score,
cleanse and verify), nor all zeros once the mean is subtracted (`check_centred`: identical embeddings).
Cosine. Each embedding may first have a mean vector subtracted (`mean`: of the scored
table, or of another table such as the training embeddings), then is L2-normalised; a trial's score is the dot
product of its two unit vectors. An embedding may also be a (1+N, dim) matrix from
`extract-embeddings --seed-crops N`: whole utterance first, then N crops; such trials score
(cos(whole, whole) + mean of the NxN crop cosines) / 2, as the seed's ECAPA-TDNN evaluation does (the mean
is subtracted from every row).

AS-Norm. The cohort is a set of unit vectors (usually one per training speaker: the mean of that speaker's
L2-normalised utterance embeddings, see `make_cohort`), with the same mean subtracted as from the scored
embeddings. For every distinct utterance u of the trials, its cosines to all cohort vectors are computed
and the `top_n` largest (all of them when the cohort is smaller) give a mean mu_u and a standard deviation
sigma_u (unbiased, n - 1 in the denominator). A trial (e, t) with raw score s then scores

    ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t) / 2

so swapping enrollment and test gives the same score. A sigma below MIN_SIGMA (no spread: the nearest cohort
members are identical) is an error naming the utterance, not a huge score. Cohort statistics are computed once
per distinct utterance, a piece of rows at a time on every usable core (a torch matrix product against the
cohort, at most CHUNK_BYTES of scores held at once); then each trial is a gather and a few array operations.
For crop sets the cohort statistics use the whole-utterance row (row 0) only, and normalise the crop-set score
s above.

Selecting the top n of each row exactly without a full per-row sort: a per-row threshold above which about
1.5 n of the row's cohort scores lie is predicted from the row's score mean and variance (computed in closed
form from the cohort's mean and covariance, as if the scores were Gaussian); the scores above it are compacted
and the top n taken from them. A row whose prediction leaves fewer than n candidates (or far too many) is
selected from its full row instead, so the result is exact whatever the score distribution; the prediction
only decides the speed.
"""
import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from statistics import NormalDist

import numpy as np

from avtk.errors import AvtkError
from avtk.io.ark import VectorTable

log = logging.getLogger(__name__)

DEFAULT_TOP_N = 300
MIN_SIGMA = 1e-5  # the smallest AS-Norm cohort std: below it float32 rounding (~1e-7) is over 1 % of a score
CHUNK_BYTES = 64 << 20  # the most utterance x cohort scores held at once (float32)
PREVIEW = 5  # utterance ids quoted in an error
UNIT_SAFE_LOW, UNIT_SAFE_HIGH = 1e-18, 1e18  # float32 vector norms that `unit` takes in float32

_PIECE_ROWS = 1024  # the most rows of utterance x cohort scores one worker takes at a time
_TRIAL_PIECE = 32768  # trials per worker piece in pair_scores
_CANDIDATES = 1.5  # predicted candidates per row, in units of top_n
_MAX_CANDIDATES = 4  # rows with more than this x top_n candidates are selected from the full row


# --------------------------------------------------------------------------------------------------
# helpers


def _preview(keys, n=PREVIEW):
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (", ..." if len(keys) > n else "")


def _line(trials, i):
    """`line L` of trial i when its source line is known, else `trial i+1`."""
    return f"line {trials.lineno[i]}" if trials.lineno else f"trial {i + 1}"


def _workers():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _parallel(function, pieces, workers):
    """Run function(piece) for every piece on `workers` threads (numpy and torch release the GIL)."""
    if workers <= 1 or len(pieces) <= 1:
        return [function(p) for p in pieces]
    with ThreadPoolExecutor(min(workers, len(pieces))) as pool:
        return list(pool.map(function, pieces))


def unit(x):
    """L2-normalise along the last axis (a zero vector stays zero), float32. The norm is taken in float32;
    where it leaves [UNIT_SAFE_LOW, UNIT_SAFE_HIGH] (the float32 squares of a vector with values beyond about
    1e19 overflow, those of one below about 1e-19 underflow: its norm would be inf or 0, and the unit vector
    0) it is taken again in float64, so a vector of any finite float32 magnitude gets its direction."""
    x = np.asarray(x, np.float32)
    with np.errstate(over="ignore", under="ignore"):  # handled below
        norm = np.linalg.norm(x, axis=-1, keepdims=True)
    if not ((norm >= UNIT_SAFE_LOW) & (norm <= UNIT_SAFE_HIGH)).all():
        norm64 = np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
        return (x / np.where(norm64 > 0, norm64, 1.0)).astype(np.float32)
    return x / norm


def _bad_rows_error(bad, source, what):
    more = f" ({len(bad)} utterances in all: {_preview(bad)})" if len(bad) > 1 else ""
    return AvtkError(f"{source}: embedding of utterance {bad[0]!r} {what}{more}")


def check_embeddings(matrix, keys, source):
    """Raise AvtkError naming the first key whose embedding in `matrix` (n, dim), or crop set (n, 1+N, dim),
    has a NaN or an infinity, or a row that is all zeros: the one rule for embeddings that are scored
    (score, cleanse, verify, AS-Norm cohorts, extraction outputs). A zero vector has no direction, so it
    has no cosine: it is an error, never a score of 0. A cosine does not see a vector's scale, so any finite
    magnitude is taken (`unit`); where a mean is subtracted it matters, and `check_norms` applies too."""
    matrix = np.asarray(matrix)
    rows = matrix.reshape(len(matrix), -1, matrix.shape[-1])
    bad = ~np.isfinite(rows).all(axis=(1, 2))
    if bad.any():
        raise _bad_rows_error([keys[i] for i in np.flatnonzero(bad)], source, "has NaN or infinite values")
    zero = ~rows.any(axis=2).all(axis=1)
    if zero.any():
        raise _bad_rows_error([keys[i] for i in np.flatnonzero(zero)], source,
                              "is all zeros (no direction, so no cosine)")


# Where embeddings are centred (a mean subtracted), an embedding whose norm is this many times above or below the
# median norm of its table is not one of them (a corrupted row, or another network's): above, it would be the
# whole mean (every centred vector minus it: every score 1); below, centring turns it into minus the mean. A
# network's embeddings vary in norm by a few times at most.
NORM_OUTLIER = 1e4


def check_norms(matrix, keys, source):
    """Raise AvtkError naming the first key of `keys` whose row of `matrix` (n, dim) or (n, 1+N, dim) has a
    norm NORM_OUTLIER times above or below the median norm of the rows: the rule for embeddings that are
    averaged into a mean or centred by one (--mean-from and --subtract-mean tables, cleanse, the joint
    audio-visual network's inputs). Norms in float64, a block of rows at a time. Returns the median norm (0.0
    for no rows)."""
    matrix = np.asarray(matrix)
    rows = matrix.reshape(len(matrix), -1, matrix.shape[-1])
    if not len(rows):
        return 0.0
    norms = np.concatenate([np.linalg.norm(rows[a:a + 65536].astype(np.float64), axis=2)
                            for a in range(0, len(rows), 65536)])
    median = float(np.median(norms))
    if not median > 0:
        return median
    ratio = norms / median
    odd = ((ratio > NORM_OUTLIER) | (ratio < 1 / NORM_OUTLIER)).any(axis=1)
    if odd.any():
        i = int(np.flatnonzero(odd)[0])
        j = int(np.argmax(np.abs(np.log(ratio[i]))))
        raise _bad_rows_error([keys[k] for k in np.flatnonzero(odd)], source,
                              f"has norm {norms[i, j]:.3g}, {ratio[i, j]:.3g} times the median norm {median:.3g} of "
                              f"the {len(rows)} embeddings (more than {NORM_OUTLIER:g} times off, where a mean is "
                              "subtracted: a corrupted embedding, or another network's)")
    return median


# --------------------------------------------------------------------------------------------------
# reading embeddings out of tables


def key_index(trials):
    """(keys, enroll_idx, test_idx): the distinct utterances of the trials (enrollment sides first, each in
    order of first appearance) and each trial's two positions in that list (int64 arrays)."""
    index = {}
    ei = np.array([index.setdefault(k, len(index)) for k in trials.enroll], np.int64)
    ti = np.array([index.setdefault(k, len(index)) for k in trials.test], np.int64)
    return list(index), ei, ti


def missing_utterances(table, trials):
    """(missing, mask): utterances of `trials` with no entry in `table` (order of first appearance), and a
    boolean array marking the trials that use one of them."""
    keys = dict.fromkeys(itertools.chain.from_iterable(zip(trials.enroll, trials.test)))
    missing = [k for k in keys if k not in table]
    if not missing:
        return [], np.zeros(len(trials), bool)
    gone = set(missing)
    mask = np.fromiter((e in gone or t in gone for e, t in zip(trials.enroll, trials.test)), bool, len(trials))
    return missing, mask


def missing_message(trials, missing, mask, where, source):
    """The error text for trials whose utterances have no embedding."""
    first = int(np.argmax(mask))
    return (
        f"{where}: {len(missing)} utterance{'s' if len(missing) > 1 else ''} in {int(mask.sum())} of "
        f"{len(trials)} trials {'have' if len(missing) > 1 else 'has'} no embedding in {source} "
        f"(first at {_line(trials, first)}): {_preview(missing)}"
    )


def subset_trials(trials, keep):
    """The trials where boolean array `keep` is true (labels and line numbers follow)."""
    from avtk.data.trials import Trials

    idx = np.flatnonzero(keep)
    return Trials(
        [trials.enroll[i] for i in idx], [trials.test[i] for i in idx],
        None if trials.labels is None else trials.labels[idx], trials.style,
        [trials.lineno[i] for i in idx] if trials.lineno else [],
    )


def check_duplicate_trials(trials, where="trials"):
    """AvtkError naming both lines of the first trial (enroll, test) that repeats an earlier one."""
    keys, ei, ti = key_index(trials)
    code = ei * len(keys) + ti
    order = np.argsort(code, kind="stable")
    repeat = code[order[1:]] == code[order[:-1]]
    if not repeat.any():
        return
    later = int(order[1:][repeat].min())  # the earliest trial that repeats an earlier one
    first = int(np.flatnonzero(code == code[later])[0])
    raise AvtkError(
        f"{where}: duplicate trial {trials.enroll[later]} {trials.test[later]} at {_line(trials, later)} "
        f"(first at {_line(trials, first)})"
    )


def embedding_matrix(table, keys, where="trials", source="embeddings"):
    """Stack the embeddings of `keys` (each must be in `table`): (n, dim), or (n, 1+N, dim) for crop sets.

    A missing key, embeddings of different shapes, or a NaN/infinite or all-zero embedding
    (`check_embeddings`) is an AvtkError.
    """
    missing = [k for k in keys if k not in table]
    if missing:
        raise AvtkError(f"{where}: {len(missing)} utterances have no embedding in {source}: {_preview(missing)}")
    if not keys:
        raise AvtkError(f"{where}: no utterances to score")
    if isinstance(table, VectorTable):  # read in bulk: one gather, no per-key arrays
        emb = table.matrix[table.rows(keys)]
        check_embeddings(emb, keys, source)
        return emb
    shape = np.shape(table[keys[0]])
    if len(shape) not in (1, 2) or shape[-1] == 0:
        raise AvtkError(f"{source}: embedding of {keys[0]!r} has shape {shape}; expected a vector or a crop set")
    try:
        emb = np.stack([table[k] for k in keys]).astype(np.float32, copy=False)
    except ValueError:
        odd = next(k for k in keys if np.shape(table[k]) != shape)
        raise AvtkError(f"{source}: embeddings of different shapes: {keys[0]!r} {shape}, "
                        f"{odd!r} {np.shape(table[odd])}") from None
    check_embeddings(emb, keys, source)
    return emb


def _rows(table, source, whole_only=False):
    """(keys, matrix): every embedding of `table` ({key: array}, or a `VectorTable`, whose own matrix is
    returned, not a copy) as float32 rows; crop sets give all their rows, or only the whole-utterance row 0
    with whole_only. Checks shapes, and finiteness and non-zero rows (`check_embeddings`)."""
    if isinstance(table, VectorTable):  # read in bulk: one float32 matrix
        check_embeddings(table.matrix, table.keys_list, source)
        return table.keys_list, table.matrix
    keys = list(table)
    if not keys:
        raise AvtkError(f"{source}: empty table")
    first = np.shape(table[keys[0]])
    for k in keys:
        shape = np.shape(table[k])
        if len(shape) not in (1, 2) or shape[-1] != first[-1] or shape[-1] == 0:
            raise AvtkError(f"{source}: embeddings of different shapes: {keys[0]!r} {first}, {k!r} {shape}")
    dim = first[-1]
    used = 1 if whole_only else None  # the rows of each crop set that are used
    parts = [np.asarray(table[k], np.float32).reshape(-1, dim)[:used] for k in keys]
    matrix = np.concatenate(parts)
    check_embeddings(matrix, [k for k, part in zip(keys, parts) for _ in range(len(part))], source)
    return keys, matrix


def table_mean(table, source="embeddings"):
    """Mean of every embedding vector of `table` (every row of crop sets), float32 (dim,); their norms must be
    alike (`check_norms`: one corrupted row would be the whole mean)."""
    keys, matrix = _rows(table, source)
    if len(keys) != len(matrix):  # crop sets: a key per row
        keys = [k for k in keys for _ in range(len(np.atleast_2d(table[k])))]
    check_norms(matrix, keys, source)
    return matrix.mean(axis=0, dtype=np.float64).astype(np.float32)


# a centred row shorter than this fraction of its norm before centring is zero up to float32 rounding
CENTRED_ZERO = 1e-6


def check_centred(x, centred, keys, source):
    """Raise AvtkError naming the first key of `keys` whose row of `x` (n, dim) or (n, 1+N, dim), once the mean
    is subtracted (`centred`, same shape), has a norm below CENTRED_ZERO of its norm before: the mean removed
    it (identical embeddings), and a zero vector has no cosine, as in `check_embeddings`."""
    with np.errstate(over="ignore", under="ignore"):  # an overflow gives inf before and after: not gone
        before = np.linalg.norm(x, axis=-1)  # in the arrays' own dtype: no float64 copy of a large table
        after = np.linalg.norm(centred, axis=-1)
    gone = (after < CENTRED_ZERO * before).reshape(len(before), -1).any(axis=1)
    if gone.any():
        raise _bad_rows_error([keys[i] for i in np.flatnonzero(gone)], source,
                              "is all zeros once the mean is subtracted (the mean removed it: identical "
                              "embeddings; no direction, so no cosine)")


def check_mean(mean, dim, source, what="the mean"):
    """`mean` as a float32 vector (dim,) to subtract from embeddings of dimension `dim`; a mean of another
    dimension, or with a NaN or infinite value (it would make every score NaN), is an AvtkError naming
    `source` (the embeddings) and `what`."""
    mean = np.asarray(mean, np.float32).reshape(-1)
    if mean.shape[0] != dim:
        raise AvtkError(f"{source}: embeddings have dimension {dim} but {what} has {mean.shape[0]}")
    if not np.isfinite(mean).all():
        raise AvtkError(f"{source}: {what} has NaN or infinite values (at index "
                        f"{int(np.flatnonzero(~np.isfinite(mean))[0])}): no embedding can be centred with it")
    return mean


def centre_unit(x, mean, keys, source, what="the mean"):
    """Rows of `x` (n, dim) or (n, 1+N, dim) with `mean` (dim,) or nothing subtracted, L2-normalised (float32).
    With a mean (`what`, for messages): one of another dimension or not finite is an AvtkError naming `source`
    (`check_mean`), or one NORM_OUTLIER times longer than the rows' median norm (every centred row would be
    minus it); so is a row whose norm is far off the others' (`check_norms`: centring would turn a tiny one
    into minus the mean) or that the mean reduces to zero (`check_centred`), each naming its key."""
    x = np.asarray(x, np.float32)
    if mean is None:
        return unit(x)
    mean = check_mean(mean, x.shape[-1], source, what)
    median = check_norms(x, keys, source)
    size = float(np.linalg.norm(mean.astype(np.float64)))
    if median > 0 and size > NORM_OUTLIER * median:  # it would be every centred vector: every score 1
        raise AvtkError(f"{source}: {what} has norm {size:.3g}, {size / median:.3g} times the median norm "
                        f"{median:.3g} of the embeddings it centres (more than {NORM_OUTLIER:g} times: a corrupted "
                        "mean, or another network's)")
    centred = x - mean
    check_centred(x, centred, keys, source)
    return unit(centred)


# --------------------------------------------------------------------------------------------------
# the cohort


def read_utt2spk(path):
    """{utt: spk} from a Kaldi utt2spk file; a malformed or duplicate line names file:line."""
    from avtk.data.table import read_lines

    utt2spk = {}
    for line in read_lines(path):
        if len(line.value.split()) != 1:
            raise AvtkError(f"{path}:{line.lineno}: malformed utt2spk line (expected `utt spk`)")
        if line.key in utt2spk:
            raise AvtkError(f"{path}:{line.lineno}: duplicate utterance {line.key!r}")
        utt2spk[line.key] = line.value
    return utt2spk


def make_cohort(table, mean=None, utt2spk=None, source="cohort", utt2spk_path="utt2spk"):
    """(names, matrix): the AS-Norm cohort as unit float32 rows (K, dim).

    Without utt2spk, each embedding of `table` is one cohort member. With utt2spk ({utt: spk}), the members
    are speakers: each utterance embedding has `mean` subtracted and is L2-normalised, and a speaker's member
    is the mean of its utterances (then L2-normalised like every member); only utterances in both the table
    and utt2spk count. Crop sets contribute their whole-utterance row 0. Names are the speakers (sorted) or
    the table's keys.
    """
    keys, matrix = _rows(table, source, whole_only=True)
    matrix = centre_unit(matrix, mean, keys, source)
    if utt2spk is None:
        return keys, matrix
    use = [i for i, k in enumerate(keys) if k in utt2spk]
    if not use:
        raise AvtkError(f"{source}: none of its {len(keys)} utterances is in {utt2spk_path}")
    if len(use) < len(keys):
        log.warning("%s: %d of %d utterances are not in %s and are left out of the cohort",
                    source, len(keys) - len(use), len(keys), utt2spk_path)
    absent = len(utt2spk) - len(use)
    if absent:
        log.warning("%s: %d utterances of %s have no embedding in the cohort table", source, absent, utt2spk_path)
    speakers = sorted({utt2spk[keys[i]] for i in use})
    spk_index = {s: j for j, s in enumerate(speakers)}
    owner = np.fromiter((spk_index[utt2spk[keys[i]]] for i in use), np.int64, len(use))
    order = np.argsort(owner, kind="stable")
    rows = matrix[np.asarray(use)[order]]
    counts = np.bincount(owner, minlength=len(speakers))
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    sums = np.add.reduceat(rows.astype(np.float64), starts, axis=0)
    return speakers, unit(sums / counts[:, None])


# --------------------------------------------------------------------------------------------------
# scores


def pair_scores(emb, ei, ti, workers=None):
    """Cosine score of pairs (emb[ei[k]], emb[ti[k]]) of unit embeddings (n, dim) or crop sets (n, 1+N, dim)."""
    out = np.empty(len(ei), np.float32)

    def piece(a):
        e, t = emb[ei[a:a + _TRIAL_PIECE]], emb[ti[a:a + _TRIAL_PIECE]]
        if emb.ndim == 2:
            out[a:a + _TRIAL_PIECE] = np.einsum("ij,ij->i", e, t)
        else:
            whole = np.einsum("ij,ij->i", e[:, 0], t[:, 0])
            crops = np.matmul(e[:, 1:], t[:, 1:].transpose(0, 2, 1)).mean(axis=(1, 2))
            out[a:a + _TRIAL_PIECE] = (whole + crops) / 2

    _parallel(piece, list(range(0, len(ei), _TRIAL_PIECE)), workers or _workers())
    return out


def _select_top(scores, n, threshold, cap):
    """The n largest values of each row of `scores` (r, K) float32, as (r, n), in no particular order.

    `threshold` (r,) is the predicted per-row candidate threshold (None: select from the full rows).
    Returns (top, number of rows selected from their full row).
    """
    r, k = scores.shape
    if n >= k:
        return scores, 0
    if threshold is None:
        return np.partition(scores, k - n, axis=1)[:, k - n:], r
    idx = np.flatnonzero(scores >= threshold[:, None])
    rows = idx // k
    count = np.bincount(rows, minlength=r)
    full = (count < n) | (count > cap)
    keep = ~full[rows]
    width = max(n, int(count[~full].max())) if (~full).any() else n
    pos = np.arange(len(idx)) - (np.cumsum(count) - count)[rows]
    packed = np.full(r * width, -np.inf, np.float32)
    packed[rows[keep] * width + pos[keep]] = scores.ravel()[idx[keep]]
    packed = packed.reshape(r, width)
    top = np.partition(packed, width - n, axis=1)[:, width - n:]
    if full.any():
        top[full] = np.partition(scores[full], k - n, axis=1)[:, k - n:]
    return top, int(full.sum())


def cohort_stats(emb, cohort, top_n=DEFAULT_TOP_N, chunk_bytes=CHUNK_BYTES, workers=None):
    """(mu, sigma), float64 (U,): mean and unbiased standard deviation of the top_n largest cosines of each
    unit row of `emb` (U, dim) against the unit `cohort` (K, dim); all K when top_n >= K.

    `workers` threads (default: the usable cores) each take a piece of rows, compute its scores against the
    cohort (a single-threaded torch matrix product; torch's thread count is set to 1 meanwhile and restored
    after) and select their top n, so one thread's matrix product overlaps another's selection. At most
    chunk_bytes of float32 scores exist at once.
    """
    import torch

    emb = np.ascontiguousarray(emb, np.float32)
    cohort = np.ascontiguousarray(cohort, np.float32)
    u, k = len(emb), len(cohort)
    n = min(int(top_n), k)
    if n < 2:
        raise AvtkError(f"AS-Norm needs the top 2 or more cohort scores (top-n {top_n}, cohort of {k})")
    if emb.shape[1] != cohort.shape[1]:
        raise AvtkError(f"the cohort has dimension {cohort.shape[1]} but the embeddings have {emb.shape[1]}")
    workers = workers or _workers()
    rows = int(min(_PIECE_ROWS, max(1, chunk_bytes // (4 * k * workers))))
    fraction = _CANDIDATES * n / k
    predict = n < k and fraction < 0.5
    if predict:  # each row's score mean and variance in closed form, from the cohort's mean and covariance
        c64 = cohort.astype(np.float64)
        centre = c64.mean(axis=0)
        cov = torch.from_numpy(((c64 - centre).T @ (c64 - centre) / k).astype(np.float32))
        centre = centre.astype(np.float32)
        z = np.float32(NormalDist().inv_cdf(1.0 - fraction))
    cap = _MAX_CANDIDATES * n
    cohort_t = torch.from_numpy(cohort).T
    mu, sigma = np.empty(u), np.empty(u)

    def piece(a):
        b = min(u, a + rows)
        x = torch.from_numpy(emb[a:b])
        scores = torch.mm(x, cohort_t).numpy()
        threshold = None
        if predict:
            var = np.einsum("ij,ij->i", torch.mm(x, cov).numpy(), emb[a:b])
            threshold = emb[a:b] @ centre + z * np.sqrt(np.maximum(var, 0))
        top, full = _select_top(scores, n, threshold, cap)
        top = top.astype(np.float64)
        mu[a:b] = top.mean(axis=1)
        sigma[a:b] = top.std(axis=1, ddof=1)
        return full

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fallback = sum(_parallel(piece, list(range(0, u, rows)), workers))
    finally:
        torch.set_num_threads(saved)
    log.debug("cohort statistics of %d utterances against %d cohort members (top %d): %d rows selected "
              "from their full row", u, k, n, fallback)
    return mu, sigma


def asnorm(raw, mu, sigma, ei, ti, keys=None, source="cohort"):
    """Symmetric adaptive normalisation of raw trial scores (float64 (T,)), given each utterance's cohort mean
    and std (U,) and each trial's two utterance indices ei, ti (T,).

    A std below MIN_SIGMA (the top-n cohort scores of an utterance have no spread: identical cohort members,
    say) would divide the score by a rounding error; that is an AvtkError naming the utterance (keys[i]) and
    `source`, never a score of 1e9.
    """
    used = np.zeros(len(sigma), bool)
    used[ei], used[ti] = True, True
    flat = np.flatnonzero(used & ~(sigma >= MIN_SIGMA))
    if len(flat):
        names = [repr(keys[i]) if keys is not None else f"#{i}" for i in flat]
        more = f" ({len(flat)} utterances in all)" if len(flat) > 1 else ""
        raise AvtkError(f"{source}: the top cohort scores of utterance {names[0]} have no spread (standard "
                        f"deviation {sigma[flat[0]]:.3g} < {MIN_SIGMA:g}){more}: AS-Norm cannot normalise by "
                        "it; the cohort's nearest members are identical (duplicate cohort embeddings?) or "
                        "too few (raise --top-n)")
    raw = raw.astype(np.float64)
    return ((raw - mu[ei]) / sigma[ei] + (raw - mu[ti]) / sigma[ti]) / 2


def score_trials(table, trials, mean=None, cohort=None, top_n=DEFAULT_TOP_N, where="trials",
                 source="embeddings", workers=None, cohort_source="cohort", cohort_means=False):
    """Score every trial: cosine of mean-subtracted unit embeddings, AS-Norm when a cohort is given.

    `table` maps utterance -> embedding (vector or crop set); `mean` (dim,) or None; `cohort` is the unit
    (K, dim) matrix from `make_cohort` (built with the same mean) or None. Returns the scores in trials
    order: float32 cosines, or float64 AS-Norm scores. Embeddings and cohort are float32 throughout, so an
    AS-Norm score carries an error of about 1e-7 / sigma (sigma is small for a small top_n). A missing
    embedding, mixed shapes, NaN/infinite values or an all-zero embedding are AvtkErrors (`where` names the
    trials, `source` the table), and so is a cohort std below MIN_SIGMA (`asnorm`; `cohort_source` names the
    cohort).

    With cohort_means (AS-Norm only) returns (scores, keys, mu): also every distinct utterance of the trials
    (`key_index` order) and the mean of its top-n cohort cosines (float64), the quality measure of QMF
    calibration (`avtk.quality`).
    """
    if cohort_means and cohort is None:
        raise AvtkError("cohort statistics need an AS-Norm cohort")
    keys, ei, ti = key_index(trials)
    emb = centre_unit(embedding_matrix(table, keys, where, source), mean, keys, source)
    workers = workers or _workers()
    raw = pair_scores(emb, ei, ti, workers)
    if cohort is None:
        return raw
    if np.shape(cohort)[-1] != emb.shape[-1]:
        raise AvtkError(f"{source}: embeddings have dimension {emb.shape[-1]} "
                        f"but the cohort has {np.shape(cohort)[-1]}")
    whole = np.ascontiguousarray(emb if emb.ndim == 2 else emb[:, 0])
    mu, sigma = cohort_stats(whole, cohort, top_n, workers=workers)
    normed = asnorm(raw, mu, sigma, ei, ti, keys, cohort_source)
    return (normed, keys, mu) if cohort_means else normed


def cosine_scores(table, trials, subtract_mean=None, where="trials"):
    """Cosine score of every trial; `subtract_mean` is a vector removed from all embeddings first."""
    return score_trials(table, trials, mean=subtract_mean, where=where)
