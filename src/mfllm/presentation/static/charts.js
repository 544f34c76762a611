/* mfllm charts: draws every <figure class="chart"> from the JSON spec inside it with uPlot.
   Drag to zoom (double-click resets), hover for values, click a legend entry to hide or show a series.
   A spec: {x: {label, values, unit}, y: {label, min, max, percent}, series: [{label, values, colour, width,
   dash, low, high}], marks: [{x, label}]}; low/high draw a band under their series. */
(function () {
  "use strict";
  const charts = new Map();

  function fmtY(spec) {
    return spec.y.percent ? (v) => (v == null ? "–" : (100 * v).toFixed(1) + "%") : (v) => (v == null ? "–" : (+v).toPrecision(3));
  }

  function tick(spec) {
    return spec.y.percent ? (v) => Math.round(100 * v) + "%" : (v) => (Number.isInteger(v) ? String(v) : (+v).toPrecision(2));
  }

  function fmtX(spec) {
    const unit = spec.x.unit || "";
    return (v) => (v == null ? "–" : (Number.isInteger(v) ? v : (+v).toFixed(2)) + unit);
  }

  function bands(u) {
    const ctx = u.ctx, box = u.bbox;
    ctx.save();
    ctx.beginPath();
    ctx.rect(box.left, box.top, box.width, box.height);
    ctx.clip();
    u.spec.series.forEach((s, i) => {
      if (!s.low || !s.high || !u.series[i + 1].show) return;
      const xs = u.data[0];
      let open = false;
      const upper = [], lower = [];
      const flush = () => {
        if (upper.length > 1) {
          ctx.beginPath();
          upper.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
          lower.reverse().forEach(([x, y]) => ctx.lineTo(x, y));
          ctx.closePath();
          ctx.globalAlpha = 0.18;
          ctx.fillStyle = s.colour;
          ctx.fill();
          ctx.globalAlpha = 1;
        }
        upper.length = 0;
        lower.length = 0;
        open = false;
      };
      xs.forEach((x, k) => {
        if (s.low[k] == null || s.high[k] == null) return flush();
        open = true;
        const px = u.valToPos(x, "x", true);
        upper.push([px, u.valToPos(s.high[k], "y", true)]);
        lower.push([px, u.valToPos(s.low[k], "y", true)]);
      });
      if (open) flush();
    });
    ctx.restore();
  }

  function marks(u) {
    const ctx = u.ctx, box = u.bbox, ratio = window.devicePixelRatio || 1;
    (u.spec.marks || []).forEach((m) => {
      const x = u.valToPos(m.x, "x", true);
      if (x < box.left || x > box.left + box.width) return;
      ctx.save();
      ctx.strokeStyle = "#777";
      ctx.setLineDash([5 * ratio, 4 * ratio]);
      ctx.beginPath();
      ctx.moveTo(x, box.top);
      ctx.lineTo(x, box.top + box.height);
      ctx.stroke();
      ctx.fillStyle = "#444";
      ctx.textAlign = "left";
      ctx.font = `${11 * ratio}px "Noto Sans SC", sans-serif`;
      ctx.fillText(m.label, x + 4 * ratio, box.top + 12 * ratio);
      ctx.restore();
    });
  }

  function options(spec, width) {
    const y = fmtY(spec), x = fmtX(spec);
    return {
      width: width,
      height: spec.height || 260,
      scales: {x: {time: false}, y: {range: (u, lo, hi) => [spec.y.min ?? lo, spec.y.max ?? hi]}},
      axes: [
        {label: spec.x.label, values: (u, vals) => vals.map((v) => (spec.x.integer && !Number.isInteger(v) ? "" : x(v)))},
        {label: spec.y.label, size: 56, values: (u, vals) => vals.map(tick(spec))},
      ],
      series: [{label: spec.x.short || spec.x.label.split(" ")[0], value: (u, v) => x(v)}].concat(spec.series.map((s) => ({
        label: s.label, stroke: s.colour, width: s.width || 1.5, dash: s.dash ? [6, 4] : undefined,
        points: {show: spec.x.values.length < 40}, spanGaps: false, value: (u, v) => y(v),
      }))),
      cursor: {drag: {x: true, y: false}},
      legend: {live: true},
      hooks: {drawAxes: [bands], draw: [marks]},
    };
  }

  function draw(figure) {
    const spec = JSON.parse(figure.querySelector("script[type='application/json']").textContent);
    const box = figure.querySelector(".chart-box");
    if (charts.has(box)) charts.get(box).destroy();
    const data = [spec.x.values].concat(spec.series.map((s) => s.values));
    const u = new uPlot(options(spec, Math.max(280, box.clientWidth || 600)), data, box);
    u.spec = spec;
    charts.set(box, u);
    figure.dataset.rendered = "true";
    return u;
  }

  function drawAll(root) {
    (root || document).querySelectorAll("figure.chart").forEach(draw);
  }

  /* Replace a chart's data (live pages): the figure's spec is swapped and the chart drawn again. */
  function update(figure, spec) {
    figure.querySelector("script[type='application/json']").textContent = JSON.stringify(spec);
    const box = figure.querySelector(".chart-box");
    const old = charts.get(box);
    if (old && old.spec.series.length === spec.series.length && old.spec.x.values.length) {
      old.spec = spec;
      old.setData([spec.x.values].concat(spec.series.map((s) => s.values)));
      return old;
    }
    return draw(figure);
  }

  window.addEventListener("resize", () => {
    charts.forEach((u, box) => u.setSize({width: Math.max(280, box.clientWidth), height: u.height}));
  });
  window.mfllmCharts = {drawAll: drawAll, update: update};
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", () => drawAll());
  else drawAll();
})();
