"""Retrieval evaluation (docs/METHOD.md section 5): mAP, tie-aware mAP, precision@k, PR curves.

Single-label relevance: a database item is relevant to a query when their labels are equal.

Conventions
-----------
AP@k (the MiLAN / deep-hashing convention): over the first k items of a ranking,
``AP@k = (1 / R_k) * sum_{i <= k, rel_i} precision@i`` where ``R_k`` is the number of relevant
items in the top k (not the number in the whole database); 0 when ``R_k == 0``. ``k=None`` means
the whole ranking, so AP over a full ranking of the database is the classic AP.

Tie-aware AP@k: the exact expectation of AP@k when the items within each group of equal
distance are put in uniformly random order (McSherry & Najork, ECIR 2008), so it does not depend
on how ties were broken. It equals AP@k when there are no ties.
"""

from __future__ import annotations

import math

import numpy as np

from dahash_index.errors import check_int


def _as_relevance(relevant: np.ndarray) -> np.ndarray:
    rel = np.asarray(relevant)
    if rel.ndim != 1:
        raise ValueError(f"relevant must be 1-D, got shape {rel.shape}")
    if rel.dtype != bool:
        if not np.issubdtype(rel.dtype, np.integer) or not np.isin(rel, (0, 1)).all():
            raise ValueError("relevant must be bool (or integer 0/1)")
        rel = rel.astype(bool)
    return rel


def _check_k(k: int | None) -> int | None:
    return None if k is None else check_int("k", k, 1)


def average_precision(relevant: np.ndarray, k: int | None = None) -> float:
    """AP@k of one ranking. relevant: bool (n,), in ranked order; k=None means all n.

    ``(1 / R_k) * sum_{i <= k, rel_i} precision@i`` with ``R_k`` the relevant items in the top
    k; 0.0 when there are none (module docstring).
    """
    rel = _as_relevance(relevant)
    k = _check_k(k)
    rel = rel if k is None else rel[:k]
    hits = np.cumsum(rel)
    n_rel = int(hits[-1]) if len(rel) else 0
    if n_rel == 0:
        return 0.0
    ranks = np.flatnonzero(rel) + 1
    return float(np.sum(hits[rel] / ranks) / n_rel)


def tie_aware_average_precision(
    relevant: np.ndarray, distances: np.ndarray, k: int | None = None
) -> float:
    """E[AP@k] over uniformly random orderings within groups of equal distance; exact.

    relevant: bool (n,); distances: (n,) non-decreasing (a ranking); k=None means all n.
    The groups are taken as given: a group straddling position k must be complete in the input
    (``mean_average_precision`` checks this), else the expectation is over the truncated group.

    Position i (1-based) of a tie group holding n items of which r are relevant, starting after
    s items of which c are relevant, is relevant with probability r/n, and then the number of
    relevant items up to i is, in expectation, ``c + 1 + (t - 1)(r - 1)/(n - 1)`` (t = i - s).
    Hence for groups entirely inside the top k,
    ``E[sum_i rel_i * hits_i / i] = sum_t (r/n) (c + 1 + (t - 1)(r - 1)/(n - 1)) / (s + t)``.
    For a group straddling position k (h = k - s of its positions inside), the normaliser
    ``R_k = c + X`` is random: X, the relevant items landing inside, is hypergeometric
    (n, r, h), and given X = x those x are uniformly spread over the h positions. So
    ``E[AP@k] = sum_x P(X = x) * (S + T(x)) / (c + x)``, where S is the expected sum of the
    groups before it (independent of X) and T(x) the formula above with (n, r) -> (h, x);
    terms with ``c + x = 0`` are 0.
    """
    rel = _as_relevance(relevant)
    dist = np.asarray(distances)
    k = _check_k(k)
    if dist.shape != rel.shape:
        raise ValueError(f"distances must have shape {rel.shape}, got {dist.shape}")
    if np.any(np.diff(dist) < 0):
        raise ValueError("distances must be non-decreasing (a ranking)")
    m = len(rel)
    if m == 0:
        return 0.0
    k_eff = m if k is None else min(k, m)

    starts = np.flatnonzero(np.r_[True, dist[1:] != dist[:-1]])
    ends = np.r_[starts[1:], m]
    rel_before = np.r_[0, np.cumsum(rel)]  # rel_before[i] = relevant among the first i items

    # Groups entirely inside the top k, one term per position.
    full = ends <= k_eff
    s, e = starts[full], ends[full]
    n, r, c = e - s, rel_before[e] - rel_before[s], rel_before[s]
    coef = np.divide(r - 1, n - 1, out=np.zeros(len(n)), where=n > 1)
    pos_group = np.repeat(np.arange(len(s)), n)
    pos = np.arange(1, len(pos_group) + 1)  # these groups cover positions 1..sum(n) exactly
    t = pos - s[pos_group]
    expected_sum = float(
        np.sum((r / n)[pos_group] * (c[pos_group] + 1 + (t - 1) * coef[pos_group]) / pos)
    )
    c_in = int(rel_before[e[-1]]) if len(e) else 0

    straddling = np.flatnonzero((starts < k_eff) & (ends > k_eff))
    if straddling.size == 0:
        return expected_sum / c_in if c_in else 0.0

    g = straddling[0]
    s_g, n_g = int(starts[g]), int(ends[g] - starts[g])
    r_g = int(rel_before[ends[g]] - rel_before[s_g])
    h = k_eff - s_g
    t = np.arange(1, h + 1)
    a = np.sum(1.0 / (s_g + t))
    b = np.sum((t - 1) / (s_g + t))
    total = 0.0
    for x in range(max(0, h - (n_g - r_g)), min(r_g, h) + 1):
        if c_in + x == 0:
            continue
        coef_x = (x - 1) / (h - 1) if h > 1 else 0.0
        t_x = x / h * ((c_in + 1) * a + coef_x * b)
        total += _hypergeom_pmf(x, n_g, r_g, h) * (expected_sum + t_x) / (c_in + x)
    return float(total)


def _hypergeom_pmf(x: int, n: int, r: int, h: int) -> float:
    """P(x relevant among h draws without replacement from n items of which r are relevant)."""

    def log_comb(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    return math.exp(log_comb(r, x) + log_comb(n - r, h - x) - log_comb(n, h))


def _ranked_relevance(
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    ranked_ids: np.ndarray,
    exclude_self: np.ndarray | None,
    k: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Check inputs; return (relevant bool (q, m), keep bool (q, m)).

    keep drops padding (-1) and, with exclude_self, each query's own database index.
    """
    query_labels, db_labels = np.asarray(query_labels), np.asarray(db_labels)
    ranked_ids = np.asarray(ranked_ids)
    if query_labels.ndim != 1 or db_labels.ndim != 1:
        raise ValueError("query_labels and db_labels must be 1-D (one label per item)")
    q, n = len(query_labels), len(db_labels)
    if not np.issubdtype(ranked_ids.dtype, np.integer) or ranked_ids.ndim != 2:
        raise ValueError(f"ranked_ids must be an integer array (q, m), got {ranked_ids.dtype}")
    if ranked_ids.shape[0] != q:
        raise ValueError(f"ranked_ids has {ranked_ids.shape[0]} rows for {q} queries")
    if ranked_ids.size and (ranked_ids.min() < -1 or ranked_ids.max() >= n):
        raise ValueError(f"ranked_ids must be database indices in [0, {n}) or -1 (padding)")
    keep = ranked_ids >= 0
    if exclude_self is not None:
        exclude_self = np.asarray(exclude_self)
        if exclude_self.shape != (q,) or not np.issubdtype(exclude_self.dtype, np.integer):
            raise ValueError(f"exclude_self must be integer database indices of shape ({q},)")
        keep &= ranked_ids != exclude_self[:, None]
    if k is not None:
        # Excluding the query itself costs one slot, so k + 1 entries are needed to score k.
        needed = min(k + (exclude_self is not None), n)
        if ranked_ids.shape[1] < needed:
            raise ValueError(
                f"ranked_ids holds {ranked_ids.shape[1]} entries per query; scoring k={k} "
                f"needs {needed}" + (" (k + 1: the query itself is excluded)" if needed > k else "")
            )
    relevant = db_labels[np.where(keep, ranked_ids, 0)] == query_labels[:, None]
    return relevant & keep, keep


def mean_average_precision(
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    ranked_ids: np.ndarray,
    distances: np.ndarray | None = None,
    k: int | None = None,
    tie_aware: bool = False,
    exclude_self: np.ndarray | None = None,
) -> float:
    """Mean over queries of AP@k (or tie-aware AP@k) of each ranking.

    query_labels: (q,); db_labels: (n,); ranked_ids: integer (q, m), database indices in ranked
    order, -1 padding allowed anywhere (dropped); distances: integer (q, m), needed when
    tie_aware. exclude_self: integer (q,), the database index of each query itself (test vs
    test), dropped from its ranking before scoring, so k counts the other items; a negative
    entry drops nothing. With k, ranked_ids needs at least ``min(k (+1 with exclude_self), n)``
    columns.

    tie_aware=False scores the rankings as given: ties in the order of ranked_ids, which
    ``indexes.hamming_topk`` sorts by ascending id (database order). tie_aware=True needs the
    whole tie group at the k-th position in each ranking: a ranking whose last distance equals
    its k-th is refused unless it is padded (the index had no more candidates) or ranks the
    whole database; fetch more neighbours (e.g. k = ntotal) in that case.
    """
    k = _check_k(k)
    relevant, keep = _ranked_relevance(query_labels, db_labels, ranked_ids, exclude_self, k)
    q, n = relevant.shape[0], len(db_labels)
    if q == 0:
        raise ValueError("no queries")
    if not tie_aware:
        # rank among the kept entries; scored when within the top k
        rank = np.cumsum(keep, axis=1)
        scored = keep if k is None else keep & (rank <= k)
        rel = relevant & scored
        hits = np.cumsum(rel, axis=1)
        n_rel = hits[:, -1] if hits.shape[1] else np.zeros(q, dtype=int)
        prec_sum = np.sum(np.where(rel, hits / np.maximum(rank, 1), 0.0), axis=1)
        ap = np.divide(prec_sum, n_rel, out=np.zeros(q), where=n_rel > 0)
        return float(ap.mean())

    if distances is None:
        raise ValueError("tie_aware=True needs distances")
    distances = np.asarray(distances)
    if distances.shape != relevant.shape:
        raise ValueError(f"distances must have shape {relevant.shape}, got {distances.shape}")
    ranked_ids = np.asarray(ranked_ids)
    aps = np.empty(q)
    for i in range(q):
        rel_i, dist_i = relevant[i][keep[i]], distances[i][keep[i]]
        v = len(rel_i)
        k_eff = v if k is None else min(k, v)
        padded = bool((ranked_ids[i] < 0).any())
        whole_db = np.count_nonzero(ranked_ids[i] >= 0) >= n
        if v and not (padded or whole_db or dist_i[-1] > dist_i[k_eff - 1]):
            raise ValueError(
                f"query {i}: the tie group at position {k_eff} may continue past the end of "
                "the ranking; tie-aware AP needs all of it (fetch more neighbours)"
            )
        aps[i] = tie_aware_average_precision(rel_i, dist_i, k)
    return float(aps.mean())


def precision_at_k(
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    ranked_ids: np.ndarray,
    ks: tuple[int, ...] = (10, 20, 50, 100),
    exclude_self: np.ndarray | None = None,
) -> dict[int, float]:
    """Mean precision@k for each k: relevant items among the first k of each ranking, over k.

    Inputs as in ``mean_average_precision`` (padding and the query itself dropped first). The
    denominator is always k, so a database smaller than k caps precision below 1.
    """
    ks = [_check_k(k) for k in ks]
    if not ks:
        return {}
    relevant, keep = _ranked_relevance(query_labels, db_labels, ranked_ids, exclude_self, max(ks))
    if len(relevant) == 0:
        raise ValueError("no queries")
    rank = np.cumsum(keep, axis=1)
    return {k: float(np.mean(np.sum(relevant & (rank <= k), axis=1) / k)) for k in ks}


def precision_recall_curve(
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    distances_full: np.ndarray,
    bits: int,
    exclude_self: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Hashing PR curve: precision and recall of ``{db items at Hamming distance <= r}``.

    distances_full: integer (q, n), the distance from every query to every database item in
    database order, values in [0, bits]. Returns ``(precision, recall)``, float64 (bits + 1,),
    indexed by r = 0..bits, each averaged over queries. A query retrieving nothing at radius r is
    left out of the precision average at that r (precision of an empty set is undefined); NaN
    when no query retrieves anything. Recall averages over queries with at least one relevant
    item. exclude_self: integer (q,) database index of each query, left out of its own sets.
    """
    query_labels, db_labels = np.asarray(query_labels), np.asarray(db_labels)
    d = np.asarray(distances_full)
    q, n = len(query_labels), len(db_labels)
    if d.shape != (q, n) or not np.issubdtype(d.dtype, np.integer):
        raise ValueError(f"distances_full must be an integer array of shape ({q}, {n})")
    if d.size and (d.min() < 0 or d.max() > bits):
        raise ValueError(f"distances_full must lie in [0, {bits}]")
    d = d.astype(np.int64, copy=False)  # uint64 + int64 would promote to float64 below
    relevant = db_labels[None, :] == query_labels[:, None]
    keep = np.ones((q, n), dtype=bool)
    if exclude_self is not None:
        exclude_self = np.asarray(exclude_self)
        rows = np.flatnonzero(exclude_self >= 0)
        keep[rows, exclude_self[rows]] = False

    # Per query, how many items (and relevant items) sit at each distance, then cumulate over r.
    slot = (np.arange(q)[:, None] * (bits + 1) + d)[keep]
    size = q * (bits + 1)
    retrieved = np.bincount(slot, minlength=size).reshape(q, bits + 1).cumsum(axis=1)
    hits = np.bincount(slot, weights=relevant[keep], minlength=size).reshape(q, bits + 1)
    hits = hits.cumsum(axis=1)
    n_rel = hits[:, -1]

    has_any = retrieved > 0
    prec = np.divide(hits, retrieved, out=np.zeros_like(hits), where=has_any)
    with np.errstate(invalid="ignore"):
        precision = prec.sum(axis=0) / has_any.sum(axis=0)
    with_rel = n_rel > 0
    recall = np.full(bits + 1, np.nan)
    if with_rel.any():
        recall = (hits[with_rel] / n_rel[with_rel, None]).mean(axis=0)
    return precision, recall


def plot_pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str, title: str) -> None:
    """Save a PNG with one precision-recall line per method: ``{name: (precision, recall)}``."""
    # Figure + Agg canvas, not pyplot: no display needed and no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (precision, recall) in curves.items():
        ax.plot(recall, precision, marker=".", label=name)
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
