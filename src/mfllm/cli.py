"""The ``mfllm`` command line: parses arguments (flags derived from the pydantic configs) and calls the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from mfllm.analysis.ablation import AblationConfig
from mfllm.analysis.backtest import BacktestConfig
from mfllm.analysis.branch import BranchConfig
from mfllm.analysis.compare import CompareConfig
from mfllm.analysis.demo import DemoConfig, demo_data_path
from mfllm.analysis.forecast import ForecastConfig
from mfllm.analysis.plan import PlanConfig
from mfllm.configuration import YamlConfig
from mfllm.evaluation.config import EvaluationConfig
from mfllm.evaluation.validate import GOLD_SETS
from mfllm.presentation.app import UiConfig
from mfllm.simulation.config import SimulationConfig
from mfllm.training.config import TrainConfig
from mfllm.training.labeller import LabellerTrainConfig

__all__ = ["build_parser", "demo_data_path", "main"]

SWEPT = ("event_id", "method", "seed")
"""SimulationConfig fields that `mfllm simulate` takes as lists (--event, --method, --seeds)."""
NOT_FOR_LABELLERS = ("window", "alpha", "nll", "information_gain")
"""EvaluationConfig fields that mean nothing when validating labellers."""
COMPARE_SKIPPED = ("window", "nll", "information_gain")
"""EvaluationConfig fields a branch comparison does not use (it compares per step, without scoring)."""
CONFIGS: dict[str, type[YamlConfig]] = {"simulate": SimulationConfig, "train": TrainConfig, "evaluate": EvaluationConfig,
                                        "ablate": AblationConfig, "backtest": BacktestConfig, "branch": BranchConfig, "compare": CompareConfig,
                                        "demo": DemoConfig, "forecast": ForecastConfig, "plan": PlanConfig, "ui": UiConfig}


_BARS: list[Any] = []
"""The progress bars this command drew (closed before an interruption is reported, so the report has its own line)."""


def _progress(total: int, description: str) -> Any:
    from tqdm.auto import tqdm

    _BARS.append(tqdm(total=total, desc=description, unit="agent", file=sys.stderr))
    return _BARS[-1]


# ---------------------------------------------------------------- data


def _cmd_data(args: argparse.Namespace) -> int:
    from mfllm.data.loaders import get_reader, write_generic
    from mfllm.data.personas import persona_text

    reader = get_reader(args.path, args.format)
    path = Path(args.path)
    if args.data_command == "list":
        print(f"format: {reader.name}")
        for event_id in reader.list_events(path):
            if args.stats:
                event, report = reader.load_event(path, event_id)
                kinds = {k: sum(r.kind == k for r in event.reactions) for k in ("comment", "reply", "repost")}
                print(f"{event_id}\t{len(event.reactions)} reactions\t{kinds}\trejected {len(report.rejected)}")
            else:
                print(event_id)
        return 0
    event_ids = args.event or reader.list_events(path)
    if args.data_command == "inspect":
        for event_id in event_ids if args.event else event_ids[:1]:
            event, report = reader.load_event(path, event_id)
            print(f"event {event.event_id} ({event.dataset}, {event.language}) labels={event.labels}")
            print(f"source: {event.source.text[:200]}")
            print(f"load report: {report.summary()}")
            for rejected in report.rejected[: args.show]:
                print(f"  rejected: {rejected}")
            for conflict in report.conflicts[: args.show]:
                print(f"  conflict: {conflict}")
            for reaction in event.reactions[: args.show]:
                print(f"- [{reaction.kind}] {persona_text(reaction.user, event.language)}\n    {reaction.text[:160]}")
        return 0
    events = []
    for event_id in event_ids:
        event, report = reader.load_event(path, event_id)
        events.append(event)
        print(f"{event_id}: {report.summary()}", file=sys.stderr)
    write_generic(events, args.output)
    print(f"wrote {len(events)} events to {args.output}")
    return 0


# ---------------------------------------------------------------- executors


def _executor_flags(p: argparse.ArgumentParser) -> None:
    """--executor, --workers, --ray-address, ... (the ExecutorConfig fields) on a many-run command."""
    from mfllm.executors import ExecutorConfig

    ExecutorConfig.add_arguments(p)


def _executor(args: argparse.Namespace) -> Any:
    from mfllm.executors import ExecutorConfig

    return ExecutorConfig.from_sources(None, ExecutorConfig.overrides(args))


# ---------------------------------------------------------------- simulate


def _print_estimate(plan: dict[str, Any]) -> None:
    from mfllm.simulation.throughput import duration_text

    steps = plan.pop("per_step")
    print(json.dumps(plan, ensure_ascii=False))
    print("step\tagents\tpolicy prompt tokens/action\tfull-history prompt tokens/action")
    for row in steps:
        print(f"{row['step']}\t{row['agents']}\t{row['policy_prompt_tokens']}\t{row['full_history_tokens']}")
    print(f"estimated wall-clock time: {duration_text(plan['wall_clock_s'])} ({plan['speed_source']})")


def _run_written(run: Path) -> None:
    from mfllm.simulation.store import RunStore
    from mfllm.simulation.throughput import throughput_text

    figures = RunStore(run).manifest().get("throughput")
    print(f"run written to {run}" + (f"; {throughput_text(figures)}" if figures else ""))


def _cmd_simulate(args: argparse.Namespace) -> int:
    from mfllm.simulation.sweep import estimate_many, simulate_many, sweep_configs, sweep_plan

    if not args.data and not args.config:
        raise ValueError("mfllm simulate: give --data (or a --config that sets data)")
    base = SimulationConfig.from_sources(args.config, SimulationConfig.overrides(args, skip=SWEPT))
    configs = sweep_configs(base, args.event or [None], args.method or [None], args.seeds or [None])
    if args.dry_run:
        for plan in estimate_many(configs, root=args.output):
            _print_estimate(plan)
        return 0
    simulate_many(sweep_plan(configs, args.output), resume=args.resume, progress=_progress, on_run=_run_written, executor=_executor(args))
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from mfllm.simulation.methods import ALIASES, get_method, method_names

    for name in method_names():
        method = get_method(name)
        kind = f"ablation of {method.ablation_of}" if method.ablation_of else "baseline" if method.is_baseline else "mean field"
        print(f"{name}\t{kind}\t{method.description}")
    for alias, name in ALIASES.items():
        print(f"{alias}\talias\tstands for {name} (the default mean field)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from mfllm.simulation import export_actions

    print(export_actions(args.run, args.output))
    return 0


# ---------------------------------------------------------------- evaluation


def _evaluations(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    from mfllm.evaluation.pipeline import evaluate_runs, find_runs

    config = EvaluationConfig.from_sources(None, EvaluationConfig.overrides(args))
    return evaluate_runs(find_runs(args.runs), config, on_run=lambda e: print(f"evaluated {e.run}", file=sys.stderr),
                         executor=_executor(args))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mfllm.evaluation import write_metrics
    from mfllm.evaluation.report import realism_summary

    evaluations, _ = _evaluations(args)
    written = write_metrics(evaluations, args.output)
    for e in evaluations:
        summary = e.summary()
        kls = ", ".join(f"{d} {summary[f'{d}.kl']:.3f}" for d in e.dimensions)
        nll = f", NLL {e.nll:.3f}" if e.nll is not None else ""
        print(f"{e.event_id} {e.method} seed{e.seed}: " + "; ".join(part for part in (f"KL {kls}{nll}" if kls else "",
                                                                                      realism_summary(e.realism)) if part))
    print(f"metrics written to {written['metrics.json'].parent} (realism table: {written['realism.csv']})")
    return 0


def _cmd_realism(args: argparse.Namespace) -> int:
    from mfllm.evaluation import write_metrics
    from mfllm.evaluation.pipeline import find_runs, realism_only
    from mfllm.evaluation.report import realism_console_table

    evaluations = realism_only(find_runs(args.runs))
    written = write_metrics(evaluations, args.output)
    print(realism_console_table(evaluations))
    print(f"realism table written to {written['realism.csv']}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mfllm.evaluation import write_report

    evaluations, dimensions = _evaluations(args)
    print(f"report written to {write_report(evaluations, dimensions, args.output)}")
    return 0


def _cmd_evaluate_labeller(args: argparse.Namespace) -> int:
    from mfllm.evaluation import resolve_dimensions
    from mfllm.evaluation.pipeline import build_labeller
    from mfllm.evaluation.validate import agreement, gold_items, validate_labeller, write_validations

    config = EvaluationConfig.from_sources(None, EvaluationConfig.overrides(args, skip=NOT_FOR_LABELLERS))
    labeller = build_labeller(config)
    if args.shared_data:
        validations = validate_labeller(labeller, args.shared_data, args.gold_set, rows=args.limit)
        for validation in validations:
            print(validation.render())
        if args.output:
            print(f"validations written to {write_validations(validations, args.output)}")
        return 0
    if not args.data:
        raise ValueError("mfllm evaluate-labeller: give --shared-data (human-labelled gold sets) or --data (a dataset with reply stance)")
    items, gold = gold_items(args.data, args.format, args.limit)
    for dimension in resolve_dimensions(config.dimensions or ["sdqc"], config.dimensions_file):
        print(agreement(labeller, dimension, items, gold).render())
    return 0


# ---------------------------------------------------------------- training and analyses


def _cmd_train(args: argparse.Namespace) -> int:
    from mfllm.training import parse_overrides, train

    config = TrainConfig.from_sources(args.config, {**TrainConfig.overrides(args), "task": args.task, **parse_overrides(args.set)})
    adapter = train(config, resume=args.resume)
    print(json.dumps(json.loads((adapter.parent / "metrics.json").read_text()), indent=1))
    print(f"adapter written to {adapter}")
    return 0


def _cmd_train_labeller(args: argparse.Namespace) -> int:
    from mfllm.training.labeller import train_labellers

    config = LabellerTrainConfig.from_sources(args.config, LabellerTrainConfig.overrides(args))
    for path in train_labellers(config):
        print(f"wrote {path}")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from mfllm.analysis import ablate

    config = AblationConfig.from_sources(args.config, AblationConfig.overrides(args))
    print(f"ablation report written to {ablate(config, resume=args.resume, progress=_progress)}")
    return 0


def _cmd_branch(args: argparse.Namespace) -> int:
    from mfllm.analysis import branch

    config = BranchConfig.from_sources(None, {**BranchConfig.overrides(args, skip=("run",)), "run": args.run})
    print(f"branch written to {branch(config, resume=args.resume, progress=_progress)}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from mfllm.analysis import write_comparison

    config = CompareConfig.from_sources(None, CompareConfig.overrides(args, skip=COMPARE_SKIPPED))
    print(f"comparison written to {write_comparison(args.branch, args.output, config, progress=_progress)}")
    return 0


def _print_backtest_estimate(plan: dict[str, Any]) -> None:
    from mfllm.simulation.throughput import duration_text

    print(f"{len(plan['events'])} events ({', '.join(f'{e}: {n} reactions' for e, n in plan['events'].items())}), {plan['runs']} runs, "
          f"{plan['simulated_actions']} simulated actions")
    for m in plan["methods"]:
        print(f"  {m['method']}: {m['runs']} runs, {m['simulated_actions']} actions, {m['policy_calls']} policy + {m['mean_field_calls']} "
              f"mean-field calls, {m['policy_prompt_tokens'] + m['mean_field_prompt_tokens']:,} prompt tokens, at most "
              f"{m['max_generated_tokens']:,} generated; {duration_text(m['wall_clock_s'])} ({m['speed_source']})")
    print(f"estimated wall-clock time of the backtest: {duration_text(plan['wall_clock_s'])}"
          + ("" if plan["wall_clock_s"] is not None else " (the speed of some method is unknown)"))


def _cmd_backtest(args: argparse.Namespace) -> int:
    from mfllm.analysis.backtest import backtest, backtest_estimate
    from mfllm.evaluation.horizon import horizon_lines
    from mfllm.evaluation.report import headline_text, realism_headline_text
    from mfllm.simulation.throughput import throughput_text

    config = BacktestConfig.from_sources(args.config, BacktestConfig.overrides(args))
    if args.dry_run:
        _print_backtest_estimate(backtest_estimate(config))
        return 0
    result = backtest(config, progress=_progress)
    for point in result["points"]:
        if point["throughput"]:
            print(f"{point['name']}: throughput over {point['throughput']['runs']} runs: {throughput_text(point['throughput'])}")
        for top in point["headlines"]:
            print(f"{point['name']}: {headline_text(top)}")
        if point["realism_headline"]:
            print(f"{point['name']}: {realism_headline_text(point['realism_headline'])}")
        for row in point["paired"]:
            print(f"  {row['method']} - {row['baseline']} {row['metric']}: {row['difference']:+.4f} "
                  f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] over {row['pairs']} pairs")
        for line in horizon_lines(point["horizon_kl"]):
            print(f"  {line}")
    print(f"backtest report: {result['report']}")
    return 0


def _cmd_fields(args: argparse.Namespace) -> int:
    """Print every field of a config with its default and help text (for YAML files and --set)."""
    for name, field in CONFIGS[args.which].model_fields.items():
        default = "(required)" if field.is_required() else repr(field.default)
        print(f"{name} = {default}\n    {field.description}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mfllm.analysis import run_demo
    from mfllm.backends.embedded import shipped_adapter
    from mfllm.simulation.methods import resolve_method

    config = DemoConfig.from_sources(None, DemoConfig.overrides(args))
    mean_field = resolve_method("mf")
    tuned = " and its shipped tuned policy adapter (--no-adapter: the base model)" if config.adapter and shipped_adapter(config.model, "policy") else ""
    print(f"mfllm demo: a real Weibo event ({demo_data_path().name}), simulated with {config.model}{tuned} (the default mean field, "
          f"{mean_field}, and the state baseline)")
    result = run_demo(config, resume=args.resume, progress=_progress)
    print(f"\nrun directories: {', '.join(map(str, result.runs))}  (manifest.json, actions.jsonl, mean_field.jsonl)")
    print(f"throughput ({mean_field}): {result.throughput()} simulated actions/s")
    last_mean_field = result.last_mean_field()
    if last_mean_field:
        print(f"\nlast mean field:\n{last_mean_field}\n")
    print(f"real vs simulated ({mean_field}, first rows):")
    for real, simulated in result.side_by_side(config.show):
        print(f"  real: {real[:70]}\n  sim : {simulated[:70]}\n")
    print("fidelity (lower is closer to the real population):")
    for e in result.evaluations:
        kls = ", ".join(f"{name} {m.kl:.3f}" for name, m in e.dimensions.items())
        print(f"  {e.method:9s} KL per window: {kls}; NLL of real actions {e.nll:.3f} nats/token")
    print(f"\nreport: {result.report}")
    return 0


# ---------------------------------------------------------------- forecasting and intervention search


def _figure(value: float | None, signed: bool = False) -> str:
    """A figure to 3 decimals (signed if asked), or a dash for none or NaN (no interval from a single forecast or seed)."""
    import math

    return "–" if value is None or math.isnan(value) else f"{value:+.3f}" if signed else f"{value:.3f}"



def _cmd_forecast(args: argparse.Namespace) -> int:
    from mfllm.analysis.forecast import forecast

    config = ForecastConfig.from_sources(args.config, ForecastConfig.overrides(args))
    result = forecast(config, resume=args.resume, progress=_progress)
    for e in result.ensembles:
        agents = ", ".join(f"seed{s} {n}" for s, n in e.agents.items())
        print(f"{e.event_id} from reaction {e.warmup}: agents {agents}; {e.windows} windows of {e.window / 3600:.3g} h"
              + (f"; cut at max_agents for seeds {e.capped}" if e.capped else ""))
    level = f"{config.confidence:.0%}"
    for row in result.skills:
        naive = "; ".join(f"{name.replace('_', ' ')} {_figure(row[f'mean_{name}'])} (skill {_figure(row[f'skill_vs_{name}'], True)}, "
                          f"{level} CI {_figure(row[f'skill_vs_{name}_low'], True)} to {_figure(row[f'skill_vs_{name}_high'], True)})"
                          for name in ("last_window", "prefix"))
        print(f"{row['dimension']} {row['metric']}: forecast {_figure(row['mean_forecast'])} vs {naive}; coverage of the {row['band']:.0%} "
              f"band {_figure(row['coverage'])} of {row['coverage_cells']} cells; {row['forecasts']} forecasts on {row['events']} event(s)")
    print(f"CSV: {', '.join(str(path) for path in result.files.values())}")
    print(f"forecast report: {result.report}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from mfllm.analysis.plan import plan

    config = PlanConfig.from_sources(args.config, PlanConfig.overrides(args))
    result = plan(config, resume=args.resume, progress=_progress)
    validation = "; ".join(f"{v.get('labeller')} accuracy {_figure(v.get('accuracy'))}, macro-F1 {_figure(v.get('macro_f1'))} on "
                           f"{v.get('items')} items of {v.get('data')}" for v in result.target.validation) or "no validation figures on record"
    print(f"target: {result.target.describe()}; labeller validation: {validation}")
    print(f"control: mean share {_figure(result.control['share'])} over {result.control['seeds']} seeds")
    for r in result.ranking:
        print(f"{r['rank']}. {r['candidate']} ({r['description']}): share {_figure(r['share'])} [{_figure(r['share_low'])}, "
              f"{_figure(r['share_high'])}], effect {_figure(r['effect'], True)} [{_figure(r['effect_low'], True)}, "
              f"{_figure(r['effect_high'], True)}] over {r['seeds']} seeds, round {r['round_reached']}, {r['model_calls']} model calls")
    print(f"{result.runs} runs of a budget of {config.budget}, {result.calls} model calls; plan report: {result.report}")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from mfllm.presentation.app import serve

    serve(UiConfig.from_sources(None, UiConfig.overrides(args)))
    return 0


def _forecast_parsers(sub: Any) -> None:
    fc = sub.add_parser("forecast", help="forecast past a real prefix with an ensemble (label shares and volume with bands); "
                                         "--score: from origins inside real events, scored against what happened and naive forecasts")
    fc.add_argument("--config", help="YAML file of ForecastConfig fields (`mfllm fields forecast`); flags override it")
    ForecastConfig.add_arguments(fc, aliases={"data_format": ["--format"], "events": ["--event"], "dimensions": ["--dimension"],
                                              "batch_size": ["--batch"]})
    fc.add_argument("--resume", action="store_true", help="continue the forecast's runs from their last completed step")
    fc.set_defaults(func=_cmd_forecast)

    pl = sub.add_parser("plan", help="search candidate interventions for the best at a target, by ensembles of branches from one "
                                     "shared prefix within a budget of runs (successive halving)")
    pl.add_argument("--config", help="YAML file of PlanConfig fields (`mfllm fields plan`); flags override it")
    PlanConfig.add_arguments(pl, aliases={"data_format": ["--format"], "event_id": ["--event"], "batch_size": ["--batch"],
                                          "candidate_files": ["--candidate-file"], "target_dimension": ["--dimension"],
                                          "target_label": ["--label"]})
    pl.add_argument("--resume", action="store_true", help="continue the plan's runs (a larger budget goes on from them)")
    pl.set_defaults(func=_cmd_plan)

    ui = sub.add_parser("ui", help="the web app over a project folder: launch, watch, steer and compare runs in a browser")
    UiConfig.add_arguments(ui)
    ui.set_defaults(func=_cmd_ui)


# ---------------------------------------------------------------- parser


def _data_parsers(sub: Any) -> None:
    data = sub.add_parser("data", help="list, inspect and convert events")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    for name, help_text in (("list", "list event ids"), ("inspect", "show an event and its load report"),
                            ("convert", "write events in the generic JSONL/CSV format")):
        p = data_sub.add_parser(name, help=help_text)
        p.add_argument("path", help="dataset directory or file")
        p.add_argument("--format", help="reader name (detected when omitted)")
        if name == "list":
            p.add_argument("--stats", action="store_true", help="load each event and print counts")
        else:
            p.add_argument("--event", action="append", help="event id (repeatable; default: the first event for inspect, all for convert)")
        if name == "inspect":
            p.add_argument("--show", type=int, default=5, help="reactions and rejected records to print")
        if name == "convert":
            p.add_argument("output", help="output .jsonl or .csv")
    data.set_defaults(func=_cmd_data)


def _evaluation_flags(p: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    EvaluationConfig.add_arguments(p, skip=skip, aliases={"dimensions": ["--dimension"]})


def build_parser() -> argparse.ArgumentParser:
    from mfllm.simulation.methods import ALIASES, method_names

    parser = argparse.ArgumentParser(prog="mfllm", description="Mean-field LLM simulation of population reactions to events.")
    sub = parser.add_subparsers(dest="command", required=True)
    _data_parsers(sub)

    sim = sub.add_parser("simulate", help="simulate events (every event x method x seed)")
    sim.add_argument("--config", help="YAML file of SimulationConfig fields (`mfllm fields simulate`); flags override it")
    SimulationConfig.add_arguments(sim, skip=SWEPT,
                                   aliases={"data_format": ["--format"], "num_agents": ["--agents"], "batch_size": ["--batch"],
                                            "context_k": ["--k"], "interventions": ["--intervention"]})
    sim.add_argument("--event", action="append", help="event id (repeatable; default: the dataset's first event)")
    sim.add_argument("--method", action="append", choices=[*method_names(), *ALIASES], help="method (repeatable; `mfllm methods` describes them)")
    sim.add_argument("--seeds", type=int, nargs="+", help="run seeds, one run each (default: the config's seed, 0)")
    sim.add_argument("--output", default="runs", help="root of the run directories, <output>/<event>/<method>/seed<k>")
    sim.add_argument("--resume", action="store_true", help="continue runs from their last completed step")
    sim.add_argument("--dry-run", action="store_true", help="print model calls, prompt tokens and the wall-clock time "
                     "they will take (at the speed of earlier runs under --output, else a reference figure); generate nothing")
    _executor_flags(sim)
    sim.set_defaults(func=_cmd_simulate)

    sub.add_parser("methods", help="list the registered simulation methods").set_defaults(func=_cmd_methods)

    export = sub.add_parser("export", help="export a run's actions to CSV, Parquet or JSONL")
    export.add_argument("run", help="run directory")
    export.add_argument("output", help="file ending in .csv, .parquet or .jsonl")
    export.set_defaults(func=_cmd_export)

    for name, help_text in (("evaluate", "label runs and compute fidelity metrics (JSON, CSV)"),
                            ("report", "metrics plus an HTML report with figures")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("runs", nargs="+", help="run directories, or roots holding them")
        p.add_argument("--output", default="report" if name == "report" else "metrics", help="output directory")
        _evaluation_flags(p)
        _executor_flags(p)
        p.set_defaults(func=_cmd_evaluate if name == "evaluate" else _cmd_report)

    realism = sub.add_parser("realism", help="realism of runs' texts only (no labels, no model; seconds): the realism table")
    realism.add_argument("runs", nargs="+", help="run directories, or roots holding them")
    realism.add_argument("--output", default="realism", help="output directory (metrics files, realism.csv)")
    realism.set_defaults(func=_cmd_realism)

    validate = sub.add_parser("evaluate-labeller", help="agreement of the labellers with human labels (accuracy, macro-F1, "
                                                       "per-class recall, confusion, majority baseline)")
    validate.add_argument("--shared-data", help="data root holding labeller_validation/, rumoureval2017_processed/, pheme...")
    validate.add_argument("--gold-set", action="append", choices=sorted(GOLD_SETS), help="gold set (repeatable; default: every one "
                                                                                          "the labellers cover)")
    validate.add_argument("--output", help="with --shared-data: write the validations to this JSON file")
    validate.add_argument("--data", help="a dataset with gold reply stance (RumourEval, PHEME), scored on --dimension (default sdqc)")
    validate.add_argument("--format", help="reader name of --data (detected when omitted)")
    validate.add_argument("--limit", type=int, help="first N annotated replies of --data, or N random rows of each gold set")
    _evaluation_flags(validate, skip=NOT_FOR_LABELLERS)
    validate.set_defaults(func=_cmd_evaluate_labeller)

    training = sub.add_parser("train", help="fine-tune the mean-field model (IB-Tune), the policy or an SFT baseline (LoRA), "
                                             "or retrain the offline labellers")
    tasks = training.add_subparsers(dest="task", required=True)
    for task, help_text in (("mean-field", "IB-Tune of the mean-field model (score-function estimator)"),
                            ("policy", "the policy, by NLL of real actions given the mean-field model's mean fields"),
                            ("sft", "an SFT baseline policy, no mean field")):
        p = tasks.add_parser(task, help=help_text)
        p.add_argument("--config", help="YAML file of TrainConfig fields (`mfllm fields train`); flags override it")
        TrainConfig.add_arguments(p, skip=("task",), aliases={"data_format": ["--format"], "events": ["--event"], "output_dir": ["--output"],
                                                             "learning_rate": ["--lr"], "num_samples": ["--samples"], "batch_size": ["--batch"]})
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any TrainConfig field, value parsed as YAML (repeatable)")
        p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
        p.set_defaults(func=_cmd_train)
    p = tasks.add_parser("labeller", help="retrain and validate the shipped offline labellers on human-labelled data")
    p.add_argument("--config", help="YAML file of LabellerTrainConfig fields; flags override it")
    LabellerTrainConfig.add_arguments(p, aliases={"recipes": ["--recipe"]})
    p.set_defaults(func=_cmd_train_labeller)

    fields = sub.add_parser("fields", help="list config fields with defaults and help text")
    fields.add_argument("which", choices=sorted(CONFIGS), help="which command's config")
    fields.set_defaults(func=_cmd_fields)

    ablate = sub.add_parser("ablate", help="simulate and evaluate held-out events with tuned/untuned policy and mean field")
    ablate.add_argument("--config", help="YAML file of AblationConfig fields; flags override it")
    AblationConfig.add_arguments(ablate, aliases={"data_format": ["--format"], "events": ["--event"], "num_agents": ["--agents"],
                                                  "batch_size": ["--batch"], "dimensions": ["--dimension"]})
    ablate.add_argument("--resume", action="store_true", help="continue runs from their last completed step")
    ablate.set_defaults(func=_cmd_ablate)

    branching = sub.add_parser("branch", help="continue a run from its first --at steps with and without a change, under the same seeds")
    branching.add_argument("run", help="parent run directory")
    BranchConfig.add_arguments(branching, skip=("run",), aliases={"interventions": ["--intervention"]})
    branching.add_argument("--resume", action="store_true", help="continue the branch's runs from their last completed step")
    branching.set_defaults(func=_cmd_branch)

    comparing = sub.add_parser("compare", help="label-share trajectories and paired effects of a branch's arms (HTML report)")
    comparing.add_argument("branch", help="branch directory (written by `mfllm branch`)")
    comparing.add_argument("--output", default="comparison", help="output directory")
    CompareConfig.add_arguments(comparing, skip=COMPARE_SKIPPED, aliases={"dimensions": ["--dimension"]})
    comparing.set_defaults(func=_cmd_compare)

    back = sub.add_parser("backtest", help="every method x seed on a set of events, evaluated, in one resumable report")
    back.add_argument("--config", help="YAML file of BacktestConfig fields (`mfllm fields backtest`); flags override it")
    BacktestConfig.add_arguments(back, aliases={"data_format": ["--format"], "events": ["--event"], "methods": ["--method"],
                                                "num_agents": ["--agents"], "batch_size": ["--batch"], "dimensions": ["--dimension"]})
    back.add_argument("--dry-run", action="store_true", help="print the runs, model calls, tokens and wall-clock time the backtest will "
                                                             "take (at the speed of earlier runs under --output, else a reference figure); "
                                                             "generate nothing")
    back.set_defaults(func=_cmd_backtest)

    demo = sub.add_parser("demo", help="simulate the bundled Weibo sample event with the embedded model")
    DemoConfig.add_arguments(demo, aliases={"num_agents": ["--agents"], "batch_size": ["--batch"]})
    demo.add_argument("--resume", action="store_true", help="continue the runs of --output")
    demo.set_defaults(func=_cmd_demo)
    _forecast_parsers(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    """An error as one line (pydantic's multi-line messages joined; a KeyError's message unquoted)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or exc.title}: {e['msg']}" for e in exc.errors())
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return " ".join(str(exc).split())


def _resume_hint(args: argparse.Namespace) -> str:
    """How to continue an interrupted command: committed steps and finished runs are kept."""
    if args.command == "backtest" or getattr(args, "resume", False):
        return "; run the same command again to continue where it stopped"
    if hasattr(args, "resume"):
        return "; run the same command with --resume to continue where it stopped"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    from mfllm.backends.wrappers import BackendError
    from mfllm.data.schema import DataFormatError
    from mfllm.executors import TaskFailures
    from mfllm.redaction import redact_secrets
    from mfllm.simulation.store import RunLockedError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        while _BARS:
            _BARS.pop().close()
        print(f"mfllm: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (e.g. `| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (DataFormatError, BackendError, RunLockedError, TaskFailures, OSError, KeyError, ValueError, ImportError) as exc:
        print(f"mfllm: error: {redact_secrets(_one_line(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
