// The live view of a run: state pushed by the coordinator as server-sent events ("state":
// a snapshot first, then what changed; "end": the run is over and the stream closes). Every
// text from the run (worker names, errors, the command line) goes in through textContent or
// setAttribute, never as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const LABEL_W = 150, PLOT_W = 850, LANE_H = 16, LANE_GAP = 3, AXIS_H = 22;
const STATUS = ["ok", "failed", "lost"];

const modes = [];      // by index: {name, tasks, ok, failed, running, now_s, ended, lanes, bars, el}
let axisMax = 1;       // seconds at the right edge of every panel: one shared time axis
let failuresShown = 0;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

// 1, 2, 5, 10, 20, 50 ...: the axis grows in steps, so bars are laid out again only then.
function niceCeil(x) {
  for (let p = 1; ; p *= 10)
    for (const m of [1, 2, 5])
      if (m * p >= x) return m * p;
}

function niceSteps(max) {
  for (const s of [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200])
    if (max / s <= 10) return s;
  return max / 10;
}

function fmtSeconds(s) {
  if (!isFinite(s)) return "?";
  if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min " + Math.round(s - 60 * m) + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
}

function x(seconds) { return LABEL_W + (seconds / axisMax) * PLOT_W; }

function makePanel(mode) {
  const panel = el("section", {"class": "panel", "data-mode": mode.name});
  panel.append(el("h2", {}, mode.name));
  const counts = el("div", {"class": "counts"});
  const count = {};
  for (const [key, label] of [["done", "done"], ["ok", "ok"], ["failed", "failed"], ["running", "running"],
                              ["queued", "queued"], ["rate", "rate"], ["eta", "ETA"], ["elapsed", "elapsed"]]) {
    const span = el("span");
    span.append(el("span", {"class": "label"}, label));
    count[key] = el("span", {"class": "count", "data-count": key}, "0");
    span.append(count[key]);
    counts.append(span);
  }
  panel.append(counts);
  const plot = svg("svg", {"class": "lanes", "viewBox": `0 0 ${LABEL_W + PLOT_W + 30} ${AXIS_H}`});
  const grid = svg("g", {"class": "grid-lines"});
  const lanes = svg("g", {"class": "lane-rows"});
  const bars = svg("g", {"class": "bars"});
  const running = svg("g", {"class": "running"});
  const axis = svg("g", {"class": "axis"});
  plot.append(grid, lanes, bars, running, axis);
  panel.append(plot);
  document.getElementById("panels").append(panel);
  mode.el = {panel, count, plot, grid, lanes, bars, running, axis, laneEls: [], barEls: [], runEls: [], history: []};
}

// Lanes in natural order of their names (t2 before t10), whatever order they appeared in.
function laneY(mode, i) { return (mode.rows[i] ?? i) * (LANE_H + LANE_GAP); }

function order(mode) {
  const names = mode.lanes.map((lane, i) => [lane ? lane.name : "", i]);
  names.sort((a, b) => a[0].localeCompare(b[0], undefined, {numeric: true}));
  mode.rows = [];
  names.forEach(([, i], row) => { mode.rows[i] = row; });
}

function placeBar(rect, bar) {
  const [, , start, end] = bar;
  const left = x(start);
  rect.setAttribute("x", left.toFixed(2));
  rect.setAttribute("width", Math.max(1, x(end) - left).toFixed(2));
}

function updateLane(mode, lane) {
  const e = mode.el;
  let g = e.laneEls[lane.i];
  if (!g) {
    g = svg("g", {"class": "lane"});
    g.append(svg("rect", {"class": "lane-bg", "x": LABEL_W, "y": 0, "width": PLOT_W, "height": LANE_H}));
    const label = svg("text", {"x": LABEL_W - 6, "y": LANE_H - 4, "text-anchor": "end"});
    g.append(label);
    e.lanes.append(g);
    e.laneEls[lane.i] = g;
  }
  g.setAttribute("data-worker", lane.name);
  g.setAttribute("data-alive", lane.alive ? "yes" : "no");
  const label = g.querySelector("text");
  label.textContent = lane.name.length > 20 ? lane.name.slice(0, 19) + "…" : lane.name;
  // The worker table row
  const key = mode.i + "/" + lane.i;
  let row = document.querySelector(`#workers tr[data-key="${key}"]`);
  if (!row) {
    row = el("tr", {"data-key": key});
    for (let c = 0; c < 6; c++) row.append(el("td"));
    document.querySelector("#workers tbody").append(row);
  }
  const cells = row.children;
  cells[0].textContent = mode.name;
  cells[1].textContent = lane.name;
  cells[2].textContent = lane.where;
  cells[3].textContent = lane.alive ? "alive" : mode.ended ? "done" : "gone";
  cells[3].className = lane.alive ? "" : "dead";
  cells[4].textContent = String(lane.done);
  cells[5].textContent = lane.running ? `task ${lane.running[0]} since ${fmtSeconds(lane.running[1])}` : "";
}

function layout(mode) {
  const e = mode.el;
  const height = mode.lanes.length * (LANE_H + LANE_GAP) + AXIS_H;
  e.plot.setAttribute("viewBox", `0 0 ${LABEL_W + PLOT_W + 30} ${height}`);
  e.laneEls.forEach((g, i) => g && g.setAttribute("transform", `translate(0 ${laneY(mode, i)})`));
  e.bars.querySelectorAll("rect").forEach((rect) => {
    const bar = mode.bars[Number(rect.dataset.index)];
    rect.setAttribute("y", laneY(mode, bar[1]));
    placeBar(rect, bar);
  });
  // Axis and grid
  e.axis.replaceChildren();
  e.grid.replaceChildren();
  const top = mode.lanes.length * (LANE_H + LANE_GAP);
  e.axis.append(svg("line", {"x1": LABEL_W, "x2": LABEL_W + PLOT_W, "y1": top + 2, "y2": top + 2}));
  const step = niceSteps(axisMax);
  for (let t = 0; t <= axisMax + 1e-9; t += step) {
    e.grid.append(svg("line", {"class": "grid", "x1": x(t), "x2": x(t), "y1": 0, "y2": top}));
    const label = svg("text", {"x": x(t), "y": top + 16, "text-anchor": "middle"});
    label.textContent = (step < 1 ? t.toFixed(String(step).length - 2) : Math.round(t)) + " s";
    e.axis.append(label);
  }
}

function drawRunning(mode) {
  const e = mode.el;
  for (const lane of mode.lanes) {
    let rect = e.runEls[lane.i];
    if (!lane.running || mode.ended) {
      if (rect) { rect.remove(); e.runEls[lane.i] = undefined; }
      continue;
    }
    if (!rect) {
      rect = svg("rect", {"class": "bar running", "height": LANE_H});
      e.running.append(rect);
      e.runEls[lane.i] = rect;
    }
    rect.setAttribute("data-task", String(lane.running[0]));
    rect.setAttribute("y", laneY(mode, lane.i));
    placeBar(rect, [0, 0, lane.running[1], Math.max(lane.running[1], mode.now_s)]);
  }
}

function updateCounts(mode) {
  const c = mode.el.count;
  const done = mode.ok + mode.failed;
  const queued = Math.max(0, mode.tasks - done - mode.running);
  // Rate over the last 5 s of updates; the whole mode's average until there are 2 s of them.
  const h = mode.el.history;
  h.push([mode.now_s, done]);
  while (h.length > 2 && mode.now_s - h[1][0] > 5) h.shift();
  let rate = mode.now_s > 0 ? done / mode.now_s : 0;
  if (h.length >= 2 && h[h.length - 1][0] - h[0][0] >= 2) rate = (done - h[0][1]) / (h[h.length - 1][0] - h[0][0]);
  c.done.textContent = `${done} / ${mode.tasks}`;
  c.ok.textContent = String(mode.ok);
  c.failed.textContent = String(mode.failed);
  c.running.textContent = String(mode.running);
  c.queued.textContent = String(queued);
  c.rate.textContent = rate >= 100 ? `${Math.round(rate)}/s` : `${rate.toFixed(2)}/s`;
  c.eta.textContent = mode.ended ? "done" : rate > 0 ? fmtSeconds((mode.tasks - done) / rate) : "?";
  c.elapsed.textContent = fmtSeconds(mode.now_s);
}

function applyMode(update) {
  let mode = modes[update.i];
  if (!mode) {
    mode = modes[update.i] = {i: update.i, name: update.name, lanes: [], bars: [], rows: []};
    makePanel(mode);
  }
  for (const key of ["tasks", "ok", "failed", "running", "now_s", "ended"]) mode[key] = update[key];
  let added = false;
  for (const lane of update.lanes) {
    added ||= !mode.lanes[lane.i];
    mode.lanes[lane.i] = lane;
    updateLane(mode, lane);
  }
  if (added) order(mode);
  const e = mode.el;
  for (const bar of update.bars) {
    const [index, lane, , , status, tasks, id] = bar;
    mode.bars[index] = bar;
    let rect = e.barEls[index];
    if (!rect) {
      rect = svg("rect", {"height": LANE_H});
      rect.dataset.index = String(index);
      e.bars.append(rect);
      e.barEls[index] = rect;
    }
    rect.setAttribute("class", "bar " + STATUS[status]);
    rect.setAttribute("data-task", String(id));
    rect.setAttribute("data-tasks", String(tasks));
    rect.setAttribute("y", laneY(mode, lane));
    placeBar(rect, bar);
  }
  return mode;
}

function applyState(state) {
  if (state.title !== undefined) document.getElementById("title").textContent = state.title;
  const touched = state.modes.map(applyMode);
  const newMax = niceCeil(Math.max(1, ...modes.map((m) => m.now_s * 1.05)));
  const rescale = newMax !== axisMax;
  axisMax = newMax;
  for (const mode of modes) {
    if (rescale || touched.includes(mode)) layout(mode);
    drawRunning(mode);
  }
  for (const mode of touched) updateCounts(mode);
  for (const failure of state.failures) {
    failuresShown++;
    const worker = failure.worker ? ` on ${failure.worker}` : "";
    document.getElementById("failures").append(
        el("li", {"class": "failure", "data-mode": failure.mode, "data-task": String(failure.id)},
           `${failure.mode}: task ${failure.id}${worker}: ${failure.error}`));
  }
  document.getElementById("failures-total").textContent = String(state.failures_total);
  const more = document.getElementById("failures-more");
  more.hidden = state.failures_total <= failuresShown;
  more.textContent = `and ${state.failures_total - failuresShown} more: the journal (--results) has every one`;
  if (state.reports) showTable(state.reports);
  if (state.jobs) showJobs(state.jobs);
  const status = document.getElementById("status");
  status.textContent = state.finished ? "run over" : "live";
  status.className = "status " + (state.finished ? "over" : "live");
}

// A server's (coordinator serve --ui): its jobs, and what its workers have and hold.
function showJobs(server) {
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren();
  for (const j of server.jobs) {
    const row = el("tr", {"data-job": String(j.job), "data-state": j.state});
    for (const text of [String(j.job), j.name, j.state, String(j.tasks), String(j.ok), String(j.failed),
                        String(j.running), String(j.waiting), j.why || ""])
      row.append(el("td", {}, text));
    body.append(row);
  }
  const held = Object.entries(server.resources).map(([name, count]) => `${name} ${server.in_use[name] || 0}/${count}`);
  document.getElementById("resources").textContent = held.length ? `held: ${held.join(", ")}` : "";
  document.getElementById("jobs-section").hidden = false;
}

function showTable(reports) {
  const body = document.querySelector("#table tbody");
  body.replaceChildren();
  const num = (v, digits) => (v === null || v === undefined ? "-" : Number(v).toFixed(digits));
  for (const r of reports) {
    const row = el("tr", {"data-mode": r.mode});
    for (const text of [r.mode, String(r.workers), String(r.tasks), String(r.ok), String(r.failed), num(r.wall_s, 3),
                        num(r.speedup_vs_sequential, 2), num(r.cpu_s, 3), String(r.cpus_used),
                        Math.round(100 * r.utilisation) + "%"])
      row.append(el("td", {}, text));
    body.append(row);
  }
  document.getElementById("table-section").hidden = false;
}

function connect() {
  const events = new EventSource("events");
  events.addEventListener("state", (message) => applyState(JSON.parse(message.data)));
  events.addEventListener("end", () => {
    events.close();  // the run is over and everything is here: no reconnecting
    document.body.setAttribute("data-complete", "yes");
  });
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) {
      const status = document.getElementById("status");
      if (!status.classList.contains("over")) {
        status.textContent = "coordinator gone";
        status.className = "status lost";
      }
    }
  };
}

connect();
