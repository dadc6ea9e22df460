"""Cosine scoring of trials from embedding tables, vectorised over all trials at once.

An embedding may also be a (1+N, dim) matrix from `extract-embeddings --seed-crops N`: whole utterance first,
then N crops; such trials score (cos(whole, whole) + mean of the NxN crop cosines) / 2, as the seed's
ECAPA-TDNN evaluation does.
"""
import numpy as np

from avtk.errors import AvtkError


def embedding_matrix(table, keys, where):
    """Stack the embeddings of `keys` (each must be in `table`): (n, dim), or (n, 1+N, dim) for crop sets."""
    missing = [k for k in keys if k not in table]
    if missing:
        raise AvtkError(f"{where}: {len(missing)} utterances have no embedding, e.g. {missing[0]!r}")
    shapes = {np.shape(table[k]) for k in keys}
    if len(shapes) > 1:
        raise AvtkError(f"{where}: embeddings of different shapes {sorted(shapes)[:2]}")
    return np.stack([np.asarray(table[k], np.float32) for k in keys])


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine_scores(table, trials, subtract_mean=None, where="trials"):
    """Cosine score of every trial; `subtract_mean` is a vector removed from all embeddings first."""
    keys = sorted(set(trials.enroll) | set(trials.test))
    index = {k: i for i, k in enumerate(keys)}
    emb = embedding_matrix(table, keys, where)
    if subtract_mean is not None:
        emb = emb - np.asarray(subtract_mean, np.float32)
    emb = _unit(emb)
    e = emb[[index[k] for k in trials.enroll]]
    t = emb[[index[k] for k in trials.test]]
    if emb.ndim == 2:
        return np.einsum("ij,ij->i", e, t)
    whole = np.einsum("ij,ij->i", e[:, 0], t[:, 0])
    crops = np.einsum("icd,ied->ice", e[:, 1:], t[:, 1:]).mean(axis=(1, 2))
    return (whole + crops) / 2
