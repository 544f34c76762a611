"""Realism, label KL and information gain per method for a folder of runs (each run's evaluation.json
written by `mfllm backtest`), with realism recomputed from actions.jsonl by mfllm.evaluation.realism.

    python scripts/realism_table.py BACKTEST_DIR [BACKTEST_DIR ...]

Prints one markdown table per folder: per method, means over runs of each measure (real beside simulated).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from mfllm.data.loaders import load_event
from mfllm.evaluation.evaluate import shown_contexts
from mfllm.evaluation.realism import realism
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.store import RunStore

COLUMNS = ("discriminator_accuracy", "median_length_sim", "median_length_real", "length_w1", "degenerate_sim", "degenerate_real",
           "duplicate_sim", "duplicate_real", "copied_sim", "distinct2_sim", "distinct2_real", "repost_sim", "repost_real")


def measures(run: Path) -> dict[str, float | None]:
    store = RunStore(run)
    config = SimulationConfig(**store.manifest()["config"])
    event, _ = load_event(config.data, config.event_id, config.data_format)
    rows = [r for r in store.actions() if "failure" not in r and r.get("real_text") is not None]
    out = realism(rows, shown_contexts(store, config, event), event.source.text, config.seed)
    out["repost_sim"] = out["share_repost_sim"] + out["share_repost_with_text_sim"]
    out["repost_real"] = out["share_repost_real"] + out["share_repost_with_text_real"]
    saved = run / "evaluation.json"
    if saved.exists():
        evaluation = json.loads(saved.read_text(encoding="utf-8"))["evaluation"]
        kls = [d["kl"] for d in evaluation["dimensions"].values() if d.get("kl") is not None]
        out["mean_kl"] = statistics.fmean(kls) if kls else None
        out["ig_all"] = ((evaluation.get("information_gain") or {}).get("all") or {}).get("gain")
    return out


def table(folder: Path) -> str:
    by_method: dict[str, list[dict[str, float | None]]] = {}
    for manifest in sorted(folder.rglob("manifest.json")):
        if (manifest.parent / "actions.jsonl").exists():
            by_method.setdefault(json.loads(manifest.read_text(encoding="utf-8"))["config"]["method"], []).append(measures(manifest.parent))
    columns = (*COLUMNS, "mean_kl", "ig_all")
    lines = [f"| method | runs | {' | '.join(columns)} |", "|" + "---|" * (len(columns) + 2)]
    for method, runs in sorted(by_method.items()):
        cells = []
        for column in columns:
            values = [r[column] for r in runs if r.get(column) is not None]
            cells.append(f"{statistics.fmean(values):.3f}" if values else "–")
        lines.append(f"| {method} | {len(runs)} | {' | '.join(cells)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(f"\n{argument}\n{table(Path(argument))}")
