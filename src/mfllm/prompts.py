"""Every prompt mfllm sends, in the event's language; shared by simulation, training and evaluation.

Each builder returns a :class:`~mfllm.interfaces.Prompt` with both layouts: chat messages for
instruction-tuned models and a completion text for base models, whose last line is an answer cue
so the model's next line is the answer. The part shared by every agent of a step (topic, then
context) comes first, which suits prefix caching.

An action is written as a kind marker then its text, on one line: ``[评论] 真的吗`` (a comment),
``[转发并评论] 转发一下`` (a repost with words), ``[转发]`` (a bare repost, no text). Contexts show
actions the same way, so what the policy reads and what it writes share one form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mfllm.data.readers.base import WEIBO_DEFAULT_REPOST_TEXT
from mfllm.interfaces import AgentAction, Message, Prompt

MAX_TOPIC_CHARS = 300
MAX_ACTION_CHARS = 120


@dataclass(frozen=True)
class Templates:
    topic: str
    persona: str
    policy_system: str
    policy_instruction: str
    policy_cue: str
    policy_chosen: str
    mean_field_system: str
    mean_field_intro: str
    mean_field_examples: str
    mean_field_previous: str
    mean_field_none: str
    mean_field_batch: str
    mean_field_cue: str
    markers: dict[str, str]
    bare_repost_text: str


TEMPLATES: dict[str, Templates] = {
    "zh": Templates(
        topic="微博原帖：{topic}",
        persona="你的资料：{persona}",
        policy_system="你是一名微博用户。根据原帖、评论区的情况和你的个人资料，决定你会评论还是转发，并写出内容。",
        policy_instruction="请以你的身份做出一个反应：先写一个标记（{markers}），再在同一行写内容（{bare}后不写内容）。只写一行，不加解释。",
        policy_cue="一位网友（{persona}）：",
        policy_chosen="你选择了{marker}。请只写这条的内容，一行，不加解释。",
        mean_field_system="你负责把微博评论区的反应归纳成几个要点。",
        mean_field_intro="微博评论区的要点记录：把网友的反应归纳成几个要点，用“；”隔开，写一行。",
        mean_field_examples=(
            "微博原帖：某市宣布地铁票价从2元上调到3元，下月起执行。\n此前的要点：票价太贵；希望提高服务\n网友的反应：\n"
            "- [评论] 又涨价，工资怎么不涨\n- [转发]\n- [评论] 服务能跟上就支持\n- [转发并评论] 涨价前不开听证会吗\n"
            "要点：涨价负担重；服务好就支持；要求开听证会\n###\n"
            "微博原帖：网传某地明天起停水三天。\n此前的要点：（尚无）\n网友的反应：\n"
            "- [评论] 真的假的？求官方消息\n- [评论] 已经辟谣了，别传了\n- [转发]\n- [评论] 赶紧囤水吧\n"
            "要点：怀疑真假、求证；已辟谣；有人准备囤水\n###"
        ),
        mean_field_previous="此前的要点：{previous}",
        mean_field_none="（尚无）",
        mean_field_batch="网友的反应：",
        mean_field_cue="要点：",
        markers={"comment": "[评论]", "repost_with_text": "[转发并评论]", "repost": "[转发]"},
        bare_repost_text=WEIBO_DEFAULT_REPOST_TEXT,
    ),
    "en": Templates(
        topic="Post: {topic}",
        persona="Your profile: {persona}",
        policy_system="You are a social-media user. Given the post, the replies so far and your profile, decide whether you reply or share, and write it.",
        policy_instruction="React as yourself: first a marker ({markers}), then the text on the same line (nothing after {bare}). One line, no explanation.",
        policy_cue="A user ({persona}):",
        policy_chosen="You chose {marker}. Write only its text, on one line, with no explanation.",
        mean_field_system="You sum up the reactions to a social-media post as a few key points.",
        mean_field_intro="Key points of the replies to a post: the reactions summed up as a few points, separated by \"; \", on one line.",
        mean_field_examples=(
            "Post: The city will raise subway fares from $2 to $3 next month.\nPrevious points: fares too high; wants better service\n"
            "Reactions:\n- [reply] Again? Wages never go up\n- [share]\n- [reply] Fine if the trains get better\n"
            "- [share with comment] No public hearing first?\n"
            "Points: fare rise is a burden; accept it for better service; asks for a public hearing\n###\n"
            "Post: Rumour: the water will be cut for three days from tomorrow.\nPrevious points: (none yet)\nReactions:\n"
            "- [reply] Is this real? Any official source?\n- [reply] Already debunked, stop sharing\n- [share]\n"
            "- [reply] Stocking up on water now\nPoints: doubts, asks for a source; already debunked; some stock up\n###"
        ),
        mean_field_previous="Previous points: {previous}",
        mean_field_none="(none yet)",
        mean_field_batch="Reactions:",
        mean_field_cue="Points:",
        markers={"comment": "[reply]", "repost_with_text": "[share with comment]", "repost": "[share]"},
        bare_repost_text="RT",
    ),
}


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def render_context(header: str, context: str | None) -> str | None:
    """The context block of a policy prompt: a method's header over its context (None for no context)."""
    return f"{header}\n{context}" if context else None


ACTION_CHOICES = ("comment", "repost_with_text", "repost")
"""What an agent can do: comment (a reply counts as one), repost with words, or repost without."""
POLICY_STOP = ("\n",)
"""Where an action ends: it is one line."""


def policy_stops(language: str) -> tuple[str, ...]:
    """Where a generated action ends: the end of its line, or a kind marker (a base model that starts a
    second action on the same line has finished the first)."""
    return (*POLICY_STOP, *TEMPLATES[language].markers.values())
BARE_REPOST_TEXTS = frozenset({"", WEIBO_DEFAULT_REPOST_TEXT, "转发", "repost", "retweet", "rt"})
"""Texts a repost carries when its author wrote nothing (the platforms' defaults)."""


def action_choice(kind: str, text: str) -> str:
    """The choice (one of :data:`ACTION_CHOICES`) a recorded action of ``kind`` and ``text`` made."""
    if kind != "repost":
        return "comment"
    return "repost" if text.strip().lower() in BARE_REPOST_TEXTS else "repost_with_text"


def choice_kind(choice: str) -> str:
    """The action kind of a choice: a repost with or without words is a repost."""
    return "comment" if choice == "comment" else "repost"


def needs_text(choice: str) -> bool:
    return choice != "repost"


def bare_repost_text(language: str) -> str:
    """The text a bare repost carries on the event's platform (Weibo writes 转发微博)."""
    return TEMPLATES[language].bare_repost_text


def marker(choice: str, language: str) -> str:
    return TEMPLATES[language].markers[choice]


def action_line(kind: str, text: str, language: str, limit: int | None = None) -> str:
    """An action as contexts show it and the policy writes it: its marker, then its text unless it is a
    bare repost; ``limit`` clips the text."""
    choice = action_choice(kind, text)
    if not needs_text(choice):
        return marker(choice, language)
    return f"{marker(choice, language)} {_clip(text, limit) if limit else text.strip()}"


def render_actions(actions: Sequence[AgentAction], language: str) -> str:
    """A list of actions, one line each, as the recent-k and popular-k baselines show them."""
    return "\n".join(f"- {action_line(a.kind, a.text, language, MAX_ACTION_CHARS)}" for a in actions)


def policy_prompt(topic: str, persona: str, language: str, context: str | None = None, choice: str | None = None) -> Prompt:
    """Prompt for agent i's action given (topic, s_i, context block). Shared part first: topic, context.

    ``context`` is the block :func:`render_context` makes (a method's header over its context).
    The completion layout ends after the persona, where the action's kind marker comes; with a
    ``choice`` it ends right after that choice's marker, so the model's next tokens are the action's text
    as :func:`action_line` writes it (a space, then the words): tokenisers fold that space into the first
    word's token, which is how the scored and trained continuations read, so the prompt must not end in a
    lone space. Generation stops at the end of the line.
    """
    t = TEMPLATES[language]
    shared = "\n".join(part for part in (t.topic.format(topic=_clip(topic, MAX_TOPIC_CHARS)), context) if part)
    completion = f"{shared}\n\n{t.policy_cue.format(persona=persona)}"
    instruction = t.policy_instruction.format(markers="、".join(t.markers.values()) if language == "zh" else ", ".join(t.markers.values()),
                                              bare=t.markers["repost"])
    user = f"{shared}\n{t.persona.format(persona=persona)}\n\n{instruction}"
    if choice is not None:
        completion = f"{completion}{t.markers[choice]}"
        user = f"{user}\n{t.policy_chosen.format(marker=t.markers[choice])}"
    return Prompt((Message("system", t.policy_system), Message("user", user)), completion)


def strip_marker(text: str, language: str) -> str:
    """A generated text without a kind marker a chat model may repeat at its start."""
    text = text.strip()
    for shown in sorted(TEMPLATES[language].markers.values(), key=len, reverse=True):
        if text.startswith(shown):
            return text[len(shown):].strip()
    return text


MEAN_FIELD_STOP = ("\n", "###")
"""Where a mean-field update ends: its one line, or the record separator of the examples."""


def mean_field_prompt(topic: str, previous: str | None, actions: Sequence[AgentAction], language: str) -> Prompt:
    """Prompt for the key points m_t = μ(m_{t-1}, latest batch of actions).

    A base model cannot follow an instruction to summarise, but it continues a record: the completion
    layout shows two worked records (previous points, reactions, new points, ``###``) and ends at the
    new record's points cue, so the model's next line is the updated points.
    """
    t = TEMPLATES[language]
    items = "\n".join(f"- {action_line(a.kind, a.text, language, MAX_ACTION_CHARS)}" for a in actions)
    record = "\n".join((
        t.topic.format(topic=_clip(topic, MAX_TOPIC_CHARS)),
        t.mean_field_previous.format(previous=previous or t.mean_field_none),
        t.mean_field_batch,
        items,
    ))
    header = f"{t.mean_field_intro}\n\n{t.mean_field_examples}\n"
    user = f"{t.mean_field_intro}\n\n{record}"
    return Prompt((Message("system", t.mean_field_system), Message("user", user)), f"{header}{record}\n{t.mean_field_cue}", header=len(header))


LABEL_TEMPLATES = {
    "zh": dict(
        system="你是严谨的社会媒体内容标注员。",
        task="原帖：{topic}\n待标注的反应：{text}\n\n维度：{dimension}（{definition}）\n可选标签：{labels}\n"
             '只输出一个JSON对象，格式为 {{"label": "<标签>"}}，标签必须是可选标签之一。',
        cue='{{"label": "',
    ),
    "en": dict(
        system="You are a careful annotator of social-media content.",
        task="Source post: {topic}\nReaction to label: {text}\n\nDimension: {dimension} ({definition})\nAllowed labels: {labels}\n"
             'Answer with one JSON object only, {{"label": "<label>"}}, using one of the allowed labels.',
        cue='{{"label": "',
    ),
}


def label_prompt(topic: str, text: str, dimension_name: str, definition: str, labels: Sequence[str],
                 descriptions: Sequence[str], language: str, open_json: bool = False) -> Prompt:
    """Prompt for an LLM judge. ``open_json`` ends the completion inside the JSON value, for
    likelihood scoring of each label word."""
    t = LABEL_TEMPLATES[language]
    shown = ", ".join(f"{label} ({desc})" if desc else label for label, desc in zip(labels, descriptions or [""] * len(labels)))
    task = t["task"].format(topic=_clip(topic, MAX_TOPIC_CHARS), text=_clip(text, 2 * MAX_ACTION_CHARS), dimension=dimension_name,
                            definition=definition, labels=shown)
    completion = f"{task}\n" + (t["cue"].format() if open_json else "")
    return Prompt((Message("system", t["system"]), Message("user", task)), completion)


INTERVENTION_TEMPLATES = {
    "zh": dict(post="置顶微博（{author}）：{text}", notice="平台公告：{text}"),
    "en": dict(post="Pinned post by {author}: {text}", notice="Notice: {text}"),
}


def render_interventions(posts: Sequence[tuple[str, str]], notices: Sequence[str], language: str) -> str | None:
    """The interventions an agent sees above the context: pinned ``(author, text)`` posts, then notices
    (statements the method does not fold into a summary); None when there are none."""
    t = INTERVENTION_TEMPLATES[language]
    lines = [t["post"].format(author=_clip(author, MAX_ACTION_CHARS), text=_clip(text, MAX_TOPIC_CHARS)) for author, text in posts]
    lines += [t["notice"].format(text=_clip(text, MAX_TOPIC_CHARS)) for text in notices]
    return "\n".join(lines) or None
