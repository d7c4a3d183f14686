// fabguard status page: fetches /api/v1/status every 15 s and draws the panels as inline SVG (no library,
// nothing downloaded). Each chart is an <svg> with data-points="N" (how many values it drew), for the tests.
"use strict";

const NS = "http://www.w3.org/2000/svg";
const W = 600, H = 220, M = { left: 58, right: 12, top: 10, bottom: 34 };
const COLORS = { PASS: "#2e7d32", REVIEW: "#f9a825", REJECT: "#c62828", p50: "#1565c0", p95: "#6a1b9a",
                 p99: "#c62828", queue: "#1565c0", in_flight: "#ef6c00", ks: "#1565c0", latent: "#6a1b9a",
                 score: "#00695c", reference: "#5b6573" };

function node(tag, attrs, parent, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function svgFor(id) {
  const box = document.getElementById(id);
  box.replaceChildren();
  return node("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": id }, box);
}

function empty(svg, message) {
  svg.setAttribute("data-points", "0");
  node("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, svg, message);
}

function fmt(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 1000 || a < 0.01 ? v.toExponential(1) : +v.toPrecision(3) + "";
}

function timeLabel(ms) {
  const d = new Date(ms);
  return d.toISOString().slice(11, 16);
}

// scales: linear or log10 in y, linear in x
function scales(xs, ys, opts) {
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  const log = !!opts.yLog;
  const fin = ys.filter(v => Number.isFinite(v) && (!log || v > 0));
  let y0 = log ? Math.min(...fin, ...(opts.limits || []).map(l => l.y)) : Math.min(0, ...fin);
  let y1 = Math.max(...fin, ...(opts.limits || []).map(l => l.y));
  if (log) { y0 = Math.log10(Math.max(y0, 1e-12)); y1 = Math.log10(Math.max(y1, 1e-12)); }
  if (y0 === y1) { y1 = y0 + (log ? 1 : Math.abs(y0) || 1); }
  if (!log) y1 *= 1.05;
  const sx = v => M.left + (v - x0) / (x1 - x0) * (W - M.left - M.right);
  const sy = v => {
    const t = log ? Math.log10(Math.max(v, 1e-12)) : v;
    return H - M.bottom - (t - y0) / (y1 - y0) * (H - M.top - M.bottom);
  };
  return { sx, sy, x0, x1, y0, y1, log };
}

function axes(svg, s, opts) {
  const g = node("g", { class: "axis" }, svg);
  node("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }, g);
  node("line", { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom }, g);
  for (let i = 0; i <= 4; i++) {
    const t = s.y0 + (s.y1 - s.y0) * i / 4, v = s.log ? Math.pow(10, t) : t;
    const y = H - M.bottom - i / 4 * (H - M.top - M.bottom);
    node("line", { x1: M.left - 4, x2: M.left, y1: y, y2: y }, g);
    node("text", { x: M.left - 6, y: y + 4, "text-anchor": "end" }, g, opts.yFormat ? opts.yFormat(v) : fmt(v));
  }
  for (let i = 0; i <= 4; i++) {
    const v = s.x0 + (s.x1 - s.x0) * i / 4, x = s.sx(v);
    node("text", { x, y: H - M.bottom + 16, "text-anchor": "middle" }, g, opts.time ? timeLabel(v) : fmt(v));
  }
  for (const l of opts.limits || []) {
    const y = s.sy(l.y);
    node("line", { x1: M.left, x2: W - M.right, y1: y, y2: y, class: "limit" }, svg);
    node("text", { x: W - M.right - 2, y: y - 4, "text-anchor": "end", fill: "#c62828", "font-size": 11 }, svg, l.label);
  }
}

function legend(svg, names) {
  const g = node("g", { class: "legend" }, svg);
  names.forEach(([name, color], i) => {
    const x = M.left + 8 + i * 90;
    node("rect", { x, y: H - 12, width: 10, height: 10, fill: color }, g);
    node("text", { x: x + 14, y: H - 3 }, g, name);
  });
}

// series: [{name, color, points: [[x, y], ...]}]; null y values break the line
function lineChart(id, series, opts) {
  const svg = svgFor(id);
  const pts = series.flatMap(s => s.points.filter(p => p[1] !== null && Number.isFinite(p[1])));
  if (!pts.length) return empty(svg, opts.empty || "no data yet");
  const s = scales(pts.map(p => p[0]), pts.map(p => p[1]), opts);
  axes(svg, s, opts);
  for (const ser of series) {
    let d = "", pen = "M";
    for (const [x, y] of ser.points) {
      if (y === null || !Number.isFinite(y) || (s.log && y <= 0)) { pen = "M"; continue; }
      d += `${pen}${s.sx(x).toFixed(1)},${s.sy(y).toFixed(1)} `;
      pen = "L";
    }
    node("path", { d, fill: "none", stroke: ser.color, "stroke-width": 2 }, svg);
    for (const [x, y] of ser.points.filter(p => p[1] !== null && Number.isFinite(p[1]) && (!s.log || p[1] > 0)))
      node("circle", { cx: s.sx(x), cy: s.sy(y), r: 2.5, fill: ser.color }, svg);
  }
  legend(svg, series.map(ser => [ser.name, ser.color]));
  svg.setAttribute("data-points", pts.length);
}

// stacks: [{name, color, values: [...]}] over xs (bar centres); width: bar width in x units
function barChart(id, xs, stacks, opts) {
  const svg = svgFor(id);
  const totals = xs.map((_, i) => stacks.reduce((a, st) => a + st.values[i], 0));
  if (!xs.length || !totals.some(t => t > 0)) return empty(svg, opts.empty || "no data yet");
  const half = opts.width / 2;
  const s = scales([Math.min(...xs) - half, Math.max(...xs) + half], [0, ...totals], opts);
  axes(svg, s, opts);
  xs.forEach((x, i) => {
    let base = 0;
    for (const st of stacks) {
      const v = st.values[i];
      if (v > 0) {
        const yTop = s.sy(base + v), yBottom = s.sy(base);
        node("rect", { x: s.sx(x - half) + 1, width: Math.max(1, s.sx(x + half) - s.sx(x - half) - 2),
                       y: yTop, height: Math.max(0.5, yBottom - yTop), fill: st.color }, svg);
      }
      base += v;
    }
  });
  for (const m of opts.markers || []) {
    const x = s.sx(m.x);
    node("line", { x1: x, x2: x, y1: M.top, y2: H - M.bottom, class: "limit" }, svg);
    node("text", { x: x + 3, y: M.top + 10, fill: "#c62828", "font-size": 11 }, svg, m.label);
  }
  if (stacks.length > 1) legend(svg, stacks.map(st => [st.name, st.color]));
  svg.setAttribute("data-points", totals.filter(t => t > 0).length);
}

function draw(data) {
  const hours = data.hours.map(h => ({ ...h, t: Date.parse(h.hour) + 1800e3 }));
  const xs = hours.map(h => h.t);
  barChart("decisions", xs, ["PASS", "REVIEW", "REJECT"].map(d => ({ name: d, color: COLORS[d],
    values: hours.map(h => h[d]) })), { width: 3000e3, time: true, empty: "no inspections in the last hours" });
  const lim = data.limits;
  document.getElementById("reject-limit").textContent = (lim.reject_rate * 100) + "%";
  document.getElementById("drift-alpha").textContent = lim.drift_alpha;
  lineChart("reject-rate", [{ name: "REJECT rate", color: COLORS.REJECT,
    points: hours.map(h => [h.t, h.reject_rate]) }],
    { time: true, limits: [{ y: lim.reject_rate, label: "alert" }], yFormat: v => (v * 100).toFixed(1) + "%" });

  const hist = data.score_histogram;
  if (hist.edges.length) {
    const centres = hist.counts.map((_, i) => (hist.edges[i] + hist.edges[i + 1]) / 2);
    const markers = data.thresholds ? [{ x: data.thresholds.review, label: "REVIEW" },
                                       { x: data.thresholds.reject, label: "REJECT" }] : [];
    barChart("histogram", centres, [{ name: "scores", color: COLORS.score, values: hist.counts }],
      { width: hist.edges[1] - hist.edges[0], markers, empty: "no inspections in the last hour" });
  } else {
    empty(svgFor("histogram"), "no model serving");
  }

  const tl = data.timeline.map(p => ({ ...p, t: Date.parse(p.at) }));
  lineChart("latency", [["P50", "latency_p50_ms", COLORS.p50], ["P95", "latency_p95_ms", COLORS.p95],
                        ["P99", "latency_p99_ms", COLORS.p99]].map(([name, key, color]) =>
    ({ name, color, points: tl.map(p => [p.t, p[key]]) })),
    { time: true, limits: [{ y: lim.latency_p99_ms, label: "P99 alert" }], empty: "no inspections sampled yet" });
  lineChart("queue", [{ name: "queue", color: COLORS.queue, points: tl.map(p => [p.t, p.queue_depth]) },
                      { name: "in flight", color: COLORS.in_flight, points: tl.map(p => [p.t, p.in_flight]) }],
    { time: true, empty: "no samples yet" });
  lineChart("drift", [{ name: "KS scores", color: COLORS.ks, points: tl.map(p => [p.t, p.score_pvalue]) },
                      { name: "latent", color: COLORS.latent, points: tl.map(p => [p.t, p.latent_pvalue]) }],
    { time: true, yLog: true, limits: [{ y: lim.drift_alpha, label: "alert" }],
      empty: "waiting for a full drift window" });
  const ref = data.drift && data.drift.reference_score_mean;
  lineChart("pass-score", [{ name: "PASS mean", color: COLORS.score, points: hours.map(h => [h.t, h.pass_mean_score]) }],
    { time: true, limits: ref ? [{ y: ref, label: "reference mean" }] : [], empty: "no PASS inspections yet" });

  document.getElementById("model").textContent = data.model_version || "none (not ready)";
  const badge = document.getElementById("drift-badge");
  const drift = data.drift;
  const waiting = !drift || (drift.score_pvalue === null && drift.latent_pvalue === null);
  badge.className = "badge " + (waiting ? "" : drift.alarm ? "alarm" : "ok");
  badge.textContent = waiting ? "drift: waiting for data" : drift.alarm ? "drift: ALERT" : "drift: ok";
  document.getElementById("updated").textContent = new Date(Date.parse(data.generated_at)).toISOString().slice(0, 19) + "Z";
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const answer = await fetch("/api/v1/status", { headers: { Accept: "application/json" } });
    if (!answer.ok) throw new Error(`/api/v1/status answered ${answer.status}`);
    draw(await answer.json());
    error.hidden = true;
    document.body.setAttribute("data-loaded", "true");
  } catch (exc) {
    error.textContent = String(exc);
    error.hidden = false;
  }
}

refresh();
setInterval(refresh, 15000);
