"""The command line, end to end on the fake backend and the bundled/shared data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfllm.cli import main
from mfllm.simulation.methods import get_method, resolve_method


def test_data_list_inspect_convert(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list", str(shared_data / "pheme_rumour_scheme_subset")]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0] == "format: pheme" and "552783667052167168" in listing
    assert main(["data", "inspect", str(shared_data / "weibo_covid19_rumor"), "--event", "4484800548711562", "--show", "2"]) == 0
    shown = capsys.readouterr().out
    assert ("95 reactions loaded, 0 rejected, 64 repeated reactions removed (0 with conflicting content), "
            "1 repost-and-comment pairs kept as their repost") in shown and "性别" in shown
    out = tmp_path / "two.csv"
    assert main(["data", "convert", str(shared_data / "ced_weibo"), str(out), "--event", "0_yBmepBtUB_2279086572",
                 "--event", "1002_zne7v6NMq_2464670392"]) == 0
    assert main(["data", "list", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["0_yBmepBtUB_2279086572", "1002_zne7v6NMq_2464670392"]


def test_truncated_file_gives_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "e.jsonl"
    bad.write_text('{"event_id": "e", "kind": "comment", "post_id": "1", "text": "x", "timestamp": 1}\n')
    assert main(["simulate", "--data", str(bad), "--policy-model", "fake", "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "no usable record with kind 'source'" in err
    cut = tmp_path / "cut.json"
    cut.write_text('[{"t": 1, "text": "a", "uid": "1", "mid": "m"}, {"t": 2, "te')
    assert main(["data", "inspect", str(cut), "--format", "rumdect"]) == 2
    assert "cut.json: invalid JSON" in capsys.readouterr().err


def test_simulate_matrix_and_dry_run(demo_event_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["simulate", "--data", str(demo_event_path), "--policy-model", "fake", "--agents", "16", "--warmup", "8", "--batch", "8"]
    assert main(args + ["--method", "mf", "--method", "popular", "--seeds", "0", "1", "--output", str(tmp_path)]) == 0
    runs = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("manifest.json"))
    mf = resolve_method("mf")  # the alias runs (and names directories after) the default mean field
    assert runs == [f"4484800548711562/{mf}/seed0", f"4484800548711562/{mf}/seed1", "4484800548711562/popular/seed0",
                    "4484800548711562/popular/seed1"]
    capsys.readouterr()
    assert main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.splitlines()[0])
    assert summary["policy_calls"] == 2 and summary["agents"] == 16
    assert summary["mean_field_calls"] == (3 if get_method(mf).needs_mean_field_model else 0)
    assert "full-history prompt tokens/action" in out


def test_simulate_from_yaml(demo_event_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {demo_event_path}\nmethod: recent\npolicy_model: fake\nwarmup: 4\nnum_agents: 5\n")
    assert main(["simulate", "--config", str(config), "--batch", "2", "--output", str(tmp_path / "out")]) == 0
    manifest = json.loads(next((tmp_path / "out").rglob("manifest.json")).read_text())
    assert manifest["config"]["method"] == "recent" and manifest["config"]["batch_size"] == 2
    assert manifest["schedule"]["rollout_agents"] == 5
