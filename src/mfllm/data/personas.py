"""Private state s_i: a short persona text built from every profile field that is present.

Fields that are absent in the data are written as "unknown" ("未知"); nothing is invented (the
original MF-LLM code dropped most fields and wrote every agent as female).
"""

from __future__ import annotations

from mfllm.data.schema import UserProfile

_BANDS = (100, 1_000, 10_000, 100_000)
_AUDIENCE = {
    "zh": ("不足100", "100–1000", "1千–1万", "1万–10万", "10万以上"),
    "en": ("under 100", "100–1k", "1k–10k", "10k–100k", "over 100k"),
}
_ACTIVITY = {
    "zh": ("很少发帖", "偶尔发帖", "经常发帖", "非常活跃", "极其活跃"),
    "en": ("rarely posts", "posts occasionally", "posts regularly", "very active", "extremely active"),
}
_LABELS = {
    "zh": dict(gender="性别", male="男", female="女", location="地区", description="简介", followers="粉丝数",
               friends="关注数", mutual="互粉数", activity="活跃度", verified="认证", yes="已认证", no="未认证",
               unknown="未知", sep="；", colon="："),
    "en": dict(gender="gender", male="male", female="female", location="location", description="bio", followers="followers",
               friends="following", mutual="mutual followers", activity="activity", verified="verified", yes="yes", no="no",
               unknown="unknown", sep="; ", colon=": "),
}
MAX_DESCRIPTION_CHARS = 60


def _band(count: int) -> int:
    return sum(count >= edge for edge in _BANDS)


def persona_text(user: UserProfile, language: str, short: bool = False) -> str:
    """Render ``user`` as one line in ``language`` ("zh" or "en").

    ``short`` keeps gender, location, followers and verification: the form used inside mean-field
    updates, where a whole batch of personas shares one prompt.
    """
    words = _LABELS[language]
    unknown = words["unknown"]

    def count(value: int | None) -> str:
        return unknown if value is None else _AUDIENCE[language][_band(value)]

    if user.verified is None:
        verified = unknown
    elif user.verified:
        verified = words["yes"] + (f"（{user.verified_reason}）" if language == "zh" and user.verified_reason else
                                   f" ({user.verified_reason})" if user.verified_reason else "")
    else:
        verified = words["no"]
    description = user.description or unknown
    if len(description) > MAX_DESCRIPTION_CHARS:
        description = description[:MAX_DESCRIPTION_CHARS] + "…"
    parts = [
        (words["gender"], words[user.gender] if user.gender else unknown),
        (words["location"], user.location or unknown),
        (words["followers"], count(user.followers_count)),
        (words["friends"], count(user.friends_count)),
    ]
    if user.bi_followers_count is not None:
        parts.append((words["mutual"], count(user.bi_followers_count)))
    parts += [
        (words["activity"], unknown if user.statuses_count is None else _ACTIVITY[language][_band(user.statuses_count // 10)]),
        (words["verified"], verified),
        (words["description"], description.replace("\n", " ")),
    ]
    if short:
        parts = [p for p in parts if p[0] in (words["gender"], words["location"], words["followers"], words["verified"])]
    return words["sep"].join(f"{name}{words['colon']}{value}" for name, value in parts)
