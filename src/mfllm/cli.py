"""The ``mfllm`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any, Sequence

DEMO_EVENT = "weibo_covid19_sample.jsonl"


def demo_data_path() -> Path:
    """The bundled sample event (a real Weibo event, see ``data/sample/ATTRIBUTION.md``)."""
    return Path(str(files("mfllm.data").joinpath("sample", DEMO_EVENT)))


def _progress(total: int, description: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="agent", file=sys.stderr)


# ---------------------------------------------------------------- data


def _cmd_data(args: argparse.Namespace) -> int:
    from mfllm.data.loaders import get_reader, write_generic

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
        for event_id in event_ids[:1] if not args.event else event_ids:
            event, report = reader.load_event(path, event_id)
            from mfllm.data.personas import persona_text

            print(f"event {event.event_id} ({event.dataset}, {event.language}) labels={event.labels}")
            print(f"source: {event.source.text[:200]}")
            print(f"load report: {report.summary()}")
            for rejected in report.rejected[: args.show]:
                print(f"  rejected: {rejected}")
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


# ---------------------------------------------------------------- simulate


def _simulation_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data": args.data, "data_format": args.format, "method": None, "policy_model": args.policy_model,
        "mean_field_model": args.mean_field_model, "policy_adapter": args.policy_adapter, "mean_field_adapter": args.mean_field_adapter,
        "num_agents": args.agents, "warmup": args.warmup, "batch_size": args.batch, "context_k": args.k, "temperature": args.temperature,
        "max_action_tokens": args.max_action_tokens, "device": args.device, "dtype": args.dtype,
    }


def run_matrix(base: dict[str, Any], yaml_path: str | None, events: Sequence[str | None], methods: Sequence[str | None],
               seeds: Sequence[int | None], output: Path, resume: bool, dry_run: bool, quiet: bool = False) -> list[Path]:
    """Simulate every (event, method, seed) into ``output/<event>/<method>/seed<k>``; one model pool for all."""
    from mfllm.backends import ModelPool
    from mfllm.data.loaders import get_reader, load_event
    from mfllm.simulation import SimulationConfig, estimate, simulate

    runs: list[Path] = []
    pool: ModelPool | None = None
    for event_id in events:
        for method in methods:
            for seed in seeds:
                config = SimulationConfig.from_sources(yaml_path, {**base, "event_id": event_id, "method": method, "seed": seed})
                pool = pool or ModelPool(config.device, config.dtype)
                if dry_run:
                    event, _ = load_event(config.data, config.event_id, config.data_format)
                    policy = pool.get(config.policy_model)
                    plan = estimate(config, event, policy)
                    _print_estimate(plan)
                    continue
                if config.event_id is None:
                    first = get_reader(config.data, config.data_format).list_events(Path(config.data))[:1]
                    config = config.model_copy(update={"event_id": first[0] if first else None})
                run_dir = output / str(config.event_id) / config.method / f"seed{config.seed}"
                simulate(config, run_dir, pool=pool, resume=resume, progress=None if quiet else _progress)
                runs.append(run_dir)
                if not quiet:
                    print(f"run written to {run_dir}")
    return runs


def _print_estimate(plan: dict[str, Any]) -> None:
    steps = plan.pop("per_step")
    print(json.dumps(plan, ensure_ascii=False))
    print("step\tagents\tpolicy prompt tokens/action\tfull-history prompt tokens/action")
    for row in steps:
        print(f"{row['step']}\t{row['agents']}\t{row['policy_prompt_tokens']}\t{row['full_history_tokens']}")


def _cmd_simulate(args: argparse.Namespace) -> int:
    if not args.data and not args.config:
        raise SystemExit("mfllm simulate: give --data (or a --config that sets data)")
    run_matrix(_simulation_overrides(args), args.config, args.event or [None], args.method or [None], args.seeds or [None],
               Path(args.output), args.resume, args.dry_run)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from mfllm.simulation import export_actions

    print(export_actions(args.run, args.output))
    return 0


# ---------------------------------------------------------------- evaluation


def build_labeller(args: argparse.Namespace, pool: Any = None) -> Any:
    """kind (behaviour) -> lexicon (sentiment, zh emotion) -> optional LLM judge for the rest."""
    from mfllm.backends import ModelPool
    from mfllm.evaluation import KindLabeller, LabellerChain, LexiconLabeller, LLMJudgeLabeller

    chain = [] if args.judge_only else [KindLabeller(), LexiconLabeller()]
    if args.judge_model:
        pool = pool or ModelPool(args.device or "auto")
        cache = Path(args.labeller_cache) / "judge.jsonl" if args.labeller_cache else None
        chain.append(LLMJudgeLabeller(pool.get(args.judge_model), mode=args.judge_mode, cache_path=cache))
    if not chain:
        raise ValueError("--judge-only needs --judge-model")
    return LabellerChain(chain)


def _evaluations(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    from mfllm.backends import ModelPool
    from mfllm.evaluation import evaluate_run, resolve_dimensions
    from mfllm.simulation import RunStore

    dimensions = resolve_dimensions(args.dimension, args.dimensions_file)
    pool = ModelPool(args.device or "auto")
    labeller = build_labeller(args, pool)
    runs = [p.parent for run in args.runs for p in sorted(Path(run).rglob("manifest.json"))] or [Path(r) for r in args.runs]
    evaluations = []
    for run in runs:
        policy = None
        if args.nll:
            config = RunStore(run).manifest()["config"]
            policy = pool.get(config["policy_model"], adapter=config.get("policy_adapter"), role="policy")
        evaluations.append(evaluate_run(run, labeller, dimensions, args.window, args.alpha, policy))
        print(f"evaluated {run}", file=sys.stderr)
    return evaluations, dimensions


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mfllm.evaluation import write_metrics

    evaluations, _ = _evaluations(args)
    written = write_metrics(evaluations, args.output)
    for e in evaluations:
        summary = e.summary()
        kls = ", ".join(f"{d} {summary[f'{d}.kl']:.3f}" for d in e.dimensions)
        nll = f", NLL {e.nll:.3f}" if e.nll is not None else ""
        print(f"{e.event_id} {e.method} seed{e.seed}: KL {kls}{nll}")
    print(f"metrics written to {written['metrics.json'].parent}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mfllm.evaluation import write_report

    evaluations, dimensions = _evaluations(args)
    index = write_report(evaluations, dimensions, args.output)
    print(f"report written to {index}")
    return 0


def _cmd_evaluate_labeller(args: argparse.Namespace) -> int:
    from mfllm.evaluation import resolve_dimensions
    from mfllm.evaluation.validate import agreement, gold_items

    items, gold = gold_items(args.data, args.format, args.limit)
    labeller = build_labeller(args)
    for dimension in resolve_dimensions(args.dimension or ["sdqc"], args.dimensions_file):
        print(agreement(labeller, dimension, items, gold).render())
    return 0


def _add_evaluation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dimension", action="append", help="dimension name (repeatable; default: all built-in)")
    p.add_argument("--dimensions-file", help="YAML list of extra dimensions (name, labels, definition, ordinal)")
    p.add_argument("--judge-model", help="model spec of an LLM judge for dimensions the lexicons do not cover")
    p.add_argument("--judge-mode", choices=["likelihood", "generate"], default="likelihood")
    p.add_argument("--judge-only", action="store_true", help="label every dimension with the judge")
    p.add_argument("--labeller-cache", help="directory for the judge's label cache")
    p.add_argument("--device")


# ---------------------------------------------------------------- training


def _cmd_train(args: argparse.Namespace) -> int:
    from mfllm.training import TrainConfig, parse_overrides, train

    overrides = {"task": args.task, "data": args.data, "data_format": args.format, "events": args.event, "max_events": args.max_events,
                 "base_model": args.base_model, "output_dir": args.output, "max_steps": args.max_steps, "learning_rate": args.lr,
                 "beta": args.beta, "num_samples": args.samples, "lora_r": args.lora_r, "batch_size": args.batch,
                 "mean_field_adapter": args.mean_field_adapter, "policy_adapter": args.policy_adapter, "device": args.device,
                 "dtype": args.dtype, "gradient_checkpointing": True if args.gradient_checkpointing else None,
                 **parse_overrides(args.set)}
    config = TrainConfig.from_sources(args.config, overrides)
    adapter = train(config, resume=args.resume)
    metrics = json.loads((adapter.parent / "metrics.json").read_text())
    print(json.dumps(metrics, indent=1))
    print(f"adapter written to {adapter}")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    """Simulate held-out events under every combination of tuned/untuned policy and mean field, then
    evaluate them in one table (the variant is the table's method column)."""
    from mfllm.backends import ModelPool
    from mfllm.evaluation import KindLabeller, LabellerChain, LexiconLabeller, evaluate_run, resolve_dimensions, write_report
    from mfllm.simulation import SimulationConfig, simulate

    variants = {"mf (untuned)": {}}
    if args.policy_adapter:
        variants["mf + tuned policy"] = {"policy_adapter": args.policy_adapter}
    if args.mean_field_adapter:
        variants["mf + tuned mean field"] = {"mean_field_adapter": args.mean_field_adapter}
    if args.policy_adapter and args.mean_field_adapter:
        variants["mf + both tuned"] = {"policy_adapter": args.policy_adapter, "mean_field_adapter": args.mean_field_adapter}
    if args.sft_adapter:
        variants["sft"] = {"method": "sft", "policy_adapter": args.sft_adapter}
    variants["state"] = {"method": "state"}
    pool = ModelPool(args.device or "auto")
    labeller = LabellerChain([KindLabeller(), LexiconLabeller()])
    dimensions = resolve_dimensions(args.dimension or ["sentiment", "emotion", "behaviour"])
    evaluations = []
    for name, extra in variants.items():
        slug = name.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus")
        base = {"data": args.data, "data_format": args.format, "policy_model": args.base_model, "num_agents": args.agents,
                "warmup": args.warmup, "batch_size": args.batch, "device": args.device, "method": "mf", **extra}
        for event_id in args.event:
            for seed in args.seeds:
                config = SimulationConfig.from_sources(None, {**base, "event_id": event_id, "seed": seed})
                run = simulate(config, Path(args.output) / slug / event_id / f"seed{seed}", pool=pool, resume=args.resume,
                               progress=_progress)
                policy = pool.get(config.policy_model, adapter=config.policy_adapter, role="policy")
                evaluation = evaluate_run(run, labeller, dimensions, policy=policy)
                evaluation.method = name
                evaluations.append(evaluation)
    index = write_report(evaluations, dimensions, Path(args.output) / "report")
    print(f"ablation report written to {index}")
    return 0


def _cmd_fields(args: argparse.Namespace) -> int:
    """Print every field of a config with its default and help text (for YAML files and --set)."""
    from mfllm.simulation import SimulationConfig
    from mfllm.training import TrainConfig

    model = SimulationConfig if args.which == "simulate" else TrainConfig
    for name, field in model.model_fields.items():
        default = "(required)" if field.is_required() else repr(field.default)
        print(f"{name} = {default}\n    {field.description}")
    return 0


# ---------------------------------------------------------------- demo


def _cmd_demo(args: argparse.Namespace) -> int:
    from mfllm.backends import ModelPool
    from mfllm.evaluation import KindLabeller, LabellerChain, LexiconLabeller, evaluate_run, resolve_dimensions, write_report
    from mfllm.simulation import RunStore

    output = Path(args.output) if args.output else Path("runs") / "demo" / datetime.now().strftime("%Y%m%d-%H%M%S")
    base = {"data": str(demo_data_path()), "policy_model": args.model, "num_agents": args.agents, "warmup": args.warmup,
            "batch_size": args.batch, "device": args.device}
    print(f"mfllm demo: a real Weibo event ({demo_data_path().name}), simulated with {args.model} (mean field, and the state baseline)")
    runs = run_matrix(base, None, [None], ["mf", "state"], [args.seed], output, resume=args.resume, dry_run=False)
    store = RunStore(runs[0])
    manifest = store.manifest()
    print(f"\nrun directories: {', '.join(map(str, runs))}  (manifest.json, actions.jsonl, mean_field.jsonl)")
    print(f"throughput (mf): {manifest['throughput']['actions_per_second']} simulated actions/s")
    history = store.mean_field_history()
    if history:
        print(f"\nlast mean field: {history[-1]['text']}\n")
    print("real vs simulated (mf, first rows):")
    for row in store.actions()[: args.show]:
        print(f"  real: {row['real_text'][:70]}\n  sim : {row['sim_text'][:70]}\n")
    pool = ModelPool(args.device)
    labeller = LabellerChain([KindLabeller(), LexiconLabeller()])
    dimensions = resolve_dimensions(["sentiment", "emotion", "behaviour"])
    evaluations = []
    for run in runs:
        policy = pool.get(RunStore(run).manifest()["config"]["policy_model"])
        evaluations.append(evaluate_run(run, labeller, dimensions, policy=policy))
    print("fidelity (lower is closer to the real population):")
    for e in evaluations:
        kls = ", ".join(f"{name} {m.kl:.3f}" for name, m in e.dimensions.items())
        print(f"  {e.method:6s} KL per window: {kls}; NLL of real actions {e.nll:.3f} nats/token")
    index = write_report(evaluations, dimensions, output / "report")
    print(f"\nreport: {index}")
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfllm", description="Mean-field LLM simulation of population reactions to events.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="list, inspect and convert events")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    for name, help_text in (("list", "list event ids"), ("inspect", "show an event and its load report"),
                            ("convert", "write events in the generic JSONL/CSV format")):
        p = data_sub.add_parser(name, help=help_text)
        p.add_argument("path")
        p.add_argument("--format", help="reader name (detected when omitted)")
        if name == "list":
            p.add_argument("--stats", action="store_true", help="load each event and print counts")
        else:
            p.add_argument("--event", action="append", help="event id (repeatable)")
        if name == "inspect":
            p.add_argument("--show", type=int, default=5, help="reactions to print")
        if name == "convert":
            p.add_argument("output", help="output .jsonl or .csv")
    data.set_defaults(func=_cmd_data)

    sim = sub.add_parser("simulate", help="simulate events (every event x method x seed)")
    sim.add_argument("--config", help="YAML file of SimulationConfig fields; flags override it")
    sim.add_argument("--data", help="dataset directory or file")
    sim.add_argument("--format", help="reader name (detected when omitted)")
    sim.add_argument("--event", action="append", help="event id (repeatable)")
    sim.add_argument("--method", action="append", choices=["mf", "state", "recent", "popular", "sft"], help="repeatable")
    sim.add_argument("--policy-model", help="embedded:NAME, hf:PATH[#FILE.gguf], openai:MODEL@URL or fake")
    sim.add_argument("--mean-field-model", help="defaults to the policy model")
    sim.add_argument("--policy-adapter", help="LoRA adapter directory for the policy")
    sim.add_argument("--mean-field-adapter", help="LoRA adapter directory for the mean-field model")
    sim.add_argument("--agents", type=int, help="agents to simulate after warm-up (default: all)")
    sim.add_argument("--warmup", type=int, help="real reactions before simulation starts")
    sim.add_argument("--batch", type=int, help="agents per step")
    sim.add_argument("--k", type=int, help="actions shown by recent/popular")
    sim.add_argument("--seeds", type=int, nargs="+", help="one run per seed")
    sim.add_argument("--temperature", type=float)
    sim.add_argument("--max-action-tokens", type=int)
    sim.add_argument("--device")
    sim.add_argument("--dtype")
    sim.add_argument("--output", default="runs", help="root directory of the run directories")
    sim.add_argument("--resume", action="store_true", help="continue runs from their last completed step")
    sim.add_argument("--dry-run", action="store_true", help="print model calls and prompt tokens; generate nothing")
    sim.set_defaults(func=_cmd_simulate)

    export = sub.add_parser("export", help="export a run's actions to CSV, Parquet or JSONL")
    export.add_argument("run")
    export.add_argument("output", help="file ending in .csv, .parquet or .jsonl")
    export.set_defaults(func=_cmd_export)

    for name, help_text in (("evaluate", "label runs and compute fidelity metrics (JSON, CSV)"),
                            ("report", "metrics plus an HTML report with figures")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("runs", nargs="+", help="run directories, or roots holding them")
        p.add_argument("--output", default="report" if name == "report" else "metrics")
        p.add_argument("--window", default="step", help="step (simulation batch), count:N or time:SECONDS")
        p.add_argument("--alpha", type=float, default=0.5, help="smoothing pseudo-count per label")
        p.add_argument("--nll", action="store_true", help="also score real actions under the run's policy (loads the model)")
        _add_evaluation_flags(p)
        p.set_defaults(func=_cmd_evaluate if name == "evaluate" else _cmd_report)

    validate = sub.add_parser("evaluate-labeller", help="agreement of a labeller with human stance labels")
    validate.add_argument("--data", required=True, help="dataset with gold reply stance (RumourEval, PHEME)")
    validate.add_argument("--format")
    validate.add_argument("--limit", type=int, help="first N annotated replies")
    _add_evaluation_flags(validate)
    validate.set_defaults(func=_cmd_evaluate_labeller)

    training = sub.add_parser("train", help="fine-tune the mean-field model (IB-Tune), the policy, or an SFT baseline (LoRA)")
    training.add_argument("task", choices=["mean-field", "policy", "sft"])
    training.add_argument("--config", help="YAML file of TrainConfig fields; flags override it")
    training.add_argument("--data")
    training.add_argument("--format")
    training.add_argument("--event", action="append", help="event id (repeatable; default: all)")
    training.add_argument("--max-events", type=int)
    training.add_argument("--base-model")
    training.add_argument("--output", help="output directory")
    training.add_argument("--max-steps", type=int)
    training.add_argument("--lr", type=float)
    training.add_argument("--beta", type=float, help="mean-field: KL weight")
    training.add_argument("--samples", type=int, help="mean-field: K summaries per context")
    training.add_argument("--lora-r", type=int)
    training.add_argument("--batch", type=int, help="agents per simulation step")
    training.add_argument("--mean-field-adapter", help="policy: mean fields from this adapter")
    training.add_argument("--policy-adapter", help="mean-field: policy that scores next actions")
    training.add_argument("--device")
    training.add_argument("--dtype")
    training.add_argument("--gradient-checkpointing", action="store_true")
    training.add_argument("--set", action="append", metavar="KEY=VALUE", help="any TrainConfig field (repeatable)")
    training.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    training.set_defaults(func=_cmd_train)

    fields = sub.add_parser("fields", help="list config fields with defaults and help text")
    fields.add_argument("which", choices=["simulate", "train"])
    fields.set_defaults(func=_cmd_fields)

    ablate = sub.add_parser("ablate", help="simulate and evaluate held-out events with tuned/untuned policy and mean field")
    ablate.add_argument("--data", required=True)
    ablate.add_argument("--format")
    ablate.add_argument("--event", action="append", required=True, help="held-out event id (repeatable)")
    ablate.add_argument("--base-model", default="embedded:gemma-3-270m")
    ablate.add_argument("--policy-adapter")
    ablate.add_argument("--mean-field-adapter")
    ablate.add_argument("--sft-adapter")
    ablate.add_argument("--agents", type=int, default=32)
    ablate.add_argument("--warmup", type=int, default=16)
    ablate.add_argument("--batch", type=int, default=16)
    ablate.add_argument("--seeds", type=int, nargs="+", default=[0])
    ablate.add_argument("--dimension", action="append")
    ablate.add_argument("--device", default="auto")
    ablate.add_argument("--output", default="runs/ablation")
    ablate.add_argument("--resume", action="store_true")
    ablate.set_defaults(func=_cmd_ablate)

    demo = sub.add_parser("demo", help="simulate the bundled Weibo sample event with the embedded model")
    demo.add_argument("--model", default="embedded:gemma-3-270m")
    demo.add_argument("--output", help="run root (default: runs/demo/<timestamp>)")
    demo.add_argument("--agents", type=int, default=48)
    demo.add_argument("--warmup", type=int, default=32)
    demo.add_argument("--batch", type=int, default=16)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="auto")
    demo.add_argument("--show", type=int, default=8, help="side-by-side rows to print")
    demo.add_argument("--resume", action="store_true")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from mfllm.data.schema import DataFormatError

    try:
        return args.func(args)
    except (DataFormatError, FileNotFoundError, FileExistsError, KeyError, ValueError, ImportError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"mfllm: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
