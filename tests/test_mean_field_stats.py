"""The statistics mean field: label shares with forgetting, recent comments, no model call, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfllm.evaluation.labellers import KindLabeller, LabellerChain
from mfllm.interfaces import AgentAction
from mfllm.simulation import RunStore, SimulationConfig, simulate
from mfllm.simulation.methods.mean_field_stats import StatisticsMeanField

from pools import FixedPool


def test_shares_forget_older_steps_and_recent_comments_are_shown() -> None:
    stats = StatisticsMeanField("topic", "en", LabellerChain([KindLabeller()]), shown=7, forgetting=0.5)
    stats.observe([AgentAction("p", "RT", "repost")] * 4, seed=0)
    stats.observe([AgentAction("p", f"comment {i}", "comment") for i in range(4)] + [AgentAction("p", "comment 3", "comment")], seed=1)
    # repost weight 4 * 0.5 = 2, comment weight 5: shares 29% / 71%, so 2 of the 7 actions shown are reposts,
    # 5 are comments: the 4 distinct most recent ones (a repeated text is shown once)
    assert "Behaviour: comment 71%, repost 29%." in stats.context()  # type: ignore[operator]
    assert stats.context().endswith("- [share]\n- [share]\n- [reply] comment 0\n- [reply] comment 1\n- [reply] comment 2\n"  # type: ignore[union-attr]
                                    "- [reply] comment 3")
    restored = StatisticsMeanField("topic", "en", None)
    restored.load_state_dict(stats.state_dict())
    assert restored.context() == stats.context()
    with pytest.raises(RuntimeError, match="without a labeller"):
        restored.observe([AgentAction("p", "x", "comment")], seed=2)


def test_a_run_makes_no_mean_field_call_and_resumes_exactly(demo_event_path: Path, tmp_path: Path) -> None:
    config = SimulationConfig(data=str(demo_event_path), method="mf-stats", policy_model="fake", warmup=8, batch_size=4, num_agents=16)
    run = simulate(config, tmp_path / "run")
    manifest = RunStore(run).manifest()
    usage = manifest["usage"]["policy"]  # one scoring of kind markers per step (the 2 warm-up steps' for the calibration),
    # one generation per step unless all agents repost bare, more when a text is asked again
    assert manifest["models"]["mean_field"] is None and usage["score_calls"] == 4 + 2 and 1 <= usage["generate_calls"]
    steps = RunStore(run).committed_steps()
    assert steps[1]["context_state"]["seen"] == 8 and "sentiment" in steps[1]["context_state"]["weights"]
    history = RunStore(run).mean_field_history()  # the mean-field history is recorded as for the LLM mean field
    assert len(history) == len(steps) and "评论区" not in history[-1]["text"] and "%" in history[-1]["text"]
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "manifest.json").write_text((run / "manifest.json").read_text())
    for name in ("steps.jsonl", "actions.jsonl", "mean_field.jsonl"):
        lines = (run / name).read_text().splitlines(keepends=True)
        (cut / name).write_text("".join(line for line in lines if '"step": 0' in line or '"step": 1' in line or '"step": 2,' in line))
    simulate(config, cut, resume=True)
    assert (cut / "actions.jsonl").read_text() == (run / "actions.jsonl").read_text()
    for name in ("steps.jsonl", "mean_field.jsonl"):
        assert (cut / name).read_text() == (run / name).read_text()


def test_the_hybrid_adds_one_mean_field_call_per_step_and_folds_statements_into_its_points(demo_event_path: Path, tmp_path: Path) -> None:
    from mfllm.backends import FakeModel
    from mfllm.data import load_event
    from mfllm.simulation.methods.mean_field_stats import HybridMeanField

    config = SimulationConfig(data=str(demo_event_path), method="mf-hybrid", policy_model="fake", warmup=8, batch_size=4, num_agents=16)
    class RolePool(FixedPool):  # a model per role, so each role's calls are counted apart
        def __init__(self) -> None:
            super().__init__(FakeModel())
            self.models: dict[str, FakeModel] = {}

        def get(self, spec, adapter=None, role="model"):  # type: ignore[no-untyped-def]
            return self.models.setdefault(role, FakeModel())

    pool = RolePool()
    run = simulate(config, tmp_path / "run", pool=pool)
    steps = RunStore(run).committed_steps()
    assert pool.models["mean_field"].usage.generate_calls == len(steps)  # the key points: its only model call per step
    assert pool.models["mean_field"].usage.score_calls == 0
    last = RunStore(run).mean_field_history()[-1]["text"]
    assert "%" in last and "要点：" in last and "有代表性的反应：" in last
    event, _ = load_event(demo_event_path)
    hybrid = HybridMeanField.create(config, event, None)
    hybrid.load_state_dict(steps[-1]["context_state"])
    before = hybrid.points.text
    hybrid.accept("- [评论] 真的吗")  # a copied reaction line is no summary: the points stay
    assert hybrid.points.text == before
    for loop in ("1 病毒携带者： 2 病毒携带者： 3 病毒携带者： 4 病毒携带者： 5 病毒携带者：", "1."):  # degenerate: the points stay
        hybrid.accept(loop)
        assert hybrid.points.text == before
    hybrid.accept("怀疑真假；求官方消息")
    assert hybrid.points.text == "怀疑真假；求官方消息"
    hybrid.accept(before)
    hybrid.add_statement("官方已辟谣")  # a statement to everyone joins the points at once
    assert hybrid.context().endswith(hybrid.render(f"{before} 官方已辟谣").split("\n")[-1]) and "官方已辟谣" in hybrid.context()


def test_representative_actions_favour_recent_steps_but_keep_earlier_ones() -> None:
    stats = StatisticsMeanField("topic", "en", LabellerChain([KindLabeller()]), shown=4, forgetting=0.7)
    ages: list[int] = []
    for step in range(1, 13):
        stats.observe([AgentAction("p", f"{i} {step} reply", "comment") for i in range(4)], seed=step)
        ages += [step - int(a.text.split()[1]) for a in stats.representative()]
        assert stats.representative() == stats.representative()  # a function of the state
    recent, older = sum(age <= 1 for age in ages), sum(age >= 3 for age in ages)
    assert recent > older > 0


def test_the_actions_only_ablation_shows_the_same_actions_without_the_shares(demo_event_path: Path) -> None:
    from mfllm.analysis.backtest import BacktestConfig
    from mfllm.simulation.methods import get_method, method_names

    actions = [AgentAction("p", "RT", "repost")] * 3 + [AgentAction("p", f"reply {i}", "comment") for i in range(5)]
    full = StatisticsMeanField("topic", "en", LabellerChain([KindLabeller()]), shown=4)
    ablated = get_method("mf-stats-actions")("topic", "en", LabellerChain([KindLabeller()]), shown=4)
    for provider in (full, ablated):
        provider.observe(actions, seed=0)
    assert "%" in full.context() and "%" not in ablated.context()  # type: ignore[operator]
    assert full.context().endswith(ablated.context().split("\n", 1)[1])  # type: ignore[union-attr]
    assert "mf-stats-actions" in method_names() and "mf-stats-actions" not in BacktestConfig(data=str(demo_event_path)).resolved_methods()
