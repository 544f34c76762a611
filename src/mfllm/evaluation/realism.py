"""Realism: whether the simulated texts read like the real reactions of the same slots, beyond their label
shares, measured on the texts alone (no model). Chinese is measured in characters, other languages in
words. Texts are those of comments and reposts with words; bare reposts have none and count only in the
kind shares. Definitions (also in the README, "Evaluating fidelity", Realism):

- ``discriminator_accuracy``: character 1–3-gram tf-idf and a logistic regression tell the run's real
  from its simulated texts, stratified 5-fold cross-validation, the larger side subsampled to the smaller
  (balanced), 4 seeded repeats averaged; 0.5 means indistinguishable.
- ``length_w1``: Wasserstein-1 distance between the distributions of ``log(1 + length)``, with the medians.
- ``degenerate_*``: the share of texts :func:`mfllm.text.is_degenerate` flags (the rule simulation uses).
- ``duplicate_*``: the share of texts equal (:func:`mfllm.text.normalise`) to an earlier one of the same
  side of the run.
- ``copied_sim``: the share of simulated texts :func:`mfllm.text.copied` flags (the rule simulation uses):
  texts of at least :data:`~mfllm.text.COPY_MIN_CHARACTERS` (zh) or :data:`~mfllm.text.COPY_MIN_WORDS` whose
  longest common substring with the agent's own prompt (normalised) covers at least
  :data:`~mfllm.text.COPY_COVERAGE` of the text.
- ``distinct1_*``/``distinct2_*``: distinct n-grams per n-gram, both sides on the same number of n-grams.
- ``common_opening_*``: the share of texts that begin like the side's most common opening (its first 3
  characters or words once normalised; :func:`mfllm.text.common_opening_share`), a template no exact
  duplicate shows.
- ``share_<choice>_*``: shares of comments, reposts with words and bare reposts.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy.stats import wasserstein_distance

from mfllm.prompts import ACTION_CHOICES, action_choice, needs_text
from mfllm.text import common_opening_share, copied, is_degenerate, normalise, tokens

DIVERSITY_BUDGET = 200
"""Distinct-n is measured on this many n-grams of each side (the smaller side's count when fewer)."""
DIVERSITY_DRAWS = 10
DIVERSITY_MIN_NGRAMS = 20
FOLDS = 5
DISCRIMINATOR_REPEATS = 4
MIN_PER_CLASS = 10
"""Texts needed on each side for the discriminator."""

def discriminator_accuracy(real: Sequence[str], simulated: Sequence[str], seed: int = 0) -> float | None:
    """Cross-validated accuracy of a classifier telling ``real`` from ``simulated`` texts:
    :data:`DISCRIMINATOR_REPEATS` times, both sides subsampled to the smaller one's size and scored by
    stratified :data:`FOLDS`-fold CV; the mean over folds and repeats. None when a side has fewer than
    :data:`MIN_PER_CLASS`."""
    size = min(len(real), len(simulated))
    if size < MIN_PER_CLASS:
        return None
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.pipeline import make_pipeline
    except ImportError as exc:
        raise ImportError("realism's discriminator needs scikit-learn: pip install 'mfllm[labellers]'") from exc
    rng = np.random.default_rng(seed)
    scores = []
    for repeat in range(DISCRIMINATOR_REPEATS):
        texts = [real[i] for i in rng.choice(len(real), size, replace=False)]
        texts += [simulated[i] for i in rng.choice(len(simulated), size, replace=False)]
        model = make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True), LogisticRegression(solver="liblinear"))
        folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed * DISCRIMINATOR_REPEATS + repeat)
        scores.extend(cross_val_score(model, texts, [0] * size + [1] * size, cv=folds, scoring="accuracy"))
    return float(np.mean(scores))


def duplicate_flags(texts: Sequence[str]) -> list[bool]:
    """Whether each text equals (normalised) an earlier one."""
    seen: set[str] = set()
    flags = []
    for text in texts:
        key = normalise(text)
        flags.append(key in seen)
        seen.add(key)
    return flags


def duplicate_share(texts: Sequence[str]) -> float | None:
    """Share of texts equal (normalised) to an earlier one."""
    return sum(duplicate_flags(texts)) / len(texts) if texts else None


def _ngrams(texts: Sequence[str], language: str, n: int) -> list[list[tuple[str, ...]]]:
    out = []
    for text in texts:
        units = tokens(text, language)
        out.append([tuple(units[i:i + n]) for i in range(len(units) - n + 1)])
    return out


def _distinct(per_text: list[list[tuple[str, ...]]], budget: int, rng: np.random.Generator) -> float:
    """Distinct n-grams among the first ``budget`` n-grams of the texts in a random order, per n-gram,
    averaged over :data:`DIVERSITY_DRAWS` orders."""
    values = []
    for _ in range(DIVERSITY_DRAWS):
        stream = [g for i in rng.permutation(len(per_text)) for g in per_text[i]][:budget]
        values.append(len(set(stream)) / budget)
    return float(np.mean(values))


def distinct_n(real: Sequence[str], simulated: Sequence[str], language: str, n: int, seed: int = 0) -> tuple[float | None, float | None]:
    """(real, simulated) distinct-n (characters for zh, words otherwise), both measured on the same number
    of n-grams (:data:`DIVERSITY_BUDGET`, or the smaller side's count) so that the side with more text is
    not penalised for it; None when a side has fewer than :data:`DIVERSITY_MIN_NGRAMS`."""
    real_grams, sim_grams = _ngrams(real, language, n), _ngrams(simulated, language, n)
    budget = min(DIVERSITY_BUDGET, sum(map(len, real_grams)), sum(map(len, sim_grams)))
    if budget < DIVERSITY_MIN_NGRAMS:
        return None, None
    rng = np.random.default_rng(seed)
    return _distinct(real_grams, budget, rng), _distinct(sim_grams, budget, rng)


def _share(values: Sequence[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def realism(rows: Sequence[dict[str, Any]], prompts: Sequence[str] | None, language: str, seed: int = 0) -> dict[str, Any]:
    """The realism measures of a run's rows (each with ``real_kind``, ``real_text``, ``sim_text`` and
    ``sim_choice`` or ``sim_kind``; failed and unpaired rows already left out). ``prompts`` (aligned with
    ``rows``, the text of each agent's prompt) gives ``copied_sim``."""
    if prompts is not None and len(prompts) != len(rows):
        raise ValueError(f"misaligned realism input: {len(rows)} rows, {len(prompts)} prompts")
    real_choices = [action_choice(r["real_kind"], r["real_text"]) for r in rows]
    sim_choices = [r.get("sim_choice") or action_choice(r["sim_kind"], r["sim_text"]) for r in rows]
    real = [r["real_text"] for r, c in zip(rows, real_choices) if needs_text(c) and r["real_text"].strip()]
    sim_slots = [i for i, (r, c) in enumerate(zip(rows, sim_choices)) if needs_text(c) and r["sim_text"].strip()]
    simulated = [rows[i]["sim_text"] for i in sim_slots]
    out: dict[str, Any] = {"texts_real": len(real), "texts_sim": len(simulated),
                           "discriminator_accuracy": discriminator_accuracy(real, simulated, seed)}
    real_lengths, sim_lengths = [len(tokens(t, language)) for t in real], [len(tokens(t, language)) for t in simulated]
    out["length_w1"] = float(wasserstein_distance(np.log1p(real_lengths), np.log1p(sim_lengths))) if real and simulated else None
    out["median_length_real"] = float(np.median(real_lengths)) if real else None
    out["median_length_sim"] = float(np.median(sim_lengths)) if simulated else None
    for side, texts in (("real", real), ("sim", simulated)):
        out[f"degenerate_{side}"] = _share([is_degenerate(t) for t in texts])
        out[f"duplicate_{side}"] = duplicate_share(texts)
        out[f"common_opening_{side}"] = common_opening_share(texts, language)
    if prompts is not None:
        out["copied_sim"] = _share([copied(rows[i]["sim_text"], prompts[i], language) for i in sim_slots])
    for n in (1, 2):
        out[f"distinct{n}_real"], out[f"distinct{n}_sim"] = distinct_n(real, simulated, language, n, seed)
    for choice in ACTION_CHOICES:
        out[f"share_{choice}_real"] = _share([c == choice for c in real_choices])
        out[f"share_{choice}_sim"] = _share([c == choice for c in sim_choices])
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


REALISM_METRICS = ("discriminator_accuracy", "length_w1", "median_length_real", "median_length_sim", "degenerate_real", "degenerate_sim",
                   "duplicate_real", "duplicate_sim", "copied_sim", "common_opening_real", "common_opening_sim", "distinct1_real", "distinct1_sim",
                   "distinct2_real", "distinct2_sim",
                   *(f"share_{c}_{side}" for c in ACTION_CHOICES for side in ("real", "sim")))
"""The measures of every evaluation (the method table's ``(realism)`` rows), in order."""

REALISM_COLUMNS = ("discriminator_accuracy", "length_w1", "median_length", "degenerate", "duplicate", "copied", "common_opening", "distinct1",
                   "distinct2", *(f"share_{c}" for c in ACTION_CHOICES))
"""The realism table's columns: those with ``_real``/``_sim`` measures are shown real beside simulated, the
others (comparisons of the two sides, or simulated only) for the simulated side."""


def realism_value(measures: dict[str, Any], column: str, side: str) -> float | None:
    """``column`` of a run's realism ``measures`` for ``side`` (``real`` or ``sim``); None where it has no such side."""
    return measures.get(f"{column}_{side}", measures.get(column) if side == "sim" else None)
