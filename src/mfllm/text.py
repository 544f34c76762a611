"""Rules about action texts that simulation and evaluation share: how a text's length is counted, when
two texts are the same, when a text is degenerate (a repetition loop or no words at all), when it is
copied from the prompt its agent was shown, and how it opens.

Simulation keeps degenerate, repeated and copied texts out of what the next agents are shown, and shows no
two that open alike; evaluation reports how many a run has, real beside simulated, by the same rules.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from difflib import SequenceMatcher
from typing import Sequence

TIMESTAMP = re.compile(r"\d{1,4}[-/.年]\d{1,2}[-/.月]\d{1,4}日?|\d{1,2}:\d{2}(:\d{2})?")
"""Dates and clock times (``2017-12-03``, ``10/12/2020``, ``21:49:53``), removed before looking for words."""
REPEATS = 4
"""How often a piece must occur for a text to be a repetition loop."""
CHARACTER_PIECES = range(2, 7)
"""Lengths in characters of the pieces looked for in a text without spaces (Chinese)."""
WORD_PIECES = range(2, 5)
"""Lengths in words of the pieces looked for in a text with spaces (English)."""
MIN_DISTINCT = 0.3
"""Below this share of distinct units (characters, or words in spaced text) among at least
:data:`DISTINCT_FROM` units, a text is a loop of a few units (``咳嗽，咳，咳嗽，咳嗽，咳，咳，咳``)."""
DISTINCT_FROM = 8
COPY_MIN_CHARACTERS, COPY_MIN_WORDS = 6, 4
"""Shortest text counted as copied, in :func:`tokens` (characters for zh, words otherwise): short phrases
occur in any prompt."""
COPY_COVERAGE = 0.8
"""Share of a text's (normalised) characters its longest common substring with the prompt must cover."""
OPENING_UNITS = 3
"""How many units (:func:`tokens` of the normalised text) make a text's opening (:func:`common_opening_share`)."""

_WORD = re.compile(r"\w+(?:['’]\w+)*")


def tokens(text: str, language: str) -> list[str]:
    """What length and diversity count: the text's characters without blanks (zh) or its lower-cased words
    (any other language)."""
    if language == "zh":
        return [c for c in text if not c.isspace()]
    return _WORD.findall(text.lower())


def normalise(text: str) -> str:
    """The form in which two texts count as the same: Unicode NFKC, lower case, letters and digits only
    (``戴口罩必会！`` and ``戴口罩 必会`` are one text); a text without any keeps its other characters, blanks
    removed (``👍`` stays ``👍``)."""
    folded = unicodedata.normalize("NFKC", text).lower()
    kept = "".join(c for c in folded if _is_word_character(c))
    return kept or "".join(folded.split())


def _is_word_character(character: str) -> bool:
    return unicodedata.category(character)[0] in "LN"


def has_words(text: str) -> bool:
    """Whether ``text`` has a letter or ideograph once dates, times, digits and punctuation are removed."""
    return any(unicodedata.category(c)[0] == "L" for c in TIMESTAMP.sub(" ", text))


def repeated_piece(text: str) -> str | None:
    """A piece that occurs :data:`REPEATS` or more times (non-overlapping) in ``text``, or None.

    Text with spaces (English) is read as lower-case words and the pieces are runs of 2–4 words; text
    without (Chinese) is read as its letters, ideographs and digits, punctuation and blanks removed, and
    the pieces are runs of 2–6 characters (``哈哈哈哈哈哈哈哈`` repeats ``哈哈`` four times and counts). A text
    of few distinct units (:data:`MIN_DISTINCT`) is a loop too; its most frequent unit is returned."""
    words = re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text).lower())
    if spaced(text):
        if len(words) >= DISTINCT_FROM and len(set(words)) / len(words) < MIN_DISTINCT:
            return Counter(words).most_common(1)[0][0]
        for size in WORD_PIECES:
            grams = Counter(tuple(words[i:i + size]) for i in range(0, len(words) - size + 1))
            for gram, count in grams.items():
                if count >= REPEATS and _non_overlapping(words, list(gram)) >= REPEATS:
                    return " ".join(gram)
        return None
    letters = "".join(c for c in unicodedata.normalize("NFKC", text).lower() if _is_word_character(c))
    if len(letters) >= DISTINCT_FROM and len(set(letters)) / len(letters) < MIN_DISTINCT:
        return Counter(letters).most_common(1)[0][0]
    for size in CHARACTER_PIECES:
        if len(letters) < size * REPEATS:
            break
        for piece in {letters[i:i + size] for i in range(len(letters) - size + 1)}:
            if letters.count(piece) >= REPEATS:
                return piece
    return None


def spaced(text: str) -> bool:
    """Whether ``text`` is written in words separated by spaces: more Latin letters than ideographs."""
    ideographs = sum(1 for c in text if "CJK" in unicodedata.name(c, ""))
    latin = sum(1 for c in text if c.isascii() and c.isalpha())
    return latin > ideographs


def _non_overlapping(words: list[str], gram: list[str]) -> int:
    count, i = 0, 0
    while i <= len(words) - len(gram):
        if words[i:i + len(gram)] == gram:
            count, i = count + 1, i + len(gram)
        else:
            i += 1
    return count


def is_degenerate(text: str) -> bool:
    """A text no person writes as a reaction: it has no words (a timestamp, a numbered list, digits and
    punctuation), or a piece of it repeats :data:`REPEATS` times (:func:`repeated_piece`)."""
    return not has_words(text) or repeated_piece(text) is not None


def copied(text: str, prompt: str, language: str) -> bool:
    """Whether a text of at least :data:`COPY_MIN_CHARACTERS` (zh) or :data:`COPY_MIN_WORDS` is taken from
    ``prompt`` (the one its agent was shown): its longest common substring with the prompt, both
    normalised, covers at least :data:`COPY_COVERAGE` of it."""
    if len(tokens(text, language)) < (COPY_MIN_CHARACTERS if language == "zh" else COPY_MIN_WORDS):
        return False
    a, b = normalise(text), normalise(prompt)
    if a in b:
        return True
    match = SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
    return match.size >= COPY_COVERAGE * len(a)


def opening(text: str, language: str) -> tuple[str, ...] | None:
    """A text's first :data:`OPENING_UNITS` units (characters for zh, words otherwise) once normalised
    (:func:`normalise`: no punctuation, lower case); None for a shorter text."""
    units = tokens(normalise(text), language) if language == "zh" else tokens(text, language)
    return tuple(units[:OPENING_UNITS]) if len(units) >= OPENING_UNITS else None


def common_opening_share(texts: Sequence[str], language: str) -> float | None:
    """The share of texts (those long enough to have an :func:`opening`) that begin with their most common
    opening: a population whose replies all start alike (``大家好，我是…``) has fallen into a template even
    when no two texts are equal. None without any such text."""
    openings = [o for o in (opening(t, language) for t in texts) if o is not None]
    return Counter(openings).most_common(1)[0][1] / len(openings) if openings else None
