/* mfllm app pages: launch forms, the live watch of a job (server-sent events), stop/resume, steering. */
(function () {
  "use strict";

  async function api(method, url, body) {
    const response = await fetch(url, {method: method, headers: {"content-type": "application/json"},
                                       body: body === undefined ? undefined : JSON.stringify(body)});
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(typeof data.detail === "string" ? data.detail : "the request was refused");
      error.fields = Array.isArray(data.detail) ? data.detail : [];
      throw error;
    }
    return data;
  }

  const esc = (text) => String(text == null ? "" : text).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const splitList = (text) => text.split(/[,\n]/).map((s) => s.trim()).filter((s) => s.length);

  /* ---------------------------------------------------------------- launch form */

  function formValues(form) {
    const config = {};
    form.querySelectorAll("[data-kind]").forEach((input) => {
      const kind = input.dataset.kind;
      if (kind === "bool") config[input.name] = input.checked;
      else if (input.value.trim() === "") return;
      else if (kind === "list") config[input.name] = splitList(input.value);
      else config[input.name] = input.value.trim();
    });
    return config;
  }

  function showErrors(form, error, box) {
    form.querySelectorAll("[data-error]").forEach((e) => (e.textContent = ""));
    const general = [];
    (error.fields || []).forEach((f) => {
      const name = f.field.split(".")[0];
      const slot = form.querySelector(`[data-error="${name}"]`);
      if (slot) slot.textContent = f.message;
      else general.push((f.field ? f.field + ": " : "") + f.message);
    });
    if (!error.fields || !error.fields.length) general.push(error.message);
    box.hidden = !general.length;
    box.textContent = general.join("\n");
  }

  const count = (n) => Number(n).toLocaleString("en");

  function describeEstimate(e) {
    const time = e.seconds != null
      ? `about ${count(Math.ceil(e.seconds))} s at ${e.rate.toFixed(2)} actions/s (pooled over ${e.rate_runs} finished run(s) with ${esc(e.policy_model)} in this project)`
      : `unknown speed: no run with ${esc(e.policy_model)} has finished in this project yet`;
    const rows = e.groups.map((g) => `<tr><td class="t">${esc(g.description)}</td><td>${g.runs}</td><td>${count(g.per_run.agents)}</td>` +
      `<td>${count(g.per_run.policy_calls)}</td><td>${count(g.per_run.mean_field_calls)}</td>` +
      `<td>${count(g.per_run.policy_prompt_tokens)}</td><td>${count(g.per_run.mean_field_prompt_tokens)}</td></tr>`).join("");
    return `<p><b>Estimate</b> (the engine's dry run of each run, times the runs): <span id="estimate-summary">${e.runs} run(s) · ` +
      `${count(e.agents)} simulated agents · ${count(e.model_calls)} model calls (${count(e.policy_calls)} policy calls, ` +
      `${count(e.mean_field_calls)} mean-field calls) · ${count(e.prompt_tokens)} prompt tokens (${count(e.policy_prompt_tokens)} policy, ` +
      `${count(e.mean_field_prompt_tokens)} mean-field)</span></p><p id="estimate-time">Time: ${time}.</p>` +
      (e.note ? `<p class="muted">${esc(e.note)}.</p>` : "") +
      `<table id="estimate-groups"><thead><tr><th class="t">runs alike</th><th>runs</th><th>agents per run</th><th>policy calls per run</th>` +
      `<th>mean-field calls</th><th>policy prompt tokens</th><th>mean-field prompt tokens</th></tr></thead><tbody>${rows}</tbody></table>`;
  }

  function launchForm(form) {
    const box = document.getElementById("form-error"), estimate = document.getElementById("estimate-result");
    const body = () => ({command: form.dataset.command, config: formValues(form), title: form.querySelector("[name=__title]").value || null});
    document.getElementById("estimate").addEventListener("click", async () => {
      estimate.hidden = false;
      estimate.textContent = "estimating…";
      try {
        estimate.innerHTML = describeEstimate(await api("POST", "/api/estimate", body()));
        showErrors(form, {fields: [], message: ""}, box);
        box.hidden = true;
      } catch (error) {
        estimate.hidden = true;
        showErrors(form, error, box);
      }
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      form.querySelector("#start").disabled = true;
      try {
        const job = await api("POST", "/api/jobs", body());
        location.href = "/jobs/" + job.id;
      } catch (error) {
        showErrors(form, error, box);
        form.querySelector("#start").disabled = false;
      }
    });
  }

  /* ---------------------------------------------------------------- steering */

  function steerForm(form) {
    const box = document.getElementById("form-error");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = (name) => form.querySelector(`[name=${name}]`).value;
      try {
        const job = await api("POST", "/api/steer", {run: form.dataset.run, at: +value("at"), kind: value("kind"), text: value("text"),
                                                      author: value("author"), seeds: splitList(value("seeds")).map(Number)});
        location.href = "/jobs/" + job.id;
      } catch (error) {
        box.hidden = false;
        box.textContent = error.fields.length ? error.fields.map((f) => `${f.field}: ${f.message}`).join("\n") : error.message;
      }
    });
  }

  /* ---------------------------------------------------------------- watching a job */

  function chartFigure(container, spec) {
    let figure = document.getElementById(spec.id);
    if (!figure) {
      figure = document.createElement("figure");
      figure.className = "chart";
      figure.id = spec.id;
      figure.innerHTML = `<figcaption>${esc(spec.title)}</figcaption><div class="chart-box"></div><script type="application/json">{}<\/script>`;
      container.appendChild(figure);
    }
    window.mfllmCharts.update(figure, spec);
  }

  const pct = (v) => (v == null ? "–" : (100 * v).toFixed(1) + "%");
  const meanFields = new Map(); /* run -> step -> its mean field: a stream sends each step's once */

  function showMeanFields(s) {
    if (!s.focus) return;
    if (!meanFields.has(s.focus)) meanFields.set(s.focus, new Map());
    const steps = meanFields.get(s.focus);
    (s.mean_field || []).forEach((m) => steps.set(m.step, m));
    const entries = [...steps.values()].sort((a, b) => b.step - a.step);
    document.getElementById("meanfield").innerHTML = entries.map((m, k) =>
      `<details class="step" data-step="${m.step}"${k === 0 ? " open" : ""}><summary>step ${m.step} <span class="muted">${esc(m.phase)}</span></summary>` +
      `<pre class="meanfield">${esc(m.text)}</pre></details>`).join("") || '<p class="muted">No mean field yet (a baseline keeps none).</p>';
  }

  function showSnapshot(s) {
    const job = s.job, state = document.getElementById("state");
    state.textContent = job.state;
    state.className = "badge " + job.state;
    document.getElementById("stop").disabled = job.state !== "running";
    document.getElementById("resume").disabled = job.state === "running" || job.state === "completed";
    document.getElementById("bar").style.width = (s.total ? (100 * s.done) / s.total : 0) + "%";
    document.getElementById("counts").textContent = `${s.done} / ${s.total} actions`;
    const left = s.actions_per_second ? (s.total - s.done) / s.actions_per_second : null;
    document.getElementById("rate").textContent = s.actions_per_second != null ?
      `${s.actions_per_second.toFixed(2)} actions/s` + (left != null && s.total > s.done ?
        `; about ${Math.ceil(left)} s left in the ${s.runs.length} run(s) started so far` : "") : "";
    document.getElementById("result").hidden = !job.result;
    const error = document.getElementById("error");
    error.hidden = !job.error;
    error.textContent = job.error || "";
    document.querySelector("#runs tbody").innerHTML = s.runs.map((r) =>
      `<tr><td class="t"><a href="/runs?path=${encodeURIComponent(r.path)}">${esc(r.path.split("/output/").pop())}</a></td>` +
      `<td class="t">${esc(r.event)}</td><td class="t">${esc(r.method)}</td><td>${r.seed}</td><td class="t">${esc(r.status)}</td>` +
      `<td>${r.done} / ${r.total}</td><td>${r.throughput != null ? r.throughput.toFixed(2) : "–"}</td></tr>`).join("");
    document.getElementById("focus").textContent = s.focus ? "(" + s.focus.split("/output/").pop() + ")" : "";
    document.querySelector("#overall tbody").innerHTML = (s.overall || []).map((o) =>
      `<tr data-dimension="${esc(o.dimension)}" data-label="${esc(o.label)}"><td class="t">${esc(o.dimension)}</td><td class="t">${esc(o.label)}</td>` +
      `<td class="real">${pct(o.real)}</td><td class="simulated">${pct(o.simulated)}</td></tr>`).join("");
    (s.shares || []).forEach((spec) => chartFigure(document.getElementById("shares"), spec));
    showMeanFields(s);
    document.querySelector("#side tbody").innerHTML = (s.side_by_side || []).map((a) =>
      `<tr><td>${a.step}</td><td class="text">[${esc(a.real_kind)}] ${esc(a.real_text)}</td><td class="text">[${esc(a.sim_kind)}] ${esc(a.sim_text)}</td></tr>`).join("");
  }

  function watch(panel) {
    const id = panel.dataset.job;
    let source = null;
    const listen = () => {
      if (source) source.close();
      source = new EventSource(`/api/jobs/${id}/events`);
      source.onmessage = (event) => showSnapshot(JSON.parse(event.data));
      source.addEventListener("end", () => source.close());
    };
    showSnapshot(JSON.parse(document.getElementById("snapshot").textContent));
    listen();
    const act = (what) => async () => {
      const button = document.getElementById(what);
      button.disabled = true;
      try {
        await api("POST", `/api/jobs/${id}/${what}`);
      } catch (error) {
        const box = document.getElementById("error");
        box.hidden = false;
        box.textContent = error.message;
      }
      listen();
    };
    document.getElementById("stop").addEventListener("click", act("stop"));
    document.getElementById("resume").addEventListener("click", act("resume"));
  }

  const launch = document.getElementById("launch");
  if (launch) launchForm(launch);
  const steer = document.getElementById("steer");
  if (steer) steerForm(steer);
  const panel = document.getElementById("watch");
  if (panel) watch(panel);
})();
