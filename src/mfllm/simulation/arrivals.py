"""Arrival models: how many agents act, and when, after a forecast origin.

A model is fitted by maximum likelihood (scipy) on the arrival times of the prefix (the reactions before
the origin), measured in seconds after the source post, and then simulated forward from the origin,
conditioned on that history:

- ``decay``: a Poisson process whose rate decays exponentially from the source post toward a floor,
  ``rate(t) = mu + a * exp(-b t)``;
- ``hawkes``: a self-exciting (Hawkes) process with a constant background and an exponential kernel,
  ``rate(t) = mu + sum_{t_j < t} alpha * beta * exp(-beta (t - t_j))`` (``alpha`` < 1 is the branching ratio:
  the mean number of reactions each reaction triggers).

Both rates only fall between arrivals, so forward simulation is exact thinning (Ogata): propose the next
time from the current rate, accept with the ratio of the rate there to the bound.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

ARRIVAL_MODELS = ("hawkes", "decay")
_LOG_BOUND = 30.0  # fitted parameters live in [e^-30, e^30] (in units of the prefix's length)


def _minimize(negative_log_likelihood: Any, start: Sequence[Sequence[float]], bounds: Sequence[tuple[float, float]]) -> np.ndarray:
    """The best of L-BFGS-B runs from each start."""
    from scipy.optimize import minimize

    results = [minimize(negative_log_likelihood, np.asarray(x0, dtype=float), method="L-BFGS-B", bounds=bounds) for x0 in start]
    return min(results, key=lambda r: r.fun).x


class ArrivalModel(ABC):
    """A point process over seconds after the source post, fitted on the prefix's arrivals."""

    name: str

    @classmethod
    @abstractmethod
    def fit(cls, times: np.ndarray, end: float) -> ArrivalModel:
        """The maximum-likelihood model of arrivals ``times`` (sorted, seconds after the source) observed over [0, ``end``]."""

    @abstractmethod
    def rate(self, t: float) -> float:
        """The rate (arrivals per second) at ``t``, given the history and the arrivals accepted so far."""

    @abstractmethod
    def accept(self, t: float) -> None:
        """Record a simulated arrival at ``t`` (a self-exciting model's rate jumps)."""

    @abstractmethod
    def parameters(self) -> dict[str, float]:
        """The fitted parameters, in seconds."""

    @abstractmethod
    def restart(self) -> None:
        """Forget simulated arrivals: back to the fitted history."""

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, **{k: float(v) for k, v in self.parameters().items()}}

    def simulate(self, origin: float, rng: np.random.Generator, horizon: float | None = None, count: int | None = None,
                 limit: int = 100_000) -> list[float]:
        """Arrival times after ``origin`` (seconds after the source): those within ``horizon`` seconds, or the next ``count``;
        at most ``limit`` either way."""
        if (horizon is None) == (count is None):
            raise ValueError("give a horizon in time or a count of arrivals, not both")
        self.restart()
        t, arrivals = origin, []
        wanted = limit if count is None else min(count, limit)
        while len(arrivals) < wanted:
            bound = self.rate(t)
            t += rng.exponential(1.0 / bound)
            if horizon is not None and t > origin + horizon:
                break
            if rng.uniform() * bound <= self.rate(t):
                self.accept(t)
                arrivals.append(t)
        return arrivals


RESOLUTION = 1.0
"""Seconds: timestamps are this coarse (Weibo and Twitter stamp whole seconds). Reactions stamped in the same second are
spread evenly over that second before fitting, and no kernel decays faster than this, as finer timing is not observed."""


def _prepared(times: np.ndarray, end: float) -> tuple[np.ndarray, float, float]:
    """Arrival times scaled to the prefix's length (so that fitting is well conditioned), ties spread over their second;
    the scale; and the largest identifiable decay rate in scaled units (log)."""
    times = np.sort(np.asarray(times, dtype=float))
    if len(times) < 2:
        raise ValueError(f"cannot fit an arrival model on {len(times)} arrival(s): the prefix needs at least 2 reactions")
    if end <= 0:
        raise ValueError("cannot fit an arrival model: the prefix spans no time")
    values, first, repeats = np.unique(times, return_index=True, return_counts=True)
    spread = times.copy()
    for start, count in zip(first, repeats):
        if count > 1:  # the j-th of m ties at v moves to v - (m - 1 - j) / m seconds
            spread[start:start + count] -= (count - 1 - np.arange(count)) / count * RESOLUTION
    spread = np.clip(spread, 0.0, end)
    return spread / end, end, math.log(max(end / RESOLUTION, math.e))


@dataclass
class DecayingRate(ArrivalModel):
    """A Poisson process with ``rate(t) = mu + a * exp(-b t)`` (t in seconds after the source post)."""

    mu: float
    a: float
    b: float
    name = "decay"

    @classmethod
    def fit(cls, times: np.ndarray, end: float) -> DecayingRate:
        u, scale, fastest = _prepared(times, end)
        n = len(u)

        def negative(x: np.ndarray) -> float:
            mu, a, b = np.exp(x)
            compensator = mu + a / b * -math.expm1(-b)
            return float(compensator - np.log(mu + a * np.exp(-b * u)).sum())

        bound = (-_LOG_BOUND, _LOG_BOUND)
        mu, a, b = np.exp(_minimize(negative, [[math.log(n / 2), math.log(n), 0.0], [math.log(n / 10), math.log(5 * n), math.log(5.0)]],
                                    [bound, bound, (-_LOG_BOUND, fastest)]))
        return cls(mu / scale, a / scale, b / scale)

    def rate(self, t: float) -> float:
        return self.mu + self.a * math.exp(-self.b * t)

    def accept(self, t: float) -> None:
        return None

    def restart(self) -> None:
        return None

    def parameters(self) -> dict[str, float]:
        return {"mu": self.mu, "a": self.a, "b": self.b}


@dataclass
class Hawkes(ArrivalModel):
    """A Hawkes process with ``rate(t) = mu + sum_{t_j < t} alpha * beta * exp(-beta (t - t_j))``, conditioned on the
    prefix's arrivals (its excitation at the last one is ``excitation`` at ``last``)."""

    mu: float
    alpha: float
    beta: float
    last: float
    excitation: float
    name = "hawkes"

    def __post_init__(self) -> None:
        self._state = (self.last, self.excitation)

    @classmethod
    def fit(cls, times: np.ndarray, end: float) -> Hawkes:
        u, scale, fastest = _prepared(times, end)
        n = len(u)
        gaps = np.diff(u)

        def excitations(beta: float) -> np.ndarray:
            """A_i = sum_{j < i} exp(-beta (u_i - u_j)), by the usual recursion."""
            values = np.zeros(n)
            decay = np.exp(-beta * gaps)
            for i in range(1, n):
                values[i] = decay[i - 1] * (1.0 + values[i - 1])
            return values

        def negative(x: np.ndarray) -> float:
            mu, beta = math.exp(x[0]), math.exp(x[2])
            alpha = 1.0 / (1.0 + math.exp(-x[1]))
            compensator = mu + alpha * -np.expm1(-beta * (1.0 - u)).sum()
            return float(compensator - np.log(mu + alpha * beta * excitations(beta)).sum())

        bound = (-_LOG_BOUND, _LOG_BOUND)
        starts = [[math.log(n / 2), 0.0, min(math.log(10.0), fastest)], [math.log(n / 5), 1.5, min(math.log(100.0), fastest)]]
        x = _minimize(negative, starts, [bound, (-12.0, 12.0), (-_LOG_BOUND, fastest)])
        mu, alpha, beta = math.exp(x[0]), 1.0 / (1.0 + math.exp(-x[1])), math.exp(x[2])
        excitation = alpha * beta * (1.0 + excitations(beta)[-1])  # just after the last arrival, in scaled units
        return cls(mu / scale, alpha, beta / scale, float(u[-1] * scale), excitation / scale)

    def rate(self, t: float) -> float:
        last, excitation = self._state
        return self.mu + excitation * math.exp(-self.beta * max(t - last, 0.0))

    def accept(self, t: float) -> None:
        last, excitation = self._state
        self._state = (t, excitation * math.exp(-self.beta * (t - last)) + self.alpha * self.beta)

    def restart(self) -> None:
        self._state = (self.last, self.excitation)

    def parameters(self) -> dict[str, float]:
        return {"mu": self.mu, "alpha": self.alpha, "beta": self.beta}


def fit_arrivals(kind: str, times: Sequence[float], end: float) -> ArrivalModel:
    """Fit the arrival model ``kind`` (one of :data:`ARRIVAL_MODELS`) on ``times`` observed over [0, ``end``] seconds."""
    models: dict[str, type[ArrivalModel]] = {"hawkes": Hawkes, "decay": DecayingRate}
    if kind not in models:
        raise ValueError(f"unknown arrival model {kind!r}: use {', '.join(ARRIVAL_MODELS)}")
    return models[kind].fit(np.asarray(times, dtype=float), end)
