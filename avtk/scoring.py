"""Cosine scoring of trials from embedding tables, vectorised over all trials at once."""
import numpy as np

from avtk.errors import AvtkError


def embedding_matrix(table, keys, where):
    """Stack the embeddings of `keys` (each must be in `table`) as rows of a float32 matrix."""
    missing = [k for k in keys if k not in table]
    if missing:
        raise AvtkError(f"{where}: {len(missing)} utterances have no embedding, e.g. {missing[0]!r}")
    return np.stack([np.asarray(table[k], np.float32).ravel() for k in keys])


def cosine_scores(table, trials, subtract_mean=None, where="trials"):
    """Cosine score of every trial; `subtract_mean` is a vector removed from all embeddings first."""
    keys = sorted(set(trials.enroll) | set(trials.test))
    index = {k: i for i, k in enumerate(keys)}
    emb = embedding_matrix(table, keys, where)
    if subtract_mean is not None:
        emb = emb - np.asarray(subtract_mean, np.float32)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    e = emb[[index[k] for k in trials.enroll]]
    t = emb[[index[k] for k in trials.test]]
    return np.einsum("ij,ij->i", e, t)
