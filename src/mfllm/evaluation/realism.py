"""Realism: whether the simulated texts read like the real ones beside them, measured on the texts alone
(no model). Chinese is measured in characters, other languages in words. Bare reposts (no words) are left
out of every text metric and counted in the kind shares. Every rule is documented in the README
("Evaluating fidelity", Realism)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, Sequence

import numpy as np
from scipy.stats import wasserstein_distance

from mfllm.prompts import ACTION_CHOICES, action_choice, needs_text

REPEAT_SIZES = {"zh": range(2, 7), "en": range(2, 5)}
"""Piece sizes (characters for zh, words otherwise) the repetition rule looks for."""
REPEAT_TIMES = {"zh": 4, "en": 3}
REPEAT_COVERAGE = 0.3
"""A text is degenerate when one piece of at least two distinct tokens occurs REPEAT_TIMES times or more
(non-overlapping) and its occurrences cover at least REPEAT_COVERAGE of the text's tokens (so a name said
four times in a long comment is not a repetition)."""
LOW_DIVERSITY_MIN_TOKENS = {"zh": 20, "en": 12}
LOW_DIVERSITY_RATIO = 0.3
"""A text of at least LOW_DIVERSITY_MIN_TOKENS tokens with fewer distinct tokens per token than this is degenerate."""
COPY_MIN_TOKENS = {"zh": 6, "en": 4}
"""Texts shorter than this are never counted as copied (short phrases occur in any prompt)."""
COPY_COVERAGE = 0.8
"""A text is copied when its longest common substring with the prompt covers this share of its characters."""
DIVERSITY_BUDGET = 200
"""Distinct-n is measured on this many n-grams of each side (fewer when a side has fewer)."""
DIVERSITY_DRAWS = 10
DIVERSITY_MIN_NGRAMS = 20
DISCRIMINATOR_FOLDS = 5
DISCRIMINATOR_REPEATS = 4

_WORD = re.compile(r"\w+(?:['’]\w+)*")
_DATE_TIME = re.compile(r"\d{1,4}\s*[-/.年]\s*\d{1,2}\s*[-/.月]\s*\d{1,4}\s*日?|\d{1,2}\s*[:：]\s*\d{2}(?:\s*[:：]\s*\d{2})?(?:\s*[AaPp]\.?[Mm]\b\.?)?")
_DIGITS = re.compile(r"\d+")


def _unit(language: str) -> str:
    """``zh`` (characters) or ``en`` (words): the rule set a language is measured with."""
    return "zh" if language == "zh" else "en"


def tokens(text: str, language: str) -> list[str]:
    """The text's characters (zh, whitespace dropped) or lower-cased words (other languages)."""
    if _unit(language) == "zh":
        return [c for c in text if not c.isspace()]
    return _WORD.findall(text.lower())


def normalise(text: str) -> str:
    """The text with runs of whitespace collapsed to one space and the ends stripped."""
    return " ".join(text.split())


def has_text(kind: str, text: str | None) -> bool:
    """Whether an action carries words (a comment or a repost with words, not a bare repost)."""
    return text is not None and bool(text.strip()) and needs_text(action_choice(kind, text))


def _repeated_piece(toks: Sequence[str], sizes: range, times: int) -> bool:
    for n in sizes:
        needed = max(times, REPEAT_COVERAGE * len(toks) / n)
        next_free: dict[tuple[str, ...], int] = {}
        count: Counter[tuple[str, ...]] = Counter()
        for i in range(len(toks) - n + 1):
            piece = tuple(toks[i:i + n])
            if len(set(piece)) < 2 or i < next_free.get(piece, 0):
                continue
            next_free[piece] = i + n
            count[piece] += 1
            if count[piece] >= needed:
                return True
    return False


def _numeric(text: str) -> bool:
    """Only a timestamp, a numbered list or digits: under two letters outside dates, times and numbers,
    with a date or time in it or at least three separate numbers."""
    stamped = _DATE_TIME.search(text) is not None
    rest = _DATE_TIME.sub(" ", text)
    letters = sum(c.isalpha() for c in _DIGITS.sub("", rest))
    return letters < 2 and (stamped or len(_DIGITS.findall(rest)) >= 3)


def degenerate_reason(text: str, language: str) -> str | None:
    """Why the text is degenerate (``repetition``, ``low-diversity``, ``numeric``), or None."""
    unit = _unit(language)
    toks = tokens(text, language)
    if _repeated_piece(toks, REPEAT_SIZES[unit], REPEAT_TIMES[unit]):
        return "repetition"
    if len(toks) >= LOW_DIVERSITY_MIN_TOKENS[unit] and len(set(toks)) / len(toks) < LOW_DIVERSITY_RATIO:
        return "low-diversity"
    if _numeric(text):
        return "numeric"
    return None


def duplicates(texts: Sequence[str]) -> list[bool]:
    """Whether each text equals (after whitespace normalisation) an earlier one in ``texts``."""
    seen: set[str] = set()
    flags = []
    for text in texts:
        key = normalise(text)
        flags.append(key in seen)
        seen.add(key)
    return flags


def copied(text: str, prompt: str, language: str) -> bool:
    """Whether a text of at least COPY_MIN_TOKENS tokens is taken from ``prompt``: its longest common
    substring with the prompt (whitespace normalised) covers at least COPY_COVERAGE of its characters."""
    if len(tokens(text, language)) < COPY_MIN_TOKENS[_unit(language)]:
        return False
    a, b = normalise(text), normalise(prompt)
    if a in b:
        return True
    match = SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
    return match.size >= COPY_COVERAGE * len(a)


def length_distance(real_lengths: Sequence[int], sim_lengths: Sequence[int]) -> dict[str, float | None]:
    """Medians of both length distributions, their ratio (sim / real) and the Wasserstein-1 distance
    between the distributions of log(1 + length)."""
    if not real_lengths or not sim_lengths:
        return {"length_median_real": None, "length_median_sim": None, "length_ratio": None, "length_wasserstein_log": None}
    real, sim = float(np.median(real_lengths)), float(np.median(sim_lengths))
    return {"length_median_real": real, "length_median_sim": sim, "length_ratio": sim / real if real else None,
            "length_wasserstein_log": float(wasserstein_distance(np.log1p(real_lengths), np.log1p(sim_lengths)))}


def _ngrams(texts: Sequence[str], language: str, n: int) -> list[list[tuple[str, ...]]]:
    out = []
    for text in texts:
        toks = tokens(text, language)
        out.append([tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)])
    return out


def _distinct(per_text: list[list[tuple[str, ...]]], budget: int, rng: np.random.Generator) -> float:
    """Distinct n-grams among the first ``budget`` n-grams of the texts in a random order, per n-gram."""
    values = []
    for _ in range(DIVERSITY_DRAWS):
        stream = [g for i in rng.permutation(len(per_text)) for g in per_text[i]][:budget]
        values.append(len(set(stream)) / budget)
    return float(np.mean(values))


def distinct_n(real_texts: Sequence[str], sim_texts: Sequence[str], language: str, n: int, seed: int = 0
               ) -> tuple[float | None, float | None]:
    """(real, simulated) distinct-n: distinct n-grams per n-gram (characters for zh, words otherwise), both
    measured on the same number of n-grams (DIVERSITY_BUDGET, or the smaller side's count) so that the
    side with more text is not penalised; None when a side has fewer than DIVERSITY_MIN_NGRAMS."""
    real, sim = _ngrams(real_texts, language, n), _ngrams(sim_texts, language, n)
    budget = min(DIVERSITY_BUDGET, sum(map(len, real)), sum(map(len, sim)))
    if budget < DIVERSITY_MIN_NGRAMS:
        return None, None
    rng = np.random.default_rng(seed)
    return _distinct(real, budget, rng), _distinct(sim, budget, rng)


def discriminator_accuracy(real_texts: Sequence[str], sim_texts: Sequence[str], seed: int = 0) -> float | None:
    """Cross-validated accuracy of a classifier telling real from simulated texts (character 1-3-gram
    tf-idf, logistic regression): DISCRIMINATOR_REPEATS times, the larger side is subsampled to the
    smaller one's size (balanced classes) and scored by stratified DISCRIMINATOR_FOLDS-fold CV; the mean
    over folds and repeats. 0.5 means indistinguishable. None with fewer texts than folds on a side."""
    size = min(len(real_texts), len(sim_texts))
    if size < DISCRIMINATOR_FOLDS:
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
        texts = [real_texts[i] for i in rng.choice(len(real_texts), size, replace=False)]
        texts += [sim_texts[i] for i in rng.choice(len(sim_texts), size, replace=False)]
        labels = [0] * size + [1] * size
        model = make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True), LogisticRegression(solver="liblinear"))
        folds = StratifiedKFold(DISCRIMINATOR_FOLDS, shuffle=True, random_state=seed * DISCRIMINATOR_REPEATS + repeat)
        scores.extend(cross_val_score(model, texts, labels, cv=folds, scoring="accuracy"))
    return float(np.mean(scores))


def kind_shares(actions: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Share of each action choice (comment, repost with words, bare repost) among ``(kind, text)`` actions."""
    counts = Counter(action_choice(kind, text or "") for kind, text in actions)
    return {choice: counts[choice] / len(actions) if actions else 0.0 for choice in ACTION_CHOICES}


def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


@dataclass(frozen=True)
class Realism:
    """Realism of one run: real beside simulated texts of the same agents (``*_real`` / ``*_sim``)."""

    texts_real: int
    texts_sim: int
    discriminator_accuracy: float | None
    length_median_real: float | None
    length_median_sim: float | None
    length_ratio: float | None
    length_wasserstein_log: float | None
    degenerate_real: float | None
    degenerate_sim: float | None
    duplicate_real: float | None
    duplicate_sim: float | None
    copied_real: float | None
    copied_sim: float | None
    distinct1_real: float | None
    distinct1_sim: float | None
    distinct2_real: float | None
    distinct2_sim: float | None
    comment_real: float
    comment_sim: float
    repost_with_text_real: float
    repost_with_text_sim: float
    repost_real: float
    repost_sim: float
    degenerate_examples: list[str]
    """Up to three degenerate simulated texts, for the reader."""

    def values(self) -> dict[str, Any]:
        """The numeric metrics by name (no examples)."""
        return {k: v for k, v in self.__dict__.items() if k != "degenerate_examples"}


REALISM_COLUMNS = ("discriminator_accuracy", "length_median", "length_ratio", "length_wasserstein_log", "degenerate", "duplicate",
                   "copied", "distinct1", "distinct2", "comment", "repost_with_text", "repost")
"""The realism metrics in table order; those with ``_real``/``_sim`` fields are shown real beside simulated,
the others (comparisons of the two sides) for the simulated side only."""


def realism_value(realism: Realism | None, column: str, side: str) -> float | None:
    """``column`` of ``realism`` for ``side`` (``real`` or ``sim``); None where it has no such side."""
    if realism is None:
        return None
    values = realism.values()
    return values.get(f"{column}_{side}", values.get(column) if side == "sim" else None)


def measure_realism(real: Sequence[tuple[str, str]], sim: Sequence[tuple[str, str]], prompts: Sequence[str] | None,
                    language: str, seed: int = 0) -> Realism:
    """Realism of aligned real and simulated ``(kind, text)`` actions of the same agents; ``prompts``
    (aligned, the text each agent's prompt showed) gives the copied shares."""
    if len(real) != len(sim) or (prompts is not None and len(prompts) != len(sim)):
        raise ValueError(f"misaligned actions: {len(real)} real, {len(sim)} simulated, {len(prompts or [])} prompts")
    real_rows = [(i, text) for i, (kind, text) in enumerate(real) if has_text(kind, text)]
    sim_rows = [(i, text) for i, (kind, text) in enumerate(sim) if has_text(kind, text)]
    real_texts, sim_texts = [t for _, t in real_rows], [t for _, t in sim_rows]
    reasons = [degenerate_reason(t, language) for t in sim_texts]
    distinct1, distinct2 = distinct_n(real_texts, sim_texts, language, 1, seed), distinct_n(real_texts, sim_texts, language, 2, seed)
    real_kinds, sim_kinds = kind_shares(real), kind_shares(sim)
    copies: dict[str, float | None] = {"copied_real": None, "copied_sim": None}
    if prompts is not None:
        copies = {f"copied_{side}": _share([copied(t, prompts[i], language) for i, t in rows])
                  for side, rows in (("real", real_rows), ("sim", sim_rows))}
    return Realism(
        texts_real=len(real_texts), texts_sim=len(sim_texts),
        discriminator_accuracy=discriminator_accuracy(real_texts, sim_texts, seed),
        **length_distance([len(tokens(t, language)) for t in real_texts], [len(tokens(t, language)) for t in sim_texts]),
        degenerate_real=_share([degenerate_reason(t, language) is not None for t in real_texts]),
        degenerate_sim=_share([r is not None for r in reasons]),
        duplicate_real=_share(duplicates(real_texts)), duplicate_sim=_share(duplicates(sim_texts)), **copies,
        distinct1_real=distinct1[0], distinct1_sim=distinct1[1], distinct2_real=distinct2[0], distinct2_sim=distinct2[1],
        **{f"{choice}_real": real_kinds[choice] for choice in ACTION_CHOICES},
        **{f"{choice}_sim": sim_kinds[choice] for choice in ACTION_CHOICES},
        degenerate_examples=[t for t, r in zip(sim_texts, reasons) if r is not None][:3],
    )
