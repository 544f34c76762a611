"""Realism: whether simulated texts read like the real reactions beside them, beyond their label shares.

Every measure compares the run's simulated actions with the real reactions of the same slots; texts are
those of comments and reposts with words (a bare repost has none). Definitions (also in the README):

- ``discriminator_accuracy``: character 1–3-gram tf-idf and a logistic regression, 5-fold stratified
  cross-validation (seeded), trained to tell real from simulated texts of the run, the larger side
  subsampled to the smaller; 0.5 means indistinguishable.
- ``length_w1``: Wasserstein-1 distance between the real and simulated distributions of ``log(1 + length)``
  (length in characters without blanks for text without spaces, in words for English), with the medians.
- ``degenerate_*``: the share of texts :func:`mfllm.text.is_degenerate` flags, real and simulated.
- ``duplicate_*``: the share of texts equal (:func:`mfllm.text.normalise`) to an earlier text of the same
  side of the run.
- ``copied_sim``: the share of simulated texts of at least :data:`MIN_COPY_UNITS` letters whose normalised
  form appears inside the normalised context the agent was shown (or the source post).
- ``distinct1_*``/``distinct2_*``: distinct unigrams and bigrams (characters, or words in English) per
  unit, on the first N units of each side, N the smaller side's total, so size does not bias them.
- ``share_<choice>_*``: shares of comments, reposts with words and bare reposts, real and simulated.
"""

from __future__ import annotations

import math
import random
import statistics
from typing import Any, Sequence

import numpy as np
from scipy.stats import wasserstein_distance

from mfllm.prompts import ACTION_CHOICES, action_choice, needs_text
from mfllm.text import is_degenerate, normalise, spaced

MIN_COPY_UNITS = 6
"""Shortest simulated text (letters and digits) that counts as copied from the prompt."""
FOLDS = 5
MIN_PER_CLASS = 10
"""Texts needed on each side for the discriminator."""


def units(text: str) -> list[str]:
    """What length and diversity count: words in spaced (English) text, else characters without blanks."""
    return text.lower().split() if spaced(text) else [c for c in text if not c.isspace()]


def discriminator_accuracy(real: Sequence[str], simulated: Sequence[str], seed: int = 0) -> float | None:
    """Cross-validated accuracy of a classifier telling ``real`` from ``simulated`` texts (None when either
    side has fewer than :data:`MIN_PER_CLASS`)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline

    size = min(len(real), len(simulated))
    if size < MIN_PER_CLASS:
        return None
    rng = random.Random(seed)
    texts = rng.sample(list(real), size) + rng.sample(list(simulated), size)
    labels = [0] * size + [1] * size
    model = make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(n_splits=min(FOLDS, size), shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(model, texts, labels, cv=folds)))


def duplicate_share(texts: Sequence[str]) -> float | None:
    """Share of texts equal to an earlier one (normalised)."""
    seen: set[str] = set()
    repeats = 0
    for text in texts:
        key = normalise(text)
        repeats += key in seen
        seen.add(key)
    return repeats / len(texts) if texts else None


def distinct(texts: Sequence[str], n: int, budget: int) -> float | None:
    """Distinct ``n``-grams of units per unit over the first ``budget`` units of ``texts`` (n-grams do not
    cross texts)."""
    grams: set[tuple[str, ...]] = set()
    used = 0
    for text in texts:
        taken = units(text)[:budget - used]
        grams.update(tuple(taken[i:i + n]) for i in range(len(taken) - n + 1))
        used += len(taken)
        if used >= budget:
            break
    return len(grams) / used if used else None


def _share(values: Sequence[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def realism(rows: Sequence[dict[str, Any]], contexts: dict[int, str] | None = None, topic: str = "", seed: int = 0) -> dict[str, Any]:
    """The realism measures of a run's rows (each with ``real_kind``, ``real_text``, ``sim_choice`` and
    ``sim_text``; failed and unpaired rows already left out). ``contexts`` maps a step to the context text
    its agents saw (for ``copied_sim``)."""
    real = [r["real_text"] for r in rows if needs_text(action_choice(r["real_kind"], r["real_text"]))]
    simulated_rows = [r for r in rows if needs_text(r["sim_choice"])]
    simulated = [r["sim_text"] for r in simulated_rows]
    out: dict[str, Any] = {"texts_real": len(real), "texts_sim": len(simulated),
                           "discriminator_accuracy": discriminator_accuracy(real, simulated, seed)}
    real_lengths, sim_lengths = [len(units(t)) for t in real], [len(units(t)) for t in simulated]
    out["length_w1"] = float(wasserstein_distance(np.log1p(real_lengths), np.log1p(sim_lengths))) if real and simulated else None
    out["median_length_real"] = statistics.median(real_lengths) if real else None
    out["median_length_sim"] = statistics.median(sim_lengths) if simulated else None
    for side, texts in (("real", real), ("sim", simulated)):
        out[f"degenerate_{side}"] = _share([is_degenerate(t) for t in texts])
        out[f"duplicate_{side}"] = duplicate_share(texts)
    if contexts is not None:
        shown = {step: normalise(f"{topic}\n{text}") for step, text in contexts.items()}
        out["copied_sim"] = _share([len(key := normalise(r["sim_text"])) >= MIN_COPY_UNITS and key in shown.get(r["step"], "")
                                    for r in simulated_rows])
    budget = min(sum(len(units(t)) for t in real), sum(len(units(t)) for t in simulated))
    for n in (1, 2):
        out[f"distinct{n}_real"] = distinct(real, n, budget) if budget else None
        out[f"distinct{n}_sim"] = distinct(simulated, n, budget) if budget else None
    real_choices = [action_choice(r["real_kind"], r["real_text"]) for r in rows]
    for choice in ACTION_CHOICES:
        out[f"share_{choice}_real"] = _share([c == choice for c in real_choices])
        out[f"share_{choice}_sim"] = _share([r["sim_choice"] == choice for r in rows])
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


REALISM_METRICS = ("discriminator_accuracy", "length_w1", "median_length_real", "median_length_sim", "degenerate_real", "degenerate_sim",
                   "duplicate_real", "duplicate_sim", "copied_sim", "distinct1_real", "distinct1_sim", "distinct2_real", "distinct2_sim",
                   *(f"share_{c}_{side}" for c in ACTION_CHOICES for side in ("real", "sim")))
"""The measures tables show, in order."""
