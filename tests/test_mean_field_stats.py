"""The statistics mean field: label shares with forgetting, recent comments, no model call, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfllm.evaluation.labellers import KindLabeller, LabellerChain
from mfllm.interfaces import AgentAction
from mfllm.simulation import RunStore, SimulationConfig, simulate
from mfllm.simulation.methods.mean_field_stats import StatisticsMeanField


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
    usage = manifest["usage"]["policy"]  # one scoring of kind markers per step, one generation unless all agents repost bare
    assert manifest["models"]["mean_field"] is None and usage["score_calls"] == 4 and 1 <= usage["generate_calls"] <= 4
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
