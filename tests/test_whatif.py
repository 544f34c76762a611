"""What-if: interventions reach exactly the prompts and contexts they should, from their step on; branches copy
the parent's committed prefix without model calls and reproduce it without a change; the comparison report
measures paired effects and renders in a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

from mfllm.analysis import BranchConfig, CompareConfig, branch, compare_branch, write_comparison
from mfllm.backends import FakeModel
from mfllm.cli import main
from mfllm.data import load_event
from mfllm.evaluation import KindLabeller, LabellerChain, evaluate_run, resolve_dimensions
from mfllm.evaluation.dimensions import Dimension
from mfllm.evaluation.labellers import LabelItem, Labeller, LabelResult
from mfllm.evaluation.report import intervention_marks
from mfllm.interfaces import ContinuationScore, Prompt, SamplingParams
from mfllm.manifest import derive_seed
from mfllm.simulation import Agent, Replay, RunStore, SimulationConfig, Step, estimate, load_interventions, simulate
from mfllm.simulation.store import ACTIONS, MANIFEST, MEAN_FIELD, STEPS

from pools import FixedPool

RUN_FILES = (ACTIONS, STEPS, MEAN_FIELD)
WARMUP, BATCH, AGENTS = 8, 4, 24  # steps 0-1 warm up, steps 2-7 act
RUMOUR = "谣言"


class Recording(FakeModel):
    """The fake backend, keeping every generation call's seed and prompt texts, and the prompt of every
    agent of each policy step (a step scores each agent's kind markers once, before it writes texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int | None, list[str]]] = []
        self.policy_steps: list[list[str]] = []

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[ContinuationScore]:
        per_agent = len(set(continuations))
        self.policy_steps.append([p.messages[-1].content for p in prompts[::per_agent]])
        return super().score(prompts, continuations)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        self.calls.append((params.seed, [p.messages[-1].content for p in prompts]))
        return super().generate(prompts, params)


def config(data: Path, method: str = "state", interventions: Sequence[Path] = (), seed: int = 0) -> SimulationConfig:
    # no kind-choice calibration (its warm-up scoring would mix warm-up prompts into the policy calls these tests record)
    # and no resampling or length bounds on the fake backend's phrases: these tests count what interventions change
    return SimulationConfig(data=str(data), method=method, policy_model="fake", warmup=WARMUP, batch_size=BATCH, num_agents=AGENTS,
                            seed=seed, interventions=[str(p) for p in interventions], calibrate_choices=False, resample_copies=False,
                            action_length="fixed")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def calls_by_step(model: Recording, seed: int, role: str, steps: int) -> dict[int, list[str]]:
    """The prompts of each step's first call in ``role`` (every agent's, for the policy; a run from its start)."""
    if role == "policy":
        return dict(enumerate(model.policy_steps, start=WARMUP // BATCH))
    seeds = {derive_seed(seed, s, role): s for s in range(steps)}
    found: dict[int, list[str]] = {}
    for call_seed, prompts in model.calls:
        if call_seed in seeds and seeds[call_seed] not in found:
            found[seeds[call_seed]] = prompts
    return found


def first_step_at(event: Any, seconds: float) -> int:
    """The step whose first agent is the first to act at or after ``seconds`` after the source post."""
    firsts = {step: event.reactions[step * BATCH].timestamp for step in range((WARMUP + AGENTS) // BATCH)}
    return min(step for step, t in firsts.items() if t >= event.source.timestamp + seconds)


# ---------------------------------------------------------------- the schema


@pytest.mark.parametrize("body, where", [
    ("interventions: [{kind: post, at_step: 1, author: a}]", "interventions[0].text: Field required"),
    ("interventions: [{kind: leak, at_step: 1}]", "interventions[0]"),
    ("interventions: [{kind: moderate, at_step: 1, rule: {field: profile.age, equals: 3}}]", "interventions[0].rule.field: "),
    ("interventions: [{kind: moderate, at_step: 1, rule: {field: action.text, contains: a, equals: b}}]", "exactly one operator"),
    ("interventions: [{kind: moderate, at_step: 1, rule: {all: [{field: action.text, matches: '('}]}}]", "rule.all[0].matches"),
    ("interventions: [{kind: post, at_step: 1, author: a, text: b, audience: {field: action.kind, equals: comment}}]",
     "interventions[0].audience: "),
    ("interventions: [{kind: statement, at_time: soon, text: b}]", "interventions[0].at_time: "),
    ("interventions: [{kind: statement, at_step: 1, at_time: 3h, text: b}]", "at_step or at_time, not both"),
    ("interventions: [{kind: statement, at_step: 1, text: b, colour: red}]", "interventions[0].colour"),
    ("interventions: [{kind: statement, id: x, text: a}, {kind: statement, id: x, text: b}]", "interventions[1].id: 'x' is used twice"),
    ("- just a list", "expected a mapping"),
])
def test_a_bad_file_is_one_line_naming_the_file_and_field(tmp_path: Path, body: str, where: str) -> None:
    path = write(tmp_path / "bad.yaml", body)
    with pytest.raises(ValueError) as caught:
        load_interventions(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and where in message, message


def test_rules_combine_profile_and_action_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.yaml", "interventions: [{kind: moderate, at_step: 1, rule: {all: [{field: action.text, contains: RUMOUR}, "
                                       "{not: {field: profile.followers_count, ge: 1000}}, {field: profile.gender, in: [male, null]}]}}]")
    rule = load_interventions(path)[0].rule  # type: ignore[union-attr]
    from mfllm.data.schema import UserProfile

    assert rule.matches_record(UserProfile(gender="male", followers_count=10), {"text": "a rumour!", "kind": "comment"})
    assert rule.matches_record(UserProfile(), {"text": "RUMOUR", "kind": "comment"})
    assert not rule.matches_record(UserProfile(gender="male", followers_count=5000), {"text": "rumour", "kind": "comment"})
    assert not rule.matches_record(UserProfile(gender="female"), {"text": "rumour", "kind": "comment"})
    assert not rule.matches_record(UserProfile(gender="male"), {"text": "fact", "kind": "comment"})


# ---------------------------------------------------------------- interventions in the prompts and contexts


@pytest.mark.parametrize("method", ["state", "recent", "popular", "mf-hybrid"])
def test_posts_reach_prompts_from_their_step_and_only_the_targeted_agents(demo_event_path: Path, tmp_path: Path, method: str) -> None:
    file = write(tmp_path / "posts.yaml", """interventions:
  - {kind: post, at_step: 3, author: fan club, text: TARGETED-POST, audience: {field: profile.gender, equals: female}}
  - {kind: post, at_time: 3h, author: city police (verified), text: PUBLIC-POST, engagement: 1000000}
""")
    event, _ = load_event(str(demo_event_path))
    public_step = first_step_at(event, 3 * 3600)
    model = Recording()
    run = simulate(config(demo_event_path, method, [file]), tmp_path / "run", pool=FixedPool(model))
    prompts = calls_by_step(model, 0, "policy", 8)
    assert sorted(prompts) == list(range(2, 8))
    targeted_seen = 0
    for step, texts in prompts.items():
        for position, text in zip(range(step * BATCH, (step + 1) * BATCH), texts):
            female = event.reactions[position].user.gender == "female"
            assert ("TARGETED-POST" in text) == (step >= 3 and female), (step, position)
            assert ("PUBLIC-POST" in text) == (step >= public_step), (step, position)
            targeted_seen += "TARGETED-POST" in text
    assert targeted_seen >= 2
    if method == "mf-hybrid":  # the mean field takes the public post in at its step's update, never the targeted one
        updates = calls_by_step(model, 0, "mean_field", 8)
        assert [s for s, (text,) in sorted(updates.items()) if "PUBLIC-POST" in text] == [public_step]
        assert not any("TARGETED-POST" in text for _, (text,) in updates.items())
    if method == "popular":  # declared engagement keeps it in the top k while it is in the window
        states = [json.loads(line)["context_state"] for line in (run / STEPS).read_text(encoding="utf-8").splitlines()]
        assert all(any(a["text"] == "PUBLIC-POST" for a in state["memory"]) for state in states[public_step:])
    journal = [json.loads(line) for line in (run / STEPS).read_text(encoding="utf-8").splitlines()]
    assert {j["step"]: j.get("interventions") for j in journal if "interventions" in j} == \
        ({3: ["post0"], public_step: ["post1"]} if public_step != 3 else {3: ["post0", "post1"]})
    recorded = json.loads((run / MANIFEST).read_text(encoding="utf-8"))["interventions"]["scheduled"]
    assert [(r["id"], r["start_step"]) for r in recorded] == [("post0", 3), ("post1", public_step)]


@pytest.mark.parametrize("method, folded", [("mf-hybrid", True), ("state", False)])
def test_a_statement_joins_the_mean_field_or_shows_as_a_notice(demo_event_path: Path, tmp_path: Path, method: str, folded: bool) -> None:
    file = write(tmp_path / "statement.yaml", "interventions: [{kind: statement, at_step: 4, text: OFFICIAL-DENIAL}]")
    model = Recording()
    simulate(config(demo_event_path, method, [file]), tmp_path / "run", pool=FixedPool(model))
    prompts = calls_by_step(model, 0, "policy", 8)
    for step, texts in prompts.items():
        notice = [("平台公告：OFFICIAL-DENIAL" in t) for t in texts]
        shown = [("OFFICIAL-DENIAL" in t) for t in texts]
        assert all(shown) if step == 4 or (step > 4 and not folded) else not any(shown), step
        assert not any(notice) if folded else all(notice) == (step >= 4)
    if folded:  # appended to the summary agents read at step 4, which the next update rewrites from
        (update,) = calls_by_step(model, 0, "mean_field", 8)[4]
        assert "OFFICIAL-DENIAL" in update


def test_moderation_removes_matching_actions_before_anyone_sees_them(demo_event_path: Path, tmp_path: Path) -> None:
    file = write(tmp_path / "moderate.yaml", f"""interventions:
  - {{kind: moderate, id: no-rumour, at_step: 3, until_step: 6,
     rule: {{all: [{{field: action.text, contains: {RUMOUR}}}, {{field: profile.gender, equals: male}}]}}}}
""")
    event, _ = load_event(str(demo_event_path))
    for seed in range(5):  # the fake's texts follow the prompts: the first seed whose run wrote a matching text
        run = simulate(config(demo_event_path, "recent", [file], seed=seed), tmp_path / f"run{seed}", pool=FixedPool(FakeModel()))
        rows = RunStore(run).actions()
        for row in rows:
            should = 3 <= row["step"] < 6 and RUMOUR in row["sim_text"] and event.reactions[row["position"]].user.gender == "male"
            assert ("moderated" in row) == should and row.get("moderated", "no-rumour") == "no-rumour"
        if any("moderated" in row for row in rows):
            break
    removed = {row["sim_text"] for row in rows if "moderated" in row}
    kept = {row["sim_text"] for row in rows if "moderated" not in row}
    assert removed and not removed & kept
    for line in (run / STEPS).read_text(encoding="utf-8").splitlines():
        assert not removed & {a["text"] for a in json.loads(line)["context_state"]["memory"]}
    assert json.loads((run / MANIFEST).read_text(encoding="utf-8"))["moderated_actions"] == len(removed)


def test_dry_run_estimates_count_the_pinned_posts(demo_event_path: Path, tmp_path: Path) -> None:
    file = write(tmp_path / "iv.yaml", "interventions: [{kind: post, at_step: 5, author: police, text: " + "long denial " * 20 + "}]")
    event, _ = load_event(str(demo_event_path))
    plain, intervened = (estimate(config(demo_event_path, "mf-hybrid", files), event, FakeModel())["per_step"] for files in ([], [file]))
    grown = [b["policy_prompt_tokens"] - a["policy_prompt_tokens"] for a, b in zip(plain, intervened)]
    assert [g > 0 for g in grown] == [row["step"] >= 5 for row in plain]


class WithoutClock(Replay):
    """Replay whose agents carry no timestamps."""

    def agents(self, step: Step) -> list[Agent]:
        return [replace(agent, timestamp=None) for agent in super().agents(step)]


def test_time_offsets_need_timestamps(demo_event_path: Path, tmp_path: Path) -> None:
    file = write(tmp_path / "late.yaml", "interventions: [{kind: statement, at_time: 3h, text: x}]")
    with pytest.raises(ValueError, match=r"late.yaml: interventions\[0\].at_time: this scenario's agents carry no timestamps"):
        simulate(config(demo_event_path, interventions=[file]), tmp_path / "run", pool=FixedPool(FakeModel()),
                 scenario=lambda event: WithoutClock(event, WARMUP, BATCH, AGENTS))
    far = write(tmp_path / "far.yaml", "interventions: [{kind: statement, at_time: 400d, text: x}]")
    with pytest.raises(ValueError, match="past the last agent"):
        simulate(config(demo_event_path, interventions=[far]), tmp_path / "run2", pool=FixedPool(FakeModel()))


def test_an_intervened_run_resumes_exactly_and_refuses_a_changed_file(demo_event_path: Path, tmp_path: Path) -> None:
    file = write(tmp_path / "iv.yaml", f"""interventions:
  - {{kind: post, at_step: 3, author: police, text: DENIAL}}
  - {{kind: moderate, at_step: 4, rule: {{field: action.text, contains: {RUMOUR}}}}}
""")
    whole = simulate(config(demo_event_path, "mf-hybrid", [file]), tmp_path / "whole", pool=FixedPool(FakeModel()))
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    for name in RUN_FILES:
        kept = [line for line in (cut / name).read_text(encoding="utf-8").splitlines(keepends=True) if json.loads(line)["step"] < 4]
        (cut / name).write_text("".join(kept), encoding="utf-8")
    simulate(config(demo_event_path, "mf-hybrid", [file]), cut, pool=FixedPool(FakeModel()), resume=True)
    assert all((cut / n).read_bytes() == (whole / n).read_bytes() for n in RUN_FILES)
    write(file, file.read_text(encoding="utf-8").replace("DENIAL", "DENIAL!"))
    with pytest.raises(ValueError, match="cannot resume with different interventions"):
        simulate(config(demo_event_path, "mf-hybrid", [file]), cut, pool=FixedPool(FakeModel()), resume=True)
    with pytest.raises(ValueError, match="cannot resume with different interventions"):
        simulate(config(demo_event_path, "mf-hybrid"), cut, pool=FixedPool(FakeModel()), resume=True)


def test_the_report_marks_interventions_on_the_trajectories(demo_event_path: Path, tmp_path: Path) -> None:
    file = write(tmp_path / "iv.yaml", "interventions: [{kind: statement, id: denial, at_step: 5, text: x}]")
    run = simulate(config(demo_event_path, "state", [file]), tmp_path / "run", pool=FixedPool(FakeModel()))
    evaluation = evaluate_run(run, LabellerChain([KindLabeller()]), resolve_dimensions(["behaviour"]))
    assert intervention_marks([evaluation]) == [(3, "denial")]  # windows are the rollout steps 2..7


# ---------------------------------------------------------------- branches


class NoPrefixCalls(FakeModel):
    """The fake backend, failing on any call whose seed belongs to a step before ``at`` (any run seed of ``seeds``)."""

    def __init__(self, at: int, seeds: Sequence[int]):
        super().__init__()
        self.forbidden = {derive_seed(seed, step, role, *attempt) for seed in seeds for step in range(at)
                          for role in ("policy", "mean_field") for attempt in ((), (1,), (2,))}
        self.calls = 0

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        if params.seed in self.forbidden:
            raise AssertionError(f"model called for a copied step (seed {params.seed})")
        self.calls += 1
        return super().generate(prompts, params)


def lines_before(path: Path, step: int) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines(keepends=True) if json.loads(line)["step"] < step]


@pytest.fixture(scope="module")
def branched(demo_event_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A mean-field parent run and a branch at step 4 that moderates rumour talk, over seeds 0-2."""
    root = tmp_path_factory.mktemp("branch")
    parent = simulate(config(demo_event_path, "mf-hybrid"), root / "parent", pool=FixedPool(FakeModel()))
    change = write(root / "change.yaml", f"""interventions:
  - {{kind: moderate, id: no-rumour, rule: {{field: action.text, contains: {RUMOUR}}}}}
  - {{kind: post, id: denial, at_step: 5, author: city police (verified), text: DENIAL}}
""")
    model = NoPrefixCalls(4, [0, 1, 2])
    out = branch(BranchConfig(run=str(parent), at=4, interventions=[str(change)], seeds=[0, 1, 2], output=str(root / "what-if")),
                 pool=FixedPool(model))
    return {"parent": parent, "out": out, "change": change, "model": model, "root": root}


def test_a_branch_copies_the_prefix_without_model_calls_and_reproduces_its_parent(branched: dict[str, Any]) -> None:
    parent, out = branched["parent"], branched["out"]
    assert branched["model"].calls > 0
    for arm in ("factual", "counterfactual"):
        for seed in (0, 1, 2):
            run = out / arm / f"seed{seed}"
            for name in RUN_FILES:
                assert lines_before(run / name, 4) == lines_before(parent / name, 4), (arm, seed, name)
            assert json.loads((run / MANIFEST).read_text(encoding="utf-8"))["branch"]["at"] == 4
    assert all((out / "factual" / "seed0" / n).read_bytes() == (parent / n).read_bytes() for n in RUN_FILES)
    factual, counterfactual = RunStore(out / "factual" / "seed1").actions(), RunStore(out / "counterfactual" / "seed1").actions()
    assert [r["sim_text"] for r in factual if r["step"] == 4] == [r["sim_text"] for r in counterfactual if r["step"] == 4]  # same seeds
    assert [r["sim_text"] for r in factual] != [r["sim_text"] for r in counterfactual]
    moderated = [any("moderated" in r for r in RunStore(out / arm / f"seed{seed}").actions()) for arm in ("factual", "counterfactual")
                 for seed in (0, 1, 2)]
    assert any(moderated[3:]) and not any(moderated[:3])


def test_a_branch_resumes_after_a_kill_and_refuses_a_change_before_its_point(branched: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "what-if"
    shutil.copytree(branched["out"], out)
    run = out / "counterfactual" / "seed2"
    expected = {n: (run / n).read_bytes() for n in RUN_FILES}
    (run / STEPS).write_text("", encoding="utf-8")  # killed while copying the prefix: empty journal, rows written
    (run / ACTIONS).write_bytes(b"".join(lines_before(run / ACTIONS, 3)))
    manifest = json.loads((run / MANIFEST).read_text(encoding="utf-8"))
    (run / MANIFEST).write_text(json.dumps({**manifest, "status": "running"}), encoding="utf-8")
    settings = BranchConfig(run=str(branched["parent"]), at=4, interventions=[str(branched["change"])], seeds=[0, 1, 2], output=str(out))
    with pytest.raises(FileExistsError):
        branch(settings, pool=FixedPool(FakeModel()))
    branch(settings, pool=FixedPool(NoPrefixCalls(4, [0, 1, 2])), resume=True)
    assert {n: (run / n).read_bytes() for n in RUN_FILES} == expected
    early = write(tmp_path / "early.yaml", "interventions: [{kind: statement, at_step: 2, text: x}]")
    with pytest.raises(ValueError, match=r"early.yaml: interventions\[0\]: starts at step 2, before the branch point 4"):
        branch(BranchConfig(run=str(branched["parent"]), at=4, interventions=[str(early)], output=str(tmp_path / "early")),
               pool=FixedPool(FakeModel()))


# ---------------------------------------------------------------- comparison


class MentionsRumour(Labeller):
    name = "mentions"

    def covers(self, dimension: Dimension, language: str) -> bool:
        return dimension.name == "rumour"

    def label(self, items: Sequence[LabelItem], dimension: Dimension) -> LabelResult:
        return LabelResult(["mentions" if RUMOUR in item.text else "other" for item in items])


@pytest.fixture(scope="module")
def compared(branched: dict[str, Any]) -> dict[str, Any]:
    dimensions = write(branched["root"] / "dimensions.yaml", "- {name: rumour, labels: [mentions, other], definition: talks of a rumour}")
    settings = CompareConfig(dimensions=["rumour"], dimensions_file=str(dimensions), bootstrap=200)
    index = write_comparison(branched["out"], branched["root"] / "comparison", settings, labeller=MentionsRumour())
    return {"index": index, "comparison": compare_branch(branched["out"], settings, labeller=MentionsRumour())}


def test_the_comparison_measures_paired_effects_and_the_real_continuation(branched: dict[str, Any], compared: dict[str, Any]) -> None:
    (rumour,) = compared["comparison"].dimensions
    out = branched["out"]
    shares = []
    for seed in (0, 1, 2):
        rows = [r for r in RunStore(out / "factual" / f"seed{seed}").actions() if r["step"] >= 4]
        shares.append(sum(RUMOUR in r["sim_text"] for r in rows) / len(rows))
        mentions_per_step = rumour.shares["counterfactual"][seed][:, 0]
        assert (mentions_per_step[~np.isnan(mentions_per_step)] == 0).all()  # moderated away at every step
    mentions = rumour.difference[0]
    # the mean effect is negative; a seed whose factual arm never mentions the rumour puts the CI's top at 0
    assert mentions.mean == pytest.approx(-sum(shares) / 3) and mentions.mean < 0 and mentions.low <= mentions.mean <= mentions.high <= 0
    assert rumour.kl_between_arms is not None and rumour.kl_between_arms.mean > 0
    assert rumour.real is not None and set(rumour.fidelity) == {"factual", "counterfactual"}
    effects = (compared["index"].parent / "effects.csv").read_text(encoding="utf-8")
    assert "rumour,share_difference,mentions," in effects and "kl_real_counterfactual" in effects


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"), reason="chromium not installed (make setup installs it)")
def test_the_comparison_report_renders_in_headless_chromium(compared: dict[str, Any], tmp_path: Path) -> None:
    browser = _chromium()
    assert browser, "chromium is missing: `make setup` installs it from Debian's packages"
    index: Path = compared["index"]
    probe = index.parent / "probe.html"  # the report, plus scripts that note errors and, after load, each chart's canvas
    catch = "<script>window.errors=[];addEventListener('error',e=>window.errors.push(String(e.message)))</script>"
    script = ("<script>addEventListener('load',()=>document.body.setAttribute('data-charts',JSON.stringify({errors:window.errors,"
              "charts:[...document.querySelectorAll('figure.chart')].map(f=>[f.dataset.rendered==='true',"
              "(f.querySelector('canvas')||{}).width||0])})))</script>")
    page = index.read_text(encoding="utf-8")
    probe.write_text(page.replace("<head>", "<head>" + catch, 1).replace("</body>", script + "</body>"), encoding="utf-8")
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                             "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "What if: counterfactual vs factual continuation" in result.stdout
    drawn = json.loads(re.search(r'data-charts="([^"]*)"', result.stdout).group(1).replace("&quot;", '"'))  # type: ignore[union-attr]
    assert drawn["errors"] == []
    assert len(drawn["charts"]) == page.count('<div class="chart-box">') == 2  # mentions, other
    assert all(rendered and width > 0 for rendered, width in drawn["charts"]), drawn
    assert "<script src=" not in page and "rel=\"stylesheet\"" not in page  # stands alone: scripts, styles and font inlined


def test_cli_simulate_branch_and_compare(demo_event_path: Path, tmp_path: Path) -> None:
    file = write(tmp_path / "iv.yaml", "interventions: [{kind: post, author: police, text: DENIAL}]")
    common = ["--data", str(demo_event_path), "--policy-model", "fake", "--warmup", "8", "--batch", "4", "--agents", "12"]
    assert main(["simulate", *common, "--method", "state", "--output", str(tmp_path / "runs")]) == 0
    parent = next((tmp_path / "runs").rglob(MANIFEST)).parent
    assert main(["simulate", *common, "--intervention", str(file), "--output", str(tmp_path / "bad")]) == 2  # no step given
    assert main(["branch", str(parent), "--at", "3", "--intervention", str(file), "--seeds", "0", "1", "--output", str(tmp_path / "b")]) == 0
    assert main(["compare", str(tmp_path / "b"), "--dimension", "behaviour", "--output", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "compare.json").read_text(encoding="utf-8"))["seeds"] == [0, 1]
    manifest = json.loads((tmp_path / "b" / "counterfactual" / "seed1" / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["interventions"]["scheduled"][0]["start_step"] == 3


class ScoreRecording(FakeModel):
    """The fake backend, keeping the prompt of every scored continuation."""

    def __init__(self) -> None:
        super().__init__()
        self.scored: list[str] = []

    def score(self, prompts, continuations):  # type: ignore[no-untyped-def]
        self.scored.extend(p.completion for p in prompts)
        return super().score(prompts, continuations)


@pytest.mark.parametrize("method", ["mf-hybrid", "recent"])
def test_policy_nll_scores_real_actions_under_the_prompts_agents_saw(demo_event_path: Path, tmp_path: Path, method: str) -> None:
    from mfllm.evaluation.evaluate import policy_nll

    file = write(tmp_path / "iv.yaml", "interventions:\n"
                 "  - {kind: post, at_step: 3, author: 警方, text: 这是谣言, audience: {field: profile.followers_count, lt: 1000}}\n"
                 "  - {kind: statement, at_step: 4, text: 官方已辟谣}\n")
    seen: list[str] = []

    class Seeing(FakeModel):
        def score(self, prompts, continuations):  # type: ignore[no-untyped-def]
            seen.extend(p.completion for p in prompts[::len(set(continuations))])  # each agent's prompt, before its kind marker
            return super().score(prompts, continuations)

    run = simulate(config(demo_event_path, method, [file]), tmp_path / "run", pool=FixedPool(Seeing()))
    scorer = ScoreRecording()
    policy_nll(RunStore(run), scorer)
    assert scorer.scored == seen and any("这是谣言" in p for p in seen) and any("官方已辟谣" in p for p in seen)
