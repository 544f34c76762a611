"""The web app (``mfllm ui``): pages over a project folder of jobs, and the HTTP API under ``/api`` they use (scripts
can use it too; its OpenAPI schema is ``/openapi.json``, described at ``/docs``).

Bound to 127.0.0.1 by default. Bound to any other address it asks for a token on every request (a bearer
header, the ``token`` query parameter, or the cookie the first page with it sets): generated and printed once
at start unless given.
"""


import asyncio
import enum
import ipaddress
import json
import secrets
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from mfllm.configuration import YamlConfig, _unwrap_optional
from mfllm.presentation.jobs import COMMANDS, JOB_FILE, Jobs, command, estimate_job, run_progress
from mfllm.presentation.render import PAGE_FILE, read_page, render

TOKEN_COOKIE = "mfllm_token"
SHOWN_REACTIONS = 200
"""Reactions listed (and labelled) on an event page."""


class UiConfig(YamlConfig):
    """Where the web app serves from and what it serves."""

    project: str = Field(default="mfllm-project", description="Project folder: the jobs, their runs and reports, and the "
                                                             "interventions made from the pages.")
    host: str = Field(default="127.0.0.1", description="Address to bind; any other than a loopback one requires a token.")
    port: int = Field(default=8765, ge=1, le=65535, description="Port to bind.")
    token: str | None = Field(default=None, description="Token every request must carry (default: none on loopback; elsewhere "
                                                        "generated and printed once).")
    data: list[str] = Field(default=[], description="Datasets to browse and offer in the forms, besides the bundled sample.")
    policy_model: str | None = Field(default=None, description="Policy model filled into the launch forms (e.g. fake to try the app).")

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


class Launch(BaseModel):
    """A job to start: a command and its config's fields (``GET /api/commands`` lists them with their help texts)."""

    command: Literal["simulate", "backtest", "branch", "forecast", "plan"]
    config: dict[str, Any] = Field(description="Fields of the command's config; omitted fields take their defaults.")
    title: str | None = Field(default=None, description="A name for the job.")


class Steer(BaseModel):
    """An intervention at a step of a run, as a counterfactual branch from the run's prefix (with its factual twin)."""

    run: str = Field(description="The parent run directory.")
    at: int = Field(ge=0, description="Branch point: the parent's committed steps copied; the intervention starts here.")
    kind: Literal["post", "statement"] = Field(default="post", description="An injected post, or a statement to the mean field.")
    text: str = Field(min_length=1, description="What is posted or stated.")
    author: str = Field(default="official account", description="Who posts (posts only).")
    seeds: list[int] = Field(default=[0, 1], min_length=1, description="Run seeds of the continuations, one pair of arms each.")


# ---------------------------------------------------------------- forms from the configs


def _field_kind(annotation: Any) -> tuple[str, list[Any]]:
    """How a config field is entered: (bool|number|integer|choice|list|text, choices)."""
    annotation = _unwrap_optional(annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "bool", []
    if annotation is int:
        return "integer", []
    if annotation is float:
        return "number", []
    if origin is Literal:
        return "choice", list(typing.get_args(annotation))
    if origin in (list, tuple) or any(typing.get_origin(a) in (list, tuple) for a in typing.get_args(annotation)):
        return "list", []
    return "text", []


def form_text(value: Any) -> str:
    """A value as a user types it into a form field: nothing for none, lists comma-separated, paths and enums by their
    value, mappings and models as JSON, numbers and text as they read."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return form_text(value.value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(form_text(v) for v in value)
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump(mode="json"), ensure_ascii=False)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def form_fields(config: type[YamlConfig], skip: tuple[str, ...], values: dict[str, Any]) -> list[dict[str, Any]]:
    """The form of a config: one input per field (not in ``skip``), its help text the field's description, its value
    and default as a user would type them (:func:`form_text`)."""
    fields = []
    for name, field in config.model_fields.items():
        if name in skip:
            continue
        kind, choices = _field_kind(field.annotation)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        value = values.get(name, default)
        if kind == "bool":
            checked = value if isinstance(value, bool) else str(value).lower() in ("true", "1", "on", "yes")
            shown_default = "" if default is None else "checked" if default else "unchecked"
            fields.append({"name": name, "kind": kind, "choices": [], "required": field.is_required(), "help": field.description or "",
                           "value": "", "checked": checked, "default": shown_default})
            continue
        fields.append({"name": name, "kind": kind, "choices": [form_text(c) for c in choices], "required": field.is_required(),
                       "help": field.description or "", "value": form_text(value), "checked": False, "default": form_text(default)})
    return fields


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    """A config's validation errors as the pages show them: the field (empty for the config as a whole) and one line."""
    errors = []
    for error in exc.errors():
        field, *inner = error["loc"] or ("",)
        where = "".join(f"[{part + 1}]" if isinstance(part, int) else f".{part}" for part in inner)
        message = " ".join(str(error["msg"]).removeprefix("Value error, ").split())
        errors.append({"field": str(field), "message": f"item {where}: {message}" if where else message})
    return errors


# ---------------------------------------------------------------- data pages


def sample_data() -> str:
    from mfllm.analysis.demo import demo_data_path

    return str(demo_data_path())


def event_context(path: str, event_id: str | None) -> dict[str, Any]:
    """An event: its volume over time, its real reactions with their labels, and the reactors' profiles."""
    from mfllm.data.loaders import load_event
    from mfllm.data.personas import persona_text
    from mfllm.evaluation.config import EvaluationConfig
    from mfllm.evaluation.dimensions import resolve_dimensions
    from mfllm.evaluation.labellers import LabelItem
    from mfllm.evaluation.pipeline import build_labeller
    from mfllm.presentation.charts import line_chart, series

    event, report = load_event(path, event_id)
    hours = [(r.timestamp - event.source.timestamp) / 3600 for r in event.reactions]
    span = max(hours + [1.0])
    width = max(span / 48, 1 / 60)
    bins = int(span / width) + 1
    kinds = sorted({r.kind for r in event.reactions})
    counts = {kind: [0] * bins for kind in kinds}
    for reaction, hour in zip(event.reactions, hours):
        counts[reaction.kind][max(0, min(bins - 1, int(hour / width)))] += 1
    x = [round((k + 0.5) * width, 3) for k in range(bins)]
    volume = line_chart(f"Reactions per {width * 60:.0f} min" if width < 1 else f"Reactions per {width:.2g} h", "hours after the source post", x,
                        [series("all", [sum(c[k] for c in counts.values()) for k in range(bins)], "#111111", width=2)]
                        + [series(kind, counts[kind], index=i) for i, kind in enumerate(kinds)],
                        y_label="reactions", percent=False, unit=" h", chart_id="volume")
    shown = event.reactions[:SHOWN_REACTIONS]
    dimensions = resolve_dimensions(["sentiment"])
    labeller = build_labeller(EvaluationConfig(dimensions=["sentiment"]))
    sentiment = labeller.label([LabelItem(r.text, event.source.text, event.language, r.kind) for r in shown], dimensions[0]).labels
    reactions = [{"hours": hour, "kind": r.kind, "labels": r.labels, "sentiment": label, "text": r.text,
                  "user": persona_text(r.user, event.language, short=True)} for r, hour, label in zip(shown, hours, sentiment)]
    users = list({r.user.user_id or str(i): r.user for i, r in enumerate(event.reactions)}.values())
    return {"title": f"Event {event.event_id}", "path": path, "event": {"id": event.event_id, "dataset": event.dataset,
                                                                        "language": event.language, "labels": event.labels,
                                                                        "source": event.source.text, "reactions": len(event.reactions)},
            "load_report": report.summary(), "volume": volume, "reactions": reactions, "kinds": {k: sum(counts[k]) for k in kinds},
            "sentiment": {label: sentiment.count(label) for label in dict.fromkeys(sentiment) if label},
            "profiles": [persona_text(user, event.language) for user in users[:50]], "users": len(users)}


# ---------------------------------------------------------------- the app


def create_app(config: UiConfig, token: str | None = None) -> Any:
    """The FastAPI app over ``config.project``; with ``token``, every request must carry it."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
        from fastapi.staticfiles import StaticFiles
        from starlette.concurrency import run_in_threadpool
    except ImportError as exc:
        raise ImportError("the web app needs FastAPI and uvicorn: pip install 'mfllm[ui]'") from exc
    from mfllm.presentation.live import Watcher
    from mfllm.presentation.render import static_file

    project = Path(config.project).resolve()
    project.mkdir(parents=True, exist_ok=True)
    jobs = Jobs(project)
    datasets = list(dict.fromkeys([sample_data(), *config.data]))
    app = FastAPI(title="mfllm", version="1", docs_url=None, redoc_url=None,
                  description="Launch, watch, steer and compare mfllm simulations. Every page of the app uses these endpoints.")
    app.mount("/static", StaticFiles(directory=str(static_file(""))), name="static")

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Any:
        if token is None:
            return await call_next(request)
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or request.query_params.get("token") \
            or request.cookies.get(TOKEN_COOKIE, "")
        if not secrets.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"detail": "a token is required (Authorization: Bearer TOKEN, or ?token=TOKEN)"}, status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(KeyError)
    async def not_found(request: Request, exc: KeyError) -> Any:
        return JSONResponse({"detail": str(exc.args[0]) if exc.args else "not found"}, status_code=404)

    @app.exception_handler(ValueError)
    async def bad_request(request: Request, exc: ValueError) -> Any:
        if isinstance(exc, ValidationError):
            return JSONResponse({"detail": validation_errors(exc)}, status_code=422)
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=400)

    @app.exception_handler(FileNotFoundError)
    async def missing(request: Request, exc: FileNotFoundError) -> Any:
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=404)

    def page(template: str, **context: Any) -> HTMLResponse:
        return HTMLResponse(render(template, context, standalone=False, static="/static", root=""))

    # ------------------------------------------------------------ API

    @app.get("/api/commands", summary="The commands a job runs, with their config fields and help texts")
    def api_commands() -> list[dict[str, Any]]:
        return [{"command": c.name, "summary": c.summary, "set_by_app": list(c.set_by_app), "schema": c.config.model_json_schema()}
                for c in COMMANDS.values()]

    @app.get("/api/datasets", summary="Datasets to browse, and their events")
    def api_datasets() -> list[dict[str, Any]]:
        from mfllm.data.loaders import get_reader

        listed = []
        for path in datasets:
            reader = get_reader(path)
            listed.append({"path": path, "format": reader.name, "events": reader.list_events(Path(path))})
        return listed

    @app.get("/api/event", summary="An event: volume over time, real reactions with labels, profiles")
    def api_event(path: str, event: str | None = None) -> dict[str, Any]:
        return event_context(path, event)

    @app.post("/api/estimate", summary="The dry run of a job, generating nothing: its runs in groups with the engine's estimate of one run each, the "
                                            "totals (model calls, prompt tokens), and the time at the project's measured speed")
    def api_estimate(launch: Launch) -> dict[str, Any]:
        return estimate_job(project, launch.command, launch.config)

    @app.post("/api/jobs", status_code=201, summary="Validate a config and start its job in the background")
    def api_launch(launch: Launch) -> dict[str, Any]:
        return jobs.state(jobs.create(launch.command, launch.config, launch.title))

    @app.get("/api/jobs", summary="Every job of the project with its state (running, completed, failed, stopped)")
    def api_jobs() -> list[dict[str, Any]]:
        return jobs.list()

    @app.get("/api/jobs/{job_id}", summary="One job: config, state, runs and progress")
    def api_job(job_id: str) -> dict[str, Any]:
        return Watcher(jobs, job_id).snapshot()

    @app.post("/api/jobs/{job_id}/stop", summary="Stop a job (its process group is terminated; resume continues it)")
    def api_stop(job_id: str) -> dict[str, Any]:
        jobs.stop(job_id)
        return jobs.state(job_id)

    @app.post("/api/jobs/{job_id}/resume", summary="Continue a stopped or failed job from its runs' last committed steps")
    def api_resume(job_id: str) -> dict[str, Any]:
        jobs.start(job_id, resume=True)
        return jobs.state(job_id)

    @app.get("/api/jobs/{job_id}/events", summary="Server-sent events: a snapshot of the job about every second until it ends (each with "
                                                    "the mean fields of the focused run's steps not sent before)")
    async def api_events(job_id: str, request: Request) -> Any:
        jobs.directory(job_id)
        watcher = Watcher(jobs, job_id)

        async def stream() -> Any:
            while not await request.is_disconnected():
                snapshot = await run_in_threadpool(watcher.snapshot, True)
                yield f"data: {json.dumps(snapshot, ensure_ascii=False, default=str)}\n\n"
                if snapshot["job"]["state"] != "running":
                    yield "event: end\ndata: {}\n\n"
                    return
                await asyncio.sleep(1.0)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/api/jobs/{job_id}/result", summary="The result page's data (the context of the report's template); part: a report "
                                                  "below it (a backtest's grid point)")
    def api_result(job_id: str, part: str | None = None) -> dict[str, Any]:
        template, context = read_page(_result_part(job_id, part) if part else _result_dir(job_id))
        return {"template": template, "context": context}

    @app.post("/api/steer", status_code=201, summary="Add an intervention at a step of a run: a branch job from the run's prefix")
    def api_steer(steer: Steer) -> dict[str, Any]:
        import yaml

        folder = project / "interventions"
        folder.mkdir(exist_ok=True)
        name = f"{steer.kind}-step{steer.at}-{secrets.token_hex(3)}"
        entry = {"id": name, "kind": steer.kind, "at_step": steer.at, "text": steer.text,
                 **({"author": steer.author} if steer.kind == "post" else {})}
        file = folder / f"{name}.yaml"
        file.write_text(yaml.safe_dump({"interventions": [entry]}, allow_unicode=True, sort_keys=False), encoding="utf-8")
        title = f"{steer.kind} at step {steer.at}: {steer.text[:40]}"
        return jobs.state(jobs.create("branch", {"run": steer.run, "at": steer.at, "interventions": [str(file)], "seeds": steer.seeds}, title))

    @app.get("/api/track-record", summary="Scored forecasts of the project: skill against the naive forecasts, with CIs")
    def api_track_record() -> list[dict[str, Any]]:
        return track_record(jobs)

    def _result_dir(job_id: str) -> Path:
        state = jobs.state(job_id)
        if not state["result"]:
            raise KeyError(f"job {job_id} has no result page (state {state['state']})")
        return Path(state["directory"]) / state["result"]

    def _result_part(job_id: str, part: str) -> Path:
        """A report below the job's result page (e.g. a grid point of a backtest's sensitivity); only inside it."""
        top = _result_dir(job_id).resolve()
        directory = (top / part).resolve()
        if not directory.is_relative_to(top) or not (directory / PAGE_FILE).is_file():
            raise KeyError(f"job {job_id} has no report {part!r}")
        return directory

    # ------------------------------------------------------------ pages

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> Any:
        return page("app/home.html", title="mfllm", jobs=jobs.list()[:10], commands=list(COMMANDS.values()), datasets=datasets,
                    project=str(project))

    @app.get("/data", response_class=HTMLResponse, include_in_schema=False)
    def data_page() -> Any:
        return page("app/data.html", title="Data", datasets=api_datasets())

    @app.get("/data/event", response_class=HTMLResponse, include_in_schema=False)
    def event_page(path: str, event: str | None = None) -> Any:
        return page("app/event.html", **event_context(path, event))

    @app.get("/launch", response_class=HTMLResponse, include_in_schema=False)
    def launch_index() -> Any:
        return page("app/launch.html", title="Launch", commands=list(COMMANDS.values()))

    @app.get("/launch/{name}", response_class=HTMLResponse, include_in_schema=False)
    def launch_form(name: str, request: Request) -> Any:
        spec = command(name)
        values: dict[str, Any] = {"data": datasets[0]}
        if config.policy_model:
            values["policy_model"] = config.policy_model
        values.update(request.query_params)
        fields = form_fields(spec.config, spec.set_by_app, values)
        return page("app/form.html", title=f"Launch {name}", command=spec, fields=fields, datasets=datasets)

    @app.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
    def jobs_page() -> Any:
        return page("app/jobs.html", title="Jobs", jobs=jobs.list())

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(job_id: str) -> Any:
        snapshot = Watcher(jobs, job_id).snapshot()
        return page("app/job.html", title=f"Job {job_id}", snapshot=snapshot, job=snapshot["job"])

    @app.get("/jobs/{job_id}/result", response_class=HTMLResponse, include_in_schema=False)
    def result_page(job_id: str) -> Any:
        template, context = read_page(_result_dir(job_id))
        return page(template, **context, result_root=f"/jobs/{job_id}/result")

    @app.get("/jobs/{job_id}/result/{part:path}", response_class=HTMLResponse, include_in_schema=False)
    def result_part_page(job_id: str, part: str) -> Any:
        template, context = read_page(_result_part(job_id, part))
        return page(template, **context, result_root=f"/jobs/{job_id}/result/{part}")

    @app.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    def run_page(path: str) -> Any:
        from mfllm.simulation.store import RunStore

        store = RunStore(path)
        manifest = store.manifest()
        steps = store.committed_steps()
        return page("app/run.html", title=f"Run {Path(path).name}", path=path, manifest=manifest, progress=run_progress(Path(path)),
                    steps=[{"step": s["step"], "phase": s["phase"], "interventions": s.get("interventions", [])} for s in steps],
                    first_rollout=next((s["step"] for s in steps if s["phase"] == "rollout"), None),
                    mean_field=store.mean_field_history(), actions=store.actions()[:SHOWN_REACTIONS])

    @app.get("/results", response_class=HTMLResponse, include_in_schema=False)
    def results_page() -> Any:
        return page("app/results.html", title="Results", jobs=[j for j in jobs.list() if j["result"]])

    @app.get("/track-record", response_class=HTMLResponse, include_in_schema=False)
    def track_record_page() -> Any:
        from mfllm.presentation.charts import interval_plot

        rows = track_record(jobs)
        plot = interval_plot("Skill against the last window carried forward (KL; positive: better than naive)",
                             [{"label": f"{r['job'][:15]} {r['dimension']}", "mean": r["skill_vs_last_window"],
                               "low": r["skill_vs_last_window_low"], "high": r["skill_vs_last_window_high"], "group": r["dimension"]}
                              for r in rows if r["metric"] == "kl"], "skill") if rows else None
        return page("app/track_record.html", title="Track record", rows=rows, plot=plot)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def api_docs() -> Any:
        return page("app/api.html", title="HTTP API", schema=app.openapi())

    return app


def track_record(jobs: Jobs) -> list[dict[str, Any]]:
    """One row per (scored forecast job, dimension, metric): its skill against both naive forecasts with CIs, and coverage."""
    rows = []
    for job in jobs.list():
        if job["command"] != "forecast" or job["state"] != "completed" or not job["config"].get("score"):
            continue
        summary = json.loads((Path(job["directory"]) / "output" / "forecast.json").read_text(encoding="utf-8"))
        events = sorted({f["event"] for f in summary["forecasts"]})
        for skill in summary["skill"]:
            rows.append({"job": job["id"], "title": job["title"], "created": job["created"], "events": events, **skill})
    return rows


def serve(config: UiConfig) -> None:
    """Serve the app (blocking); off loopback with a token, printed once."""
    import uvicorn

    token = config.token or (None if config.loopback else secrets.token_urlsafe(24))
    app = create_app(config, token)
    where = f"http://{config.host}:{config.port}/"
    print(f"mfllm ui: project {Path(config.project).resolve()}, at {where}" + (f"?token={token}" if token else ""), flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")


__all__ = ["JOB_FILE", "Launch", "Steer", "UiConfig", "create_app", "form_fields", "form_text", "serve", "track_record", "validation_errors"]
