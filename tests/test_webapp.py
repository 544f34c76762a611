"""The web app (``mfllm ui``) in a real browser: Playwright drives Debian's Chromium (``make setup`` installs it) against the
app started on a free port with the fake backend and the bundled sample event. It launches a run and watches it finish,
stops and resumes one, forks a branch with an intervention from a run's page and opens its comparison, and opens every
page checking that its charts are drawn and that no console error appears.

``MFLLM_SCREENSHOTS=docs/screenshots`` also saves screenshots of the main pages there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from mfllm.analysis.demo import demo_data_path
from mfllm.simulation.store import RunStore

playwright_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright: pip install 'mfllm[test]'")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium not installed (make setup installs it)")
SCREENSHOTS = os.environ.get("MFLLM_SCREENSHOTS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    project = tmp_path_factory.mktemp("ui-project")
    port = _free_port()
    log = (project / "server.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "mfllm.cli", "ui", "--project", str(project), "--port", str(port),
                                "--policy-model", "fake"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            _get(url + "/api/jobs")
            break
        except OSError:
            assert process.poll() is None and time.time() < deadline, (project / "server.log").read_text()
            time.sleep(0.2)
    yield {"url": url, "project": project}
    process.terminate()
    process.wait(timeout=30)
    log.close()
    assert "Traceback" not in (project / "server.log").read_text(), (project / "server.log").read_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM, "chromium is missing: `make setup` installs it from Debian's packages"
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


class Page:
    """A browser tab that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, url: str):
        self.tab = browser.new_page(viewport={"width": 1280, "height": 900})
        self.url, self.errors = url, []
        self.tab.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        self.tab.on("pageerror", lambda error: self.errors.append(str(error)))

    def open(self, path: str) -> Any:
        response = self.tab.goto(self.url + path)
        assert response is not None and response.ok, (path, response.status if response else None)
        self.tab.wait_for_load_state("networkidle")
        return self.tab

    def check_charts(self, at_least: int = 0) -> int:
        """Every chart of the page is drawn (a canvas with a size); returns how many."""
        drawn = self.tab.eval_on_selector_all("figure.chart", "fs => fs.map(f => [f.dataset.rendered === 'true', "
                                                              "(f.querySelector('canvas') || {}).width || 0])")
        assert len(drawn) >= at_least and all(rendered and width > 0 for rendered, width in drawn), drawn
        assert self.errors == [], self.errors
        return len(drawn)

    def shot(self, name: str) -> None:
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            self.tab.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=False)


def _launch(page: Page, command: str, fields: dict[str, str], estimate: bool = False) -> str:
    tab = page.open(f"/launch/{command}")
    for name, value in fields.items():
        tab.fill(f"#f-{name}", value)
    if estimate:
        tab.click("#estimate")
        tab.wait_for_selector("#estimate-result:has-text('policy calls')")
        shown = _get_estimate(page.url, command, fields)
        summary = page.tab.inner_text("#estimate-summary")
        assert f"{shown['model_calls']:,} model calls" in summary and f"{shown['prompt_tokens']:,} prompt tokens" in summary
        assert "unknown speed" in page.tab.inner_text("#estimate-time") or "actions/s" in page.tab.inner_text("#estimate-time")
        page.shot("launch")
    tab.click("#start")
    tab.wait_for_url("**/jobs/*")
    return tab.url.rsplit("/", 1)[1]


def _get_estimate(url: str, command: str, fields: dict[str, str]) -> Any:
    body = json.dumps({"command": command, "config": {"data": str(demo_data_path()), "policy_model": "fake", **fields}}).encode()
    request = urllib.request.Request(url + "/api/estimate", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _wait_state(page: Page, state: str, timeout: float = 90_000) -> None:
    page.tab.wait_for_selector(f"#state:text-is('{state}')", timeout=timeout)


def test_launch_a_run_and_watch_it_finish(server: dict[str, Any], browser: Any) -> None:
    page = Page(browser, server["url"])
    job = _launch(page, "simulate", {"num_agents": "48", "warmup": "16"}, estimate=True)
    _wait_state(page, "completed")
    tab = page.tab
    assert tab.inner_text("#counts") == "48 / 48 actions"
    assert tab.locator("#side tbody tr").count() > 0
    assert page.check_charts(at_least=2) >= 2  # kind and sentiment shares, simulated against real
    page.shot("watch")
    server["run"] = Path(_get(f"{server['url']}/api/jobs/{job}")["runs"][0]["path"])
    store = RunStore(server["run"])
    assert store.manifest()["status"] == "completed"
    rows = store.actions()
    steps = [m["step"] for m in store.mean_field_history()]
    assert steps  # the statistics mean field keeps one per step
    assert [int(s) for s in tab.eval_on_selector_all("#meanfield details", "ds => ds.map(d => d.dataset.step)")] == steps[::-1]
    shown = {(r["dimension"], r["label"]): (r["real"], r["simulated"]) for r in
             tab.eval_on_selector_all("#overall tbody tr", "rs => rs.map(r => ({dimension: r.dataset.dimension, label: r.dataset.label, "
                                                            "real: r.querySelector('.real').textContent, "
                                                            "simulated: r.querySelector('.simulated').textContent}))")}
    assert shown == _shares_from_actions(rows) and {"negative", "positive"} <= {label for _, label in shown}


def _shares_from_actions(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[str, str]]:
    """The shares so far as the watch page should print them, labelled here with the lexicon labeller itself."""
    from mfllm.evaluation.dimensions import BUILTIN_DIMENSIONS
    from mfllm.evaluation.labellers import LabelItem, LexiconLabeller

    labeller = LexiconLabeller()

    def sentiment(texts: list[str]) -> list[str | None]:
        return labeller.label([LabelItem(t, "", "zh") for t in texts], BUILTIN_DIMENSIONS["sentiment"]).labels

    labels = {"kind": ([r["real_kind"] for r in rows], [r["sim_kind"] for r in rows]),
              "sentiment": (sentiment([r["real_text"] for r in rows]), sentiment([r["sim_text"] for r in rows]))}
    shares = {}
    for dimension, (real, simulated) in labels.items():
        for label in sorted({v for v in real + simulated if v}):
            shares[(dimension, label)] = tuple(f"{100 * [v for v in side if v].count(label) / len([v for v in side if v]):.1f}%"
                                               for side in (real, simulated))
    return shares


def test_stop_a_run_reload_and_resume_it(server: dict[str, Any], browser: Any) -> None:
    page = Page(browser, server["url"])
    job = _launch(page, "simulate", {"num_agents": "64", "warmup": "16", "batch_size": "1", "method": "mf-hybrid"})
    deadline = time.time() + 60
    pid = _get(f"{server['url']}/api/jobs/{job}")["job"]["launches"][-1]["pid"]
    os.killpg(pid, signal.SIGSTOP)  # a fake run takes a fraction of a second: it runs in 10 ms slices until some steps are committed,
    while _get(f"{server['url']}/api/jobs/{job}")["done"] < 3:  # and is held while the page stops it
        assert time.time() < deadline
        os.killpg(pid, signal.SIGCONT)
        time.sleep(0.01)
        os.killpg(pid, signal.SIGSTOP)
    page.tab.click("#stop")
    time.sleep(0.5)
    os.killpg(pid, signal.SIGCONT)  # the stop's SIGTERM, pending meanwhile, ends it
    _wait_state(page, "stopped")
    stopped = _get(f"{server['url']}/api/jobs/{job}")
    assert 3 <= stopped["done"] < 64 and stopped["job"]["state"] == "stopped"
    page.tab.reload()  # the state lives in the project folder
    _wait_state(page, "stopped")
    page.tab.click("#resume")
    _wait_state(page, "completed")
    run = RunStore(stopped["runs"][0]["path"])
    rows = run.actions()
    assert len(rows) == 64 and len({r["position"] for r in rows}) == 64 and run.manifest()["status"] == "completed"
    assert page.errors == []


def test_fork_a_branch_with_a_post_and_open_its_comparison(server: dict[str, Any], browser: Any) -> None:
    page = Page(browser, server["url"])
    tab = page.open(f"/runs?path={server['run']}")
    page.shot("run")
    tab.select_option("#s-at", "2")
    tab.fill("#s-text", "警方通报：该消息不实 (police: not true)")
    tab.click("#steer button[type=submit]")
    tab.wait_for_url("**/jobs/*")
    _wait_state(page, "completed", timeout=120_000)
    tab.click("#result")
    tab.wait_for_load_state("networkidle")
    assert "What if: counterfactual vs factual continuation" in tab.inner_text("h1")
    assert "警方通报" in tab.inner_text("main") and tab.locator("figure.intervals").count() == 1
    page.check_charts(at_least=2)
    page.shot("comparison")
    job = tab.url.split("/jobs/")[1].split("/")[0]
    branch = Path(_get(f"{server['url']}/api/jobs/{job}")["job"]["directory"]) / "output"
    report = (branch / "comparison" / "index.html").read_text(encoding="utf-8")
    assert "警方通报" in report and "counterfactual" in json.dumps(json.loads((branch / "comparison" / "page.json").read_text()))


def test_every_page_draws_its_charts_without_console_errors(server: dict[str, Any], browser: Any) -> None:
    page = Page(browser, server["url"])
    jobs = _get(f"{server['url']}/api/jobs")
    data = str(demo_data_path())
    paths = ["/", "/data", f"/data/event?path={data}", "/launch", "/jobs", "/results", "/track-record", "/docs",
             *(f"/launch/{c}" for c in ("simulate", "backtest", "branch", "forecast", "plan")),
             *(f"/jobs/{j['id']}" for j in jobs), *(f"/jobs/{j['id']}/result" for j in jobs if j["result"])]
    for path in paths:
        page.open(path)
        page.check_charts()
    page.open(f"/data/event?path={data}")
    assert page.check_charts(at_least=1) == 1  # the volume over time
    page.shot("event")
    page.open("/")
    page.shot("home")


def test_a_bad_config_is_refused_field_by_field(server: dict[str, Any], browser: Any) -> None:
    page = Page(browser, server["url"])
    tab = page.open("/launch/simulate")
    tab.fill("#f-batch_size", "0")
    tab.click("#start")
    tab.wait_for_selector("[data-error=batch_size]:not(:empty)")
    assert "greater than or equal to 1" in tab.inner_text("[data-error=batch_size]") and "/launch/simulate" in tab.url


def test_off_loopback_every_request_needs_the_token(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from mfllm.presentation.app import UiConfig, create_app

    client = TestClient(create_app(UiConfig(project=str(tmp_path), host="0.0.0.0"), token="s3cret"))
    assert client.get("/api/jobs").status_code == 401 and client.get("/static/charts.js").status_code == 401
    assert client.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/jobs", headers={"Authorization": "Bearer s3cret"}).json() == []
    assert client.get("/?token=s3cret").status_code == 200  # sets the cookie the pages' own requests carry
    assert client.get("/api/jobs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/api/jobs", "/api/jobs/{job_id}/stop", "/api/jobs/{job_id}/resume", "/api/steer", "/api/estimate"} <= set(schema["paths"])
