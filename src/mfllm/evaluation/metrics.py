"""Distances between the real and simulated label streams of one event, per dimension.

Notation: for a window w and a dimension with labels 1..K, c_r(k) and c_s(k) count real and
simulated actions labelled k (unlabelled items are left out and reported). Distributions are
smoothed with an explicit pseudo-count alpha (default 0.5, Jeffreys):

    p(k) = (c_r(k) + alpha) / (n_r + K * alpha),   q(k) = (c_s(k) + alpha) / (n_s + K * alpha)

- KL(real||sim) = sum_k p(k) * ln(p(k) / q(k))                          (nats)
- JS(p, q)      = 1/2 KL(p||m) + 1/2 KL(q||m),  m = (p + q) / 2          (nats; at most ln 2)
- W1            = sum_k |P(k) - Q(k)| over cumulative distributions P, Q, in label steps, for ordinal
                  dimensions (labels listed in order); total variation 1/2 sum_k |p(k) - q(k)| for
                  nominal ones
- DTW           = dynamic time warping between the per-window proportion series of real and
                  simulated actions, with local cost TV(p_i, q_j), divided by the length of the
                  optimal warping path (so it is a mean per-window distance, comparable across events)
- pooled KL     = KL(real||sim) of the distributions pooled over the whole rollout
- micro-F1      = share of agents whose simulated label equals their real label (both labelled)
- macro-F1      = mean over labels present in either stream of 2 TP / (2 TP + FP + FN), real as truth
Window values (KL, JS, W1) are averaged over windows holding at least one labelled real and simulated
action, each window weighted by its number of labelled real actions n_r.

Noise floor: the KL a perfect simulator would still show, because a window holds few labels. For each
window, two samples of the real window's own label shares p_hat = c_r / n_r are drawn, one of n_r labels
(as the real stream) and one of n_s (as the simulated one), smoothed as above; the window's floor is the
mean KL(sample_r || sample_s) over ``DEFAULT_FLOOR_RESAMPLES`` draws (a parametric bootstrap with a fixed
seed), and the dimension's floor is their n_r-weighted mean, like ``kl``. KL minus floor is the part of
the distance a simulator can remove.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import entropy, wasserstein_distance

from mfllm.evaluation.dimensions import Dimension

DEFAULT_ALPHA = 0.5
DEFAULT_FLOOR_RESAMPLES = 200


def counts(labels: Sequence[str | None], dimension: Dimension) -> np.ndarray:
    vector = np.zeros(len(dimension.labels))
    for label in labels:
        if label is not None:
            vector[dimension.index(label)] += 1
    return vector


def smoothed(count: np.ndarray, alpha: float) -> np.ndarray:
    if alpha < 0:
        raise ValueError("smoothing alpha must be >= 0")
    total = count.sum() + alpha * len(count)
    if total == 0:
        raise ValueError("cannot form a distribution from no labels without smoothing")
    return (count + alpha) / total


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p||q) in nats (scipy.stats.entropy)."""
    return float(entropy(p, q))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence in nats (the square of scipy's JS distance)."""
    return float(jensenshannon(p, q) ** 2)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


def wasserstein_or_tv(p: np.ndarray, q: np.ndarray, ordinal: bool) -> float:
    if not ordinal:
        return total_variation(p, q)
    positions = np.arange(len(p))
    return float(wasserstein_distance(positions, positions, p, q))


def dtw_distance(real: np.ndarray, sim: np.ndarray) -> float:
    """DTW between two series of distributions (rows), TV local cost, normalised by path length."""
    n, m = len(real), len(sim)
    cost = 0.5 * np.abs(real[:, None, :] - sim[None, :, :]).sum(-1)
    total = np.full((n + 1, m + 1), np.inf)
    steps = np.zeros((n + 1, m + 1), dtype=int)
    total[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            moves = ((i - 1, j - 1), (i - 1, j), (i, j - 1))
            best = min(moves, key=lambda ij: (total[ij], steps[ij]))
            total[i, j] = cost[i - 1, j - 1] + total[best]
            steps[i, j] = steps[best] + 1
    return float(total[n, m] / steps[n, m])


def f1_scores(real: Sequence[str | None], sim: Sequence[str | None], dimension: Dimension) -> tuple[float, float]:
    """(micro-F1, macro-F1) of simulated labels against real labels of the same agents."""
    pairs = [(r, s) for r, s in zip(real, sim) if r is not None and s is not None]
    if not pairs:
        return float("nan"), float("nan")
    micro = sum(r == s for r, s in pairs) / len(pairs)
    per_label = []
    for label in dimension.labels:
        tp = sum(r == label and s == label for r, s in pairs)
        fp = sum(r != label and s == label for r, s in pairs)
        fn = sum(r == label and s != label for r, s in pairs)
        if tp + fp + fn:
            per_label.append(2 * tp / (2 * tp + fp + fn))
    return micro, float(np.mean(per_label))


@dataclass(frozen=True)
class DimensionMetrics:
    dimension: str
    kl: float
    js: float
    wasserstein: float
    dtw: float
    pooled_kl: float
    micro_f1: float
    macro_f1: float
    windows: int
    real_proportions: list[list[float]]
    sim_proportions: list[list[float]]
    labelled_real: int
    labelled_sim: int
    kl_floor: float = float("nan")
    """Expected window KL between two samples of the real window's shares at the window's sizes (see above)."""
    window_weights: list[int] = field(default_factory=list)
    """Labelled real actions of each compared window: the weight of its values in the means."""


def noise_floor(c_real: np.ndarray, n_sim: int, alpha: float, resamples: int = DEFAULT_FLOOR_RESAMPLES,
                seed: int = 0) -> float:
    """Mean smoothed KL between a sample of ``c_real.sum()`` and one of ``n_sim`` labels, both drawn from
    the real window's shares ``c_real / c_real.sum()``: what sampling alone puts between real and a perfect
    simulator in this window."""
    rng = np.random.default_rng(seed)
    shares = c_real / c_real.sum()
    real = rng.multinomial(int(c_real.sum()), shares, size=resamples) + alpha
    sim = rng.multinomial(int(n_sim), shares, size=resamples) + alpha
    p, q = real / real.sum(axis=1, keepdims=True), sim / sim.sum(axis=1, keepdims=True)
    return float(rel_entr(p, q).sum(axis=1).mean())


def _weighted(values: Sequence[float], weights: Sequence[float]) -> float:
    return float(np.average(values, weights=weights)) if len(values) else float("nan")


def _windowed_counts(real: Sequence[str | None], sim: Sequence[str | None], windows: Sequence[int],
                     dimension: Dimension) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for window in sorted(set(windows)):
        members = [i for i, w in enumerate(windows) if w == window]
        c_real, c_sim = counts([real[i] for i in members], dimension), counts([sim[i] for i in members], dimension)
        if c_real.sum() and c_sim.sum():
            pairs.append((c_real, c_sim))
    return pairs


def compare_streams(real: Sequence[str | None], sim: Sequence[str | None], windows: Sequence[int], dimension: Dimension,
                    alpha: float = DEFAULT_ALPHA) -> DimensionMetrics:
    """All metrics for one dimension. ``windows[i]`` is the window of agent i (aligned real/sim)."""
    if not (len(real) == len(sim) == len(windows)):
        raise ValueError(f"misaligned streams: {len(real)} real, {len(sim)} simulated, {len(windows)} window ids")
    kls, jss, w1s, floors, weights, real_series, sim_series = [], [], [], [], [], [], []
    for c_real, c_sim in _windowed_counts(real, sim, windows, dimension):
        p, q = smoothed(c_real, alpha), smoothed(c_sim, alpha)
        kls.append(kl_divergence(p, q))
        jss.append(js_divergence(p, q))
        w1s.append(wasserstein_or_tv(p, q, dimension.ordinal))
        floors.append(noise_floor(c_real, int(c_sim.sum()), alpha, seed=len(floors)))
        weights.append(int(c_real.sum()))
        real_series.append(c_real / c_real.sum())
        sim_series.append(c_sim / c_sim.sum())
    nan = float("nan")
    pooled_real, pooled_sim = counts(real, dimension), counts(sim, dimension)
    pooled = kl_divergence(smoothed(pooled_real, alpha), smoothed(pooled_sim, alpha)) if pooled_real.sum() and pooled_sim.sum() else nan
    micro, macro = f1_scores(real, sim, dimension)
    return DimensionMetrics(
        dimension=dimension.name,
        kl=_weighted(kls, weights), js=_weighted(jss, weights), wasserstein=_weighted(w1s, weights),
        dtw=dtw_distance(np.array(real_series), np.array(sim_series)) if real_series else nan,
        pooled_kl=pooled, micro_f1=micro, macro_f1=macro, windows=len(kls),
        real_proportions=[list(map(float, r)) for r in real_series], sim_proportions=[list(map(float, s)) for s in sim_series],
        labelled_real=int(pooled_real.sum()), labelled_sim=int(pooled_sim.sum()), kl_floor=_weighted(floors, weights),
        window_weights=weights,
    )


def window_ids(rows: Sequence[dict], scheme: str) -> list[int]:
    """Window of each row: ``step`` (the simulation batch), ``count:N`` (N agents each, in time order)
    or ``time:SECONDS`` (wall-clock windows from the first agent's real timestamp)."""
    if scheme == "step":
        return [int(r["step"]) for r in rows]
    kind, _, value = scheme.partition(":")
    if kind == "count" and value.isdigit() and int(value) > 0:
        return [i // int(value) for i in range(len(rows))]
    if kind == "time" and value.replace(".", "", 1).isdigit() and float(value) > 0:
        if any(r.get("timestamp") is None for r in rows):
            raise ValueError("wall-clock windows need a timestamp on every action")
        start = min(float(r["timestamp"]) for r in rows)
        return [int((float(r["timestamp"]) - start) // float(value)) for r in rows]
    raise ValueError(f"unknown window scheme {scheme!r}: use step, count:N or time:SECONDS")


# ---------------------------------------------------------------- correction for the labeller's known confusion
#
# With R[g, k] = P(labeller says k | human says g), estimated from a validation confusion matrix, the
# shares q the labeller reports relate to the true shares pi by q = R^T pi. Adjusted classify-and-count
# recovers pi as the point of the probability simplex that best explains q:
#     pi_hat = argmin_{pi >= 0, sum pi = 1} || R^T pi - q ||^2
# (non-negative least squares with the sum constraint as a heavily weighted extra row, then
# renormalised); where R is invertible and R^-T q is a distribution this equals the matrix inversion.
# Corrected KL applies the usual smoothing to the corrected counts n * pi_hat. Its interval resamples
# the validation confusion (each human-label row drawn again from a multinomial with its own total),
# so it carries the labeller's uncertainty; the same seed gives the same confusion draws in every run,
# so runs labelled by one labeller can be pooled draw by draw.

DEFAULT_CORRECTION_RESAMPLES = 200
_SUM_WEIGHT = 100.0


def pooled_confusion(validations: Sequence[dict], dimension: Dimension) -> np.ndarray | None:
    """Sum of the validation confusion counts (human label x predicted label, unlabelled column dropped)
    over records on ``dimension``'s labels; None unless every label has human-labelled rows."""
    total = np.zeros((len(dimension.labels), len(dimension.labels)))
    for record in validations:
        if record["dimension"] == dimension.name and list(record["labels"]) == list(dimension.labels):
            total += np.asarray(record["confusion"], dtype=float)[:, :len(dimension.labels)]
    return total if (total.sum(axis=1) > 0).all() else None


def confusion_rates(confusion: np.ndarray, pseudo_count: float = DEFAULT_ALPHA) -> np.ndarray:
    """Row-normalised confusion R[g, k] = P(predicted k | gold g), each cell smoothed by ``pseudo_count``."""
    smoothed_rows = confusion + pseudo_count
    return smoothed_rows / smoothed_rows.sum(axis=1, keepdims=True)


def corrected_shares(predicted_counts: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """True label shares implied by the labeller's counts and its confusion rates (see the note above)."""
    from scipy.optimize import nnls

    total = predicted_counts.sum()
    if total <= 0:
        raise ValueError("cannot correct an empty window")
    k = len(predicted_counts)
    system = np.vstack([rates.T, np.full((1, k), _SUM_WEIGHT)])
    target = np.concatenate([predicted_counts / total, [_SUM_WEIGHT]])
    shares, _ = nnls(system, target)
    return shares / shares.sum()


@dataclass(frozen=True)
class CorrectedMetrics:
    """Raw and confusion-corrected window KL of one dimension, with the corrected KL's interval."""

    dimension: str
    kl_raw: float
    kl_corrected: float
    ci_low: float
    ci_high: float
    windows: int
    validation_rows: int
    real_corrected_proportions: list[list[float]]
    sim_corrected_proportions: list[list[float]]
    kl_corrected_draws: list[float]


def _corrected_kl(pairs: list[tuple[np.ndarray, np.ndarray]], rates: np.ndarray, alpha: float) -> tuple[float, list, list]:
    kls, real_shares, sim_shares = [], [], []
    weights = [c_real.sum() for c_real, _ in pairs]
    for c_real, c_sim in pairs:
        p, q = corrected_shares(c_real, rates), corrected_shares(c_sim, rates)
        kls.append(float(rel_entr(smoothed(p * c_real.sum(), alpha), smoothed(q * c_sim.sum(), alpha)).sum()))  # KL, as kl_divergence
        real_shares.append(p)
        sim_shares.append(q)
    return _weighted(kls, weights), real_shares, sim_shares


def corrected_comparison(real: Sequence[str | None], sim: Sequence[str | None], windows: Sequence[int], dimension: Dimension,
                         confusion: np.ndarray, alpha: float = DEFAULT_ALPHA, resamples: int = DEFAULT_CORRECTION_RESAMPLES,
                         level: float = 0.95, seed: int = 0) -> CorrectedMetrics | None:
    """Window KL before and after correcting both streams for the labeller's ``confusion`` (counts,
    human label x predicted). None when no window holds labelled real and simulated actions."""
    if not (len(real) == len(sim) == len(windows)):
        raise ValueError(f"misaligned streams: {len(real)} real, {len(sim)} simulated, {len(windows)} window ids")
    pairs = _windowed_counts(real, sim, windows, dimension)
    if not pairs:
        return None
    raw = _weighted([kl_divergence(smoothed(r, alpha), smoothed(s, alpha)) for r, s in pairs], [r.sum() for r, _ in pairs])
    point, real_shares, sim_shares = _corrected_kl(pairs, confusion_rates(confusion), alpha)
    rng = np.random.default_rng(seed)
    row_totals = confusion.sum(axis=1).astype(int)
    row_shares = confusion / confusion.sum(axis=1, keepdims=True)
    draws = []
    for _ in range(resamples):
        drawn = np.array([rng.multinomial(n, shares) for n, shares in zip(row_totals, row_shares)], dtype=float)
        draws.append(_corrected_kl(pairs, confusion_rates(drawn), alpha)[0])
    tail = (1 - level) / 2
    return CorrectedMetrics(dimension.name, raw, point, float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail)),
                            len(pairs), int(confusion.sum()), [list(map(float, p)) for p in real_shares],
                            [list(map(float, q)) for q in sim_shares], [float(d) for d in draws])
