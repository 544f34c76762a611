"""Interventions: what a scenario makes happen at a step (injected posts, mean-field statements, moderation),
declared in YAML and validated by a pydantic schema.

A file holds one mapping, ``interventions:``, a list of entries, each with a ``kind``:

- ``post``: a post (``text``, ``author`` persona) appears at its step. Agents see it pinned above the
  context from that step on, and the method's context takes it in once, at that step, like an action
  (see each method's docstring for what that means for it).
- ``statement``: a statement is added to the mean field at its step. A method whose context a model writes
  (an :class:`~mfllm.interfaces.LLMMeanField`) folds it into its summary, which later updates rewrite; other
  methods show it as a notice under their context from that step on.
- ``moderate``: from its step on, actions matching ``rule`` are removed before anyone sees them: they never
  reach the context; their rows are kept and say which intervention removed them (``"moderated"``).

A ``post`` or ``statement`` with an ``audience`` rule reaches only the agents whose profiles match it: they
see it in their own prompts, and the shared context (which everyone reads) does not take it in.

When: ``at_step`` (a step index of the run's schedule, warm-up included) or ``at_time`` (time after the
source post: ``3h``, ``90m``, ``45s``, ``1d`` or seconds), which applies where agents carry timestamps
(replay): the intervention starts at the first step whose first agent acts at or after that time.
``until_step`` / ``until_time`` end it (exclusive); a post's end stops its pinning only.

Rules are predicates over structured fields: ``profile.<field>`` (any :class:`~mfllm.data.schema.UserProfile`
field) and, for moderation, ``action.text`` / ``action.kind``. A rule is one condition
(``{field: profile.verified, equals: true}``; operators ``equals``, ``in``, ``contains``, ``matches``
(a regular expression), ``gt``, ``ge``, ``lt``, ``le``) or a combination (``all: [...]``, ``any: [...]``,
``not: {...}``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import Annotated

from mfllm.configuration import read_yaml
from mfllm.data.schema import UserProfile
from mfllm.interfaces import AgentAction

if TYPE_CHECKING:
    from mfllm.simulation.step import Agent, Step

PROFILE_FIELDS = tuple(UserProfile.model_fields)
ACTION_FIELDS = ("text", "kind")
OPERATORS = ("equals", "in", "contains", "matches", "gt", "ge", "lt", "le")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Rule(_Strict):
    """One condition on a field, or ``all`` / ``any`` / ``not`` of rules."""

    field: str | None = Field(default=None, description="profile.<field> or action.text / action.kind")
    equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    contains: str | None = None
    matches: str | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    all: list[Rule] | None = None
    any: list[Rule] | None = None
    not_: Rule | None = Field(default=None, alias="not")

    @field_validator("field")
    @classmethod
    def _known_field(cls, name: str | None) -> str | None:
        if name is None:
            return name
        scope, _, attribute = name.partition(".")
        if (scope, attribute in PROFILE_FIELDS) == ("profile", True) or (scope, attribute in ACTION_FIELDS) == ("action", True):
            return name
        raise ValueError(f"unknown field {name!r}: use profile.<{'|'.join(PROFILE_FIELDS)}> or action.<{'|'.join(ACTION_FIELDS)}>")

    @field_validator("matches")
    @classmethod
    def _regex(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression ({exc})") from exc
        return pattern

    @model_validator(mode="after")
    def _one_form(self) -> Rule:
        given = self.model_fields_set
        operators = [op for op in OPERATORS if ("in_" if op == "in" else op) in given]
        combinations = [c for c in ("all", "any", "not_") if c in given]
        if self.field is not None:
            if combinations or len(operators) != 1:
                raise ValueError(f"a condition on {self.field!r} takes exactly one operator ({', '.join(OPERATORS)}), "
                                 f"got {', '.join(operators + combinations) or 'none'}")
        elif operators:
            raise ValueError(f"operator {operators[0]!r} needs a field")
        elif len(combinations) != 1:
            raise ValueError("a rule is one condition (field + operator) or exactly one of all / any / not")
        return self

    def fields(self) -> set[str]:
        """Every field the rule reads."""
        if self.field is not None:
            return {self.field}
        children = self.all or self.any or [self.not_]
        return set().union(*(child.fields() for child in children if child is not None))

    def matches_record(self, profile: UserProfile, action: dict[str, str] | None = None) -> bool:
        """Whether the rule holds for an agent's ``profile`` (and the ``action`` it wrote, for action fields)."""
        if self.all is not None:
            return all(rule.matches_record(profile, action) for rule in self.all)
        if self.any is not None:
            return any(rule.matches_record(profile, action) for rule in self.any)
        if self.not_ is not None:
            return not self.not_.matches_record(profile, action)
        scope, _, attribute = str(self.field).partition(".")
        value = getattr(profile, attribute) if scope == "profile" else (action or {}).get(attribute)
        return self._test(value)

    def _test(self, value: Any) -> bool:
        given = self.model_fields_set
        if "equals" in given:
            return value == self.equals
        if "in_" in given:
            return value in (self.in_ or [])
        if value is None:
            return False
        if "contains" in given:
            return str(self.contains).lower() in str(value).lower()
        if "matches" in given:
            return re.search(str(self.matches), str(value)) is not None
        if not isinstance(value, (int, float)):
            return False
        bound, compare = next((getattr(self, op), test) for op, test in (("gt", float.__gt__), ("ge", float.__ge__), ("lt", float.__lt__),
                                                                       ("le", float.__le__)) if op in given)
        return bool(compare(float(value), float(bound)))


def _seconds(value: str | float | None) -> float | None:
    if value is None or isinstance(value, (int, float)):
        return value
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration (e.g. 3h, 90m, 45s, 1d, or seconds)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class _Timed(_Strict):
    id: str | None = Field(default=None, description="Name in manifests, rows and reports (default: <kind><index>).")
    at_step: int | None = Field(default=None, ge=0, description="Step index (warm-up steps included) at which it starts.")
    at_time: float | str | None = Field(default=None, description="Time after the source post at which it starts (3h, 90m, seconds).")
    until_step: int | None = Field(default=None, ge=0, description="Step at which it stops (exclusive).")
    until_time: float | str | None = Field(default=None, description="Time after the source post at which it stops.")

    @field_validator("at_time", "until_time")
    @classmethod
    def _duration(cls, value: float | str | None) -> float | None:
        seconds = _seconds(value)
        if seconds is not None and seconds < 0:
            raise ValueError("must be >= 0")
        return seconds

    @model_validator(mode="after")
    def _one_start(self) -> _Timed:
        if self.at_step is not None and self.at_time is not None:
            raise ValueError("give at_step or at_time, not both")
        if self.until_step is not None and self.until_time is not None:
            raise ValueError("give until_step or until_time, not both")
        return self


class InjectedPost(_Timed):
    kind: Literal["post"]
    text: str = Field(min_length=1, description="The post's text.")
    author: str = Field(min_length=1, description="Who posts it, as agents see it (e.g. 'city police, verified, 2M followers').")
    action_kind: Literal["comment", "repost", "reply"] = Field(default="comment", description="How the context lists it.")
    engagement: int = Field(default=0, ge=0, description="Engagement the post received (popular-k ranks by it).")
    pinned: bool = Field(default=True, description="Shown above the context in every later prompt (until until_step).")
    audience: Rule | None = Field(default=None, description="Only agents whose profile matches see it.")

    @field_validator("audience")
    @classmethod
    def _profile_only(cls, rule: Rule | None) -> Rule | None:
        return _profile_rule(rule)


class Statement(_Timed):
    kind: Literal["statement"]
    text: str = Field(min_length=1, description="The statement added to the mean field.")
    audience: Rule | None = Field(default=None, description="Only agents whose profile matches see it.")

    @field_validator("audience")
    @classmethod
    def _profile_only(cls, rule: Rule | None) -> Rule | None:
        return _profile_rule(rule)


class Moderation(_Timed):
    kind: Literal["moderate"]
    rule: Rule = Field(description="Actions matching it (action and author profile fields) are removed before others see them.")


def _profile_rule(rule: Rule | None) -> Rule | None:
    if rule is not None and any(not f.startswith("profile.") for f in rule.fields()):
        raise ValueError("an audience reads profile fields only (profile.<field>)")
    return rule


Intervention = Annotated[Union[InjectedPost, Statement, Moderation], Field(discriminator="kind")]
KINDS = ("post", "statement", "moderate")


class InterventionFile(_Strict):
    interventions: list[Intervention] = Field(min_length=1)


def _location(loc: Sequence[Any]) -> str:
    """A pydantic error location as it reads in the file: ``interventions[2].rule.all[0].field``."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
        elif item not in KINDS:  # the tag pydantic adds for the member of the union that was tried
            parts.append(str(item))
    return ".".join(parts)


def load_interventions(path: str | Path) -> list[InjectedPost | Statement | Moderation]:
    """The interventions of a YAML file; a bad file is a one-line ValueError naming the file and the field."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with an 'interventions' list")
    try:
        parsed = InterventionFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        message = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"{path}: {_location(first['loc']) or 'interventions'}: {message}{more}") from None
    items = []
    ids: set[str] = set()
    for index, item in enumerate(parsed.interventions):
        name = item.id or f"{item.kind}{index}"
        if name in ids:
            raise ValueError(f"{path}: interventions[{index}].id: {name!r} is used twice")
        ids.add(name)
        items.append(item.model_copy(update={"id": name}))
    return items


def file_digest(paths: Sequence[str | Path]) -> str:
    """SHA-256 over the bytes of the intervention files, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Scheduled:
    """An intervention placed on a run's schedule: it acts on steps ``start`` to ``end`` (exclusive; None: to the end)."""

    spec: InjectedPost | Statement | Moderation
    start: int
    end: int | None
    source: str

    @property
    def id(self) -> str:
        return str(self.spec.id)

    def active(self, step: int) -> bool:
        return self.start <= step and (self.end is None or step < self.end)

    def reaches(self, profile: UserProfile) -> bool:
        """Whether an agent with ``profile`` sees this intervention."""
        audience = getattr(self.spec, "audience", None)
        return audience is None or audience.matches_record(profile)

    @property
    def shared(self) -> bool:
        """Whether it goes to everyone (no audience), so the shared context may take it in."""
        return getattr(self.spec, "audience", None) is None

    def removes(self, profile: UserProfile, text: str, kind: str) -> bool:
        """Whether this (moderation) intervention removes an action."""
        return isinstance(self.spec, Moderation) and self.spec.rule.matches_record(profile, {"text": text, "kind": kind})

    def injected_action(self) -> AgentAction | None:
        """The action the shared context takes in at the start (a post to everyone), else None."""
        spec = self.spec
        if isinstance(spec, InjectedPost) and self.shared:
            return AgentAction(spec.author, spec.text, spec.action_kind, spec.engagement, -1, {"intervention": self.id})
        return None

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "file": self.source, "start_step": self.start, "end_step": self.end,
                "spec": self.spec.model_dump(mode="json", by_alias=True, exclude_none=True)}


class _Timeline:
    """Steps of a schedule, and when (after the source post) each step's first agent acts."""

    def __init__(self, steps: Sequence[Step], agents_of: Callable[[Step], Sequence[Agent]], source_time: float | None):
        self.steps, self.agents_of, self.source_time = steps, agents_of, source_time
        self._first_times: list[float | None] | None = None

    def first_times(self) -> list[float | None]:
        if self._first_times is None:
            self._first_times = [agents[0].timestamp if (agents := self.agents_of(s)) else None for s in self.steps]
        return self._first_times

    def step(self, where: str, step: int | None, seconds: float | None) -> int | None:
        """The step given, or the first step whose first agent acts ``seconds`` or more after the source post."""
        if step is not None:
            if step >= len(self.steps):
                raise ValueError(f"{where}: step {step} is past the run's last step ({len(self.steps) - 1})")
            return step
        if seconds is None:
            return None
        times = self.first_times()
        if self.source_time is None or any(t is None for t in times):
            raise ValueError(f"{where}: this scenario's agents carry no timestamps; give a step instead")
        later = [s.index for s, t in zip(self.steps, times) if t is not None and t >= self.source_time + seconds]
        if not later:
            raise ValueError(f"{where}: {seconds:g} s after the source post is past the last agent "
                             f"({float(times[-1] or 0) - self.source_time:g} s)")
        return later[0]


def schedule_interventions(files: Sequence[str | Path], steps: Sequence[Step], agents_of: Callable[[Step], Sequence[Agent]],
                           source_time: float | None, default_step: int | None = None, earliest_step: int = 0) -> list[Scheduled]:
    """Place the interventions of ``files`` on a schedule. ``at_time`` resolves to the first step whose first agent acts
    at or after ``source_time`` + offset; an entry without a start takes ``default_step`` (a branch point). Every
    intervention must start at or after ``earliest_step``."""
    timeline = _Timeline(steps, agents_of, source_time)
    placed: list[Scheduled] = []
    for file in files:
        for index, spec in enumerate(load_interventions(file)):
            where = f"{file}: interventions[{index}]"
            if any(p.id == spec.id for p in placed):
                raise ValueError(f"{where}.id: {spec.id!r} is also used by another intervention file")
            start = timeline.step(f"{where}.{'at_time' if spec.at_time is not None else 'at_step'}", spec.at_step, spec.at_time)
            if start is None:
                if default_step is None:
                    raise ValueError(f"{where}: give at_step or at_time")
                start = default_step
            if start < earliest_step:
                raise ValueError(f"{where}: starts at step {start}, before the branch point {earliest_step}")
            end = timeline.step(f"{where}.{'until_time' if spec.until_time is not None else 'until_step'}", spec.until_step, spec.until_time)
            if end is not None and end <= start:
                raise ValueError(f"{where}: ends at step {end}, not after its start (step {start})")
            placed.append(Scheduled(spec, start, end, str(file)))
    return placed


def scheduled_from_manifest(manifest: dict[str, Any]) -> list[Scheduled]:
    """The interventions a run placed on its schedule, as its manifest records them (none for a plain run)."""
    scheduled = []
    for record in manifest.get("interventions", {}).get("scheduled", []):
        spec = InterventionFile.model_validate({"interventions": [record["spec"]]}).interventions[0]
        scheduled.append(Scheduled(spec, record["start_step"], record["end_step"], record.get("file", "")))
    return scheduled
