"""One template engine (Jinja2) for every page: the web app's and the static reports'.

A report is a template rendered ``standalone``: its scripts, styles and a font holding only the characters
it uses are inlined, so the file works offline and alone. The same template rendered for the app links the
package's static files instead. :func:`write_page` also saves the template's context beside the report
(``page.json``), so the app shows the very page the report file shows.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
from importlib.resources import files
from pathlib import Path
from typing import Any, Mapping

PAGE_FILE = "page.json"
"""Beside a report's index.html: the template it was rendered from and its context."""
STYLES = ("vendor/uplot/uPlot.min.css", "mfllm.css")
SCRIPTS = ("vendor/uplot/uPlot.iife.min.js", "charts.js")
FONT = "vendor/noto-sans-sc/noto-sans-sc-chinese-simplified-400-normal.woff2"
FONT_FAMILY = "Noto Sans SC"


def static_file(name: str) -> Any:
    """A file shipped in ``presentation/static``."""
    path = files("mfllm.presentation") / "static"
    for part in name.split("/"):
        path = path / part
    return path


def _number(value: Any, digits: int = 3) -> str:
    """A figure to ``digits`` decimals, or a dash for none or NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def _signed(value: Any, digits: int = 3) -> str:
    return _number(value, digits) if value is None or not isinstance(value, (int, float)) or not math.isfinite(value) else f"{value:+.{digits}f}"


def _percent(value: Any, digits: int = 0) -> str:
    return "–" if value is None or not isinstance(value, (int, float)) or not math.isfinite(value) else f"{value:.{digits}%}"


@functools.lru_cache(maxsize=1)
def environment() -> Any:
    """The Jinja2 environment of the package's templates (autoescaped, undefined names are errors)."""
    try:
        import jinja2
    except ImportError as exc:
        raise ImportError("reports and the web app need Jinja2: pip install 'mfllm[report]'") from exc
    env = jinja2.Environment(loader=jinja2.PackageLoader("mfllm.presentation", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_number, signed=_signed, pct=_percent)
    env.globals["zip"] = zip
    return env


@functools.lru_cache(maxsize=8)
def font_face_css(characters: str) -> str:
    """An ``@font-face`` rule embedding the shipped font cut down to ``characters`` (a woff2 data URL)."""
    try:
        from fontTools import subset
        from fontTools.ttLib import TTFont
    except ImportError as exc:
        raise ImportError("reports embed a font subset with fontTools: pip install 'mfllm[report]'") from exc
    font = TTFont(io.BytesIO(static_file(FONT).read_bytes()))
    options = subset.Options()
    options.flavor = "woff2"
    options.layout_features = ["*"]
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=characters)
    subsetter.subset(font)
    out = io.BytesIO()
    font.save(out)
    data = base64.b64encode(out.getvalue()).decode("ascii")
    return (f'@font-face{{font-family:"{FONT_FAMILY}";font-style:normal;font-weight:400;'
            f'src:url(data:font/woff2;base64,{data}) format("woff2")}}')


def render(template: str, context: Mapping[str, Any], standalone: bool = True, **app: Any) -> str:
    """``template`` rendered with ``context``: standalone (assets inlined, for a file) or for the app (``app``: the app's
    own variables, e.g. its URL prefix for static files and the navigation)."""
    page = environment().get_template(template)
    if not standalone:
        return page.render(**context, standalone=False, **app)
    assets = {"styles": [static_file(name).read_text(encoding="utf-8") for name in STYLES],
              "scripts": [static_file(name).read_text(encoding="utf-8") for name in SCRIPTS], "font": ""}
    draft = page.render(**context, standalone=True, assets=assets)
    assets["font"] = font_face_css("".join(sorted(set(draft) - {"\n", "\r", "\t"})))
    return page.render(**context, standalone=True, assets=assets)


def clean(value: Any) -> Any:
    """``value`` made JSON-safe for a page: NaN and infinities become None, numpy numbers plain ones, tuples lists."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_page(directory: str | Path, template: str, context: Mapping[str, Any]) -> Path:
    """Render ``template`` standalone to ``directory/index.html`` and save its context as ``page.json``; returns the page."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    context = clean(dict(context))
    (out / PAGE_FILE).write_text(json.dumps({"template": template, "context": context}, ensure_ascii=False), encoding="utf-8")
    index = out / "index.html"
    index.write_text(render(template, context), encoding="utf-8")
    return index


def read_page(directory: str | Path) -> tuple[str, dict[str, Any]]:
    """The template and context a report in ``directory`` was rendered from."""
    saved = json.loads((Path(directory) / PAGE_FILE).read_text(encoding="utf-8"))
    return saved["template"], saved["context"]
