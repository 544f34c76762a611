"""Every prompt mfllm sends, in the event's language; shared by simulation, training and evaluation.

Each builder returns a :class:`~mfllm.interfaces.Prompt` with both layouts: chat messages for
instruction-tuned models and a completion text for base models, whose last line is an answer cue
so the model's next line is the answer. The part shared by every agent of a step (topic, then
context) comes first, which suits prefix caching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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
    policy_stop: tuple[str, ...]
    mean_field_system: str
    mean_field_previous: str
    mean_field_none: str
    mean_field_batch: str
    mean_field_item: str
    mean_field_instruction: str
    mean_field_cue: str
    kinds: dict[str, str]


TEMPLATES: dict[str, Templates] = {
    "zh": Templates(
        topic="微博原帖：{topic}",
        persona="你的资料：{persona}",
        policy_system="你是一名微博用户。根据原帖、评论区的情况和你的个人资料，写出你会发的一条评论或转发语。",
        policy_instruction="请以你的身份写一条评论或转发语，只写内容本身，一行，不加解释。",
        policy_cue="一位网友（{persona}）在评论区写道：“",
        policy_stop=("\n", "”"),
        mean_field_system="你负责概括微博上大众对一条帖子的集体反应。",
        mean_field_previous="此前的概括：{previous}",
        mean_field_none="（尚无）",
        mean_field_batch="新一批用户的反应：",
        mean_field_item="{index}. [{kind}] {persona} 说：{text}",
        mean_field_instruction=(
            "请更新概括，用一段话（不超过{max_chars}字）写出：支持、反对和中立的大致比例，主要观点，主要情绪，"
            "转发与评论的比例，对原帖的相信或怀疑程度，以及主要意图（提问、表态或扩散信息）。只写一段。"
        ),
        mean_field_cue="更新后的评论区概况：",
        kinds={"comment": "评论", "repost": "转发", "reply": "回复"},
    ),
    "en": Templates(
        topic="Post: {topic}",
        persona="Your profile: {persona}",
        policy_system="You are a social-media user. Given the post, the replies so far and your profile, write the one reply or share comment you would post.",
        policy_instruction="Write your reply or share comment. Output only the text itself, on one line, with no explanation.",
        policy_cue='A user ({persona}) replied: "',
        policy_stop=("\n", '"'),
        mean_field_system="You summarise how a crowd collectively reacts to a social-media post.",
        mean_field_previous="Previous summary: {previous}",
        mean_field_none="(none yet)",
        mean_field_batch="Latest reactions:",
        mean_field_item="{index}. [{kind}] {persona} said: {text}",
        mean_field_instruction=(
            "Update the summary in one paragraph (at most {max_chars} words): the rough shares of support, opposition and "
            "neutrality, the main opinions, the dominant emotions, sharing versus commenting, how far people believe or doubt "
            "the post, and their main intent (asking, stating an opinion, spreading information). One paragraph only."
        ),
        mean_field_cue="Updated summary of the replies:",
        kinds={"comment": "comment", "repost": "share", "reply": "reply"},
    ),
}


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def render_context(header: str, context: str | None) -> str | None:
    """The context block of a policy prompt: a method's header over its context (None for no context)."""
    return f"{header}\n{context}" if context else None


def render_actions(actions: Sequence[AgentAction], language: str) -> str:
    """A numbered list of actions, as the recent-k and popular-k baselines show them."""
    kinds = TEMPLATES[language].kinds
    return "\n".join(f"- [{kinds.get(a.kind, a.kind)}] {_clip(a.text, MAX_ACTION_CHARS)}" for a in actions)


def policy_prompt(topic: str, persona: str, language: str, context: str | None = None) -> Prompt:
    """Prompt for agent i's action given (topic, s_i, context block). Shared part first: topic, context.

    ``context`` is the block :func:`render_context` makes (a method's header over its context).
    The completion layout ends inside an opening quote after the persona, so a base model's next
    words are the comment itself; generation stops at the closing quote or the end of the line.
    """
    t = TEMPLATES[language]
    shared = "\n".join(part for part in (t.topic.format(topic=_clip(topic, MAX_TOPIC_CHARS)), context) if part)
    completion = f"{shared}\n\n{t.policy_cue.format(persona=persona)}"
    user = f"{shared}\n{t.persona.format(persona=persona)}\n\n{t.policy_instruction}"
    return Prompt((Message("system", t.policy_system), Message("user", user)), completion)


def policy_stop(language: str) -> tuple[str, ...]:
    """Where an action ends: the end of the line or the closing quote of the completion layout."""
    return TEMPLATES[language].policy_stop


def mean_field_prompt(topic: str, previous: str | None, actions: Sequence[AgentAction], language: str, max_chars: int) -> Prompt:
    """Prompt for the mean-field update m_t = μ(m_{t-1}, latest batch of (persona, action))."""
    t = TEMPLATES[language]
    items = "\n".join(
        t.mean_field_item.format(index=i + 1, kind=t.kinds.get(a.kind, a.kind), persona=a.persona, text=_clip(a.text, MAX_ACTION_CHARS))
        for i, a in enumerate(actions)
    )
    body = "\n".join((
        t.topic.format(topic=_clip(topic, MAX_TOPIC_CHARS)),
        t.mean_field_previous.format(previous=previous or t.mean_field_none),
        t.mean_field_batch,
        items,
        t.mean_field_instruction.format(max_chars=max_chars),
    ))
    return Prompt((Message("system", t.mean_field_system), Message("user", body)), f"{body}\n{t.mean_field_cue}")


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
