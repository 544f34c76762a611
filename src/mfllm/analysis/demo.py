"""The demo: a bundled real Weibo event simulated with the embedded model (mean field and the state
baseline), evaluated and reported."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mfllm.analysis.experiments import simulate_and_evaluate
from mfllm.configuration import YamlConfig
from mfllm.evaluation.config import EvaluationConfig
from mfllm.evaluation.evaluate import RunEvaluation
from mfllm.evaluation.report import write_report
from mfllm.prompts import action_line
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import ProgressFactory
from mfllm.simulation.store import RunStore
from mfllm.simulation.sweep import sweep_configs, sweep_plan

DEMO_EVENT = "weibo_covid19_sample.jsonl"
DEMO_METHODS = ("mf", "state")


def demo_data_path() -> Path:
    """The bundled sample event (a real Weibo event, see ``data/sample/ATTRIBUTION.md``)."""
    return Path(str(files("mfllm.data").joinpath("sample", DEMO_EVENT)))


class DemoConfig(YamlConfig):
    """The demo's model and schedule."""

    model: str = Field(default="embedded:gemma-3-270m", description="Policy and mean-field model spec.")
    adapter: bool = Field(default=True, description=SimulationConfig.model_fields["adapter"].description)
    output: str | None = Field(default=None, description="Run root (default: runs/demo/<timestamp>).")
    num_agents: int = Field(default=48, ge=1, description="Agents simulated after warm-up.")
    warmup: int = Field(default=32, ge=0, description="Real reactions fed to the context before simulation starts.")
    batch_size: int = Field(default=16, ge=1, description="Agents per step.")
    seed: int = Field(default=0, description="Run seed.")
    device: str = Field(default="auto", description="auto, cpu, cuda, ...")
    engine: Literal["auto", "llamacpp", "transformers"] = Field(default="auto", description="What runs the embedded model "
                                                                                               "(auto: llama.cpp on a CPU).")
    show: int = Field(default=8, ge=0, description="Real vs simulated rows to print.")


@dataclass
class DemoResult:
    """What the demo made: its runs (mean field first), their evaluations and the report."""

    runs: list[Path]
    evaluations: list[RunEvaluation]
    report: Path

    @property
    def mean_field_run(self) -> RunStore:
        return RunStore(self.runs[0])

    def side_by_side(self, count: int) -> list[tuple[str, str]]:
        """(real, simulated) actions of the mean-field run's first ``count`` rows, as the policy writes them."""
        language = self.mean_field_run.manifest()["event"]["language"]
        return [(action_line(row["real_kind"], row["real_text"], language), action_line(row["sim_kind"] or "comment", row["sim_text"], language))
                for row in self.mean_field_run.actions()[:count]]

    def last_mean_field(self) -> str | None:
        history = self.mean_field_run.mean_field_history()
        return history[-1]["text"] if history else None

    def throughput(self) -> Any:
        return self.mean_field_run.manifest()["throughput"]["actions_per_second"]


def run_demo(config: DemoConfig, resume: bool = False, progress: ProgressFactory | None = None) -> DemoResult:
    """Simulate the bundled event with the mean field and the state baseline, evaluate both (offline
    labellers and the policy's NLL of the real actions) and write the report; one model pool."""
    output = Path(config.output) if config.output else Path("runs") / "demo" / datetime.now().strftime("%Y%m%d-%H%M%S")
    base = SimulationConfig(data=str(demo_data_path()), policy_model=config.model, num_agents=config.num_agents, warmup=config.warmup,
                            batch_size=config.batch_size, seed=config.seed, device=config.device, engine=config.engine,
                            adapter=config.adapter)
    plan = sweep_plan(sweep_configs(base, methods=DEMO_METHODS), output)
    evaluation = EvaluationConfig(dimensions=["sentiment", "emotion", "behaviour"], nll=True, device=config.device)
    evaluations, dimensions = simulate_and_evaluate(plan, evaluation, resume=resume, progress=progress)
    return DemoResult([run for _, run in plan], evaluations, write_report(evaluations, dimensions, output / "report"))
