// The collector's dashboard: fetches the JSON APIs of the same origin and draws them as SVG.
//
// No libraries and no request to any other origin (the page is served with a CSP that forbids
// it). Everything that comes from the API is untrusted text (event types and params are chosen
// by whoever sends events), so it reaches the DOM only through textContent and setAttribute,
// never through innerHTML. Rendered numbers carry data-* attributes for the browser tests.
"use strict";

(() => {
  const TOKEN_KEY = "collector.readToken";
  const TZ_KEY = "collector.tz";
  const REFRESH_MS = 10000;
  const ANALYTICS_EVERY = 6;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
  const DEFAULT_STEPS = ["page_view", "search", "add_to_cart", "checkout", "purchase"];

  const state = {
    token: localStorage.getItem(TOKEN_KEY) || "",
    granularity: null,
    granularities: [],
    tz: localStorage.getItem(TZ_KEY) || browserZone(),
    timer: null,
    refreshes: 0,
    busy: false,
    pending: false,
  };

  const $ = (id) => document.getElementById(id);

  function browserZone() {
    try {
      return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    } catch (e) {
      return "UTC";
    }
  }

  // --- DOM helpers ----------------------------------------------------------------------------
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function fmt(n) {
    return Number(n).toLocaleString();
  }

  function showError(id, err) {
    const node = $(id + "-error");
    if (!err) {
      node.hidden = true;
      node.textContent = "";
      return;
    }
    node.hidden = false;
    node.textContent = err.message || String(err);
  }

  // --- API ------------------------------------------------------------------------------------
  class AuthError extends Error {}

  async function api(path, options) {
    const opts = options || {};
    const headers = {};
    const sentWith = state.token;
    if (sentWith) headers.Authorization = "Bearer " + sentWith;
    if (opts.body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(path, {
      method: opts.method || "GET",
      headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      cache: "no-store",
    });
    let doc = null;
    try {
      doc = await res.json();
    } catch (e) {
      doc = null;
    }
    if (res.status === 401 || res.status === 403) {
      // A request sent before the user saved a new token answers 401 after the save: the
      // refresh the save started asks again with the new token, so do not ask the user.
      if (sentWith !== state.token) throw new AuthError("the token changed meanwhile");
      askToken(res.status === 403 ? "The saved token was refused; enter the current one."
                                  : "The analytics and the events need the read token.");
      throw new AuthError("waiting for the read token");
    }
    if (!res.ok) {
      const message = doc && doc.message ? doc.message : res.status + " " + res.statusText;
      throw new Error(message);
    }
    return doc;
  }

  // --- token ----------------------------------------------------------------------------------
  function askToken(reason) {
    const dialog = $("token-dialog");
    $("token-reason").textContent = reason;
    if (dialog.hidden) {
      dialog.hidden = false;
      $("token-input").value = "";
      $("token-input").focus();
    }
  }

  function saveToken(event) {
    event.preventDefault();
    state.token = $("token-input").value.trim();
    localStorage.setItem(TOKEN_KEY, state.token);
    $("token-dialog").hidden = true;
    refresh();
  }

  // --- charts ---------------------------------------------------------------------------------
  function timeLabel(ts, withDate) {
    const opts = { hour: "2-digit", minute: "2-digit", timeZone: state.tz };
    if (withDate) Object.assign(opts, { month: "short", day: "numeric" });
    return new Date(ts * 1000).toLocaleString(undefined, opts);
  }

  // A line over time: points [[bucket_start, count], ...], oldest first.
  function drawSeries(node, points) {
    clear(node);
    const W = 800, H = 200, top = 10, bottom = 22, left = 44;
    const max = Math.max(1, ...points.map((p) => p[1]));
    const sum = points.reduce((a, p) => a + p[1], 0);
    node.dataset.points = points.length;
    node.dataset.sum = sum;
    node.dataset.max = Math.max(0, ...points.map((p) => p[1]));
    const x = (i) => left + (points.length > 1 ? (i * (W - left)) / (points.length - 1) : 0);
    const y = (v) => top + (H - top - bottom) * (1 - v / max);
    node.append(svg("line", { class: "axis", x1: left, x2: W, y1: y(0), y2: y(0) }));
    node.append(svg("text", { x: left - 6, y: y(max) + 4, "text-anchor": "end" }, fmt(max)));
    node.append(svg("text", { x: left - 6, y: y(0) + 4, "text-anchor": "end" }, "0"));
    if (!points.length) return;
    let d = "";
    points.forEach((p, i) => { d += (i ? "L" : "M") + x(i).toFixed(1) + " " + y(p[1]).toFixed(1); });
    const area = d + "L" + x(points.length - 1).toFixed(1) + " " + y(0) + "L" + x(0) + " " + y(0) + "Z";
    node.append(svg("path", { class: "area", d: area }));
    node.append(svg("path", { class: "line", d }));
    const ticks = 4;
    for (let t = 0; t <= ticks; t++) {
      const i = Math.round((t * (points.length - 1)) / ticks);
      const anchor = t === 0 ? "start" : t === ticks ? "end" : "middle";
      node.append(svg("text", { x: x(i), y: H - 4, "text-anchor": anchor },
                      timeLabel(points[i][0], t === 0 || t === ticks)));
    }
  }

  // Vertical bars with a label and a value each: items [{label, value, attrs}].
  function drawBars(node, items, W, H) {
    clear(node);
    const top = 16, bottom = 20;
    const max = Math.max(1, ...items.map((it) => it.value));
    const slot = W / Math.max(1, items.length);
    items.forEach((it, i) => {
      const h = ((H - top - bottom) * it.value) / max;
      const g = svg("g", it.attrs);
      g.append(svg("rect", { class: "bar", x: i * slot + slot * 0.15, width: slot * 0.7,
                             y: H - bottom - h, height: Math.max(h, 0.5) }));
      g.append(svg("text", { class: "value", x: i * slot + slot / 2, y: H - bottom - h - 4,
                             "text-anchor": "middle" }, fmt(it.value)));
      g.append(svg("text", { x: i * slot + slot / 2, y: H - 5, "text-anchor": "middle" },
                   it.label));
      node.append(g);
    });
  }

  function drawHeatmap(node, matrix) {
    clear(node);
    const left = 34, top = 4, cell = (800 - left) / 24, rowH = 22;
    const max = Math.max(1, ...matrix.flat());
    matrix.forEach((row, w) => {
      node.append(svg("text", { x: 0, y: top + w * rowH + 15 }, WEEKDAYS[w]));
      row.forEach((n, h) => {
        const rect = svg("rect", {
          x: left + h * cell + 1, y: top + w * rowH + 1, width: cell - 2, height: rowH - 2,
          rx: 3, class: "cell", "fill-opacity": n ? (0.12 + 0.88 * (n / max)).toFixed(3) : 0.04,
          "data-weekday": w, "data-hour": h, "data-count": n,
        });
        rect.append(svg("title", {}, WEEKDAYS[w] + " " + String(h).padStart(2, "0") + ":00 – " + fmt(n) + " events"));
        node.append(rect);
      });
    });
    for (let h = 0; h < 24; h += 3) {
      node.append(svg("text", { x: left + h * cell + 2, y: top + 7 * rowH + 14 }, String(h).padStart(2, "0") + "h"));
    }
  }

  // --- panels ---------------------------------------------------------------------------------
  function setGranularities(names) {
    if (names.join() === state.granularities.join()) return;
    state.granularities = names;
    if (!names.includes(state.granularity)) {
      state.granularity = names.includes("hour") ? "hour" : names[0];
    }
    const tabs = clear($("granularities"));
    for (const name of names) {
      const b = el("button", { type: "button", role: "tab", "data-granularity": name,
                               "aria-selected": name === state.granularity }, name);
      b.addEventListener("click", () => { state.granularity = name; markTabs(); loadStats(); });
      tabs.append(b);
    }
  }

  function markTabs() {
    for (const b of $("granularities").children) {
      b.setAttribute("aria-selected", b.dataset.granularity === state.granularity);
    }
  }

  async function loadStats() {
    try {
      const query = state.granularity ? "?granularity=" + encodeURIComponent(state.granularity) : "";
      let doc = await api("api/stats" + query);
      if (!state.granularity) {
        setGranularities(Object.keys(doc.series));
        doc = { ...doc, series: { [state.granularity]: doc.series[state.granularity] } };
      }
      const points = doc.series[state.granularity] || [];
      const svgNode = $("series");
      svgNode.dataset.granularity = state.granularity;
      drawSeries(svgNode, points);
      $("stats-total").textContent = fmt(doc.total);
      $("stats-total").dataset.value = doc.total;
      renderTypes(doc.types || []);
      showError("series", null);
      showError("types", null);
    } catch (e) {
      if (e instanceof AuthError) return;
      showError("series", e);
      showError("types", e);
    }
  }

  function renderTypes(types) {
    const list = clear($("types"));
    const max = Math.max(1, ...types.map((t) => t.count));
    const known = clear($("known-types"));
    for (const t of types) {
      const li = el("li", { "data-event-type": t.event_type, "data-count": t.count });
      li.append(el("span", { class: "name", title: t.event_type }, t.event_type));
      li.append(el("span", { class: "num" }, fmt(t.count)));
      const meter = el("div", { class: "meter" });
      const fill = el("div");
      fill.style.width = ((100 * t.count) / max).toFixed(1) + "%";
      meter.append(fill);
      li.append(meter);
      list.append(li);
      known.append(el("option", { value: t.event_type }));
    }
    if (!types.length) list.append(el("li", { class: "muted" }, "no events in the last 48 hours"));
  }

  function tzQuery() {
    return "tz=" + encodeURIComponent(state.tz);
  }

  async function loadUniques() {
    try {
      const doc = await api("api/analytics/uniques?" + tzQuery());
      drawBars($("uniques"), doc.days.map((d) => ({
        label: d.date.slice(5), value: d.users, attrs: { "data-date": d.date, "data-users": d.users },
      })), 420, 180);
      showError("uniques", null);
    } catch (e) {
      if (!(e instanceof AuthError)) showError("uniques", e);
    }
  }

  async function loadPeak() {
    try {
      const doc = await api("api/analytics/peak-times?" + tzQuery());
      const node = $("peak");
      node.dataset.total = doc.by_hour.reduce((a, b) => a + b, 0);
      node.dataset.tz = state.tz;
      drawHeatmap(node, doc.matrix);
      showError("peak", null);
    } catch (e) {
      if (!(e instanceof AuthError)) showError("peak", e);
    }
  }

  async function loadFlows() {
    try {
      const doc = await api("api/analytics/flows?top=10");
      const body = clear($("flows").tBodies[0]);
      for (const f of doc.flows) {
        const tr = el("tr", { "data-from": f.from, "data-to": f.to, "data-count": f.count });
        tr.append(el("td", { class: "name" }, f.from), el("td", { class: "name" }, "→ " + f.to),
                  el("td", { class: "num" }, fmt(f.count)));
        body.append(tr);
      }
      if (!doc.flows.length) {
        const tr = el("tr");
        tr.append(el("td", { colspan: 3, class: "muted" }, "no flows yet"));
        body.append(tr);
      }
      showError("flows", null);
    } catch (e) {
      if (!(e instanceof AuthError)) showError("flows", e);
    }
  }

  function funnelSteps() {
    return [...$("funnel-steps").querySelectorAll("input")].map((i) => i.value.trim()).filter(Boolean);
  }

  function addStep(value) {
    const li = el("li");
    const input = el("input", { type: "text", list: "known-types", placeholder: "event type" });
    input.value = value || "";
    const remove = el("button", { type: "button", title: "remove this step" }, "×");
    remove.addEventListener("click", () => li.remove());
    li.append(input, remove);
    $("funnel-steps").append(li);
  }

  async function loadFunnel() {
    const steps = funnelSteps();
    const out = clear($("funnel"));
    if (!steps.length) return;
    try {
      const doc = await api("api/analytics/funnel", {
        method: "POST", body: { steps, window: Number($("funnel-window").value) },
      });
      const first = doc.steps.length ? doc.steps[0].users : 0;
      doc.steps.forEach((s, i) => {
        const div = el("div", { class: "step", "data-step": i, "data-event-type": s.event_type,
                                "data-users": s.users, "data-conversion": s.conversion });
        const label = el("div", { class: "label" });
        label.append(el("span", { class: "name" }, (i + 1) + ". " + s.event_type),
                     el("span", { class: "num" }, fmt(s.users) + " users · " +
                        (100 * s.conversion).toFixed(1) + "%"));
        const meter = el("div", { class: "meter" });
        const fill = el("div");
        fill.style.width = (first ? (100 * s.users) / first : 0).toFixed(1) + "%";
        meter.append(fill);
        div.append(label, meter);
        out.append(div);
      });
      showError("funnel", null);
    } catch (e) {
      if (!(e instanceof AuthError)) showError("funnel", e);
    }
  }

  async function loadEvents() {
    try {
      const doc = await api("api/events?limit=20");
      const body = clear($("events").tBodies[0]);
      for (const ev of doc.events) {
        const params = ev.params || {};
        const user = params.user_id === undefined ? "" : JSON.stringify(params.user_id);
        const tr = el("tr", { "data-id": ev.id, "data-event-type": ev.event_type });
        tr.append(el("td", {}, timeLabel(ev.ts, true)), el("td", { class: "name" }, ev.event_type),
                  el("td", {}, user), el("td", { class: "params", title: JSON.stringify(params) }, JSON.stringify(params)),
                  el("td", { class: "id" }, ev.id));
        body.append(tr);
      }
      $("events").dataset.total = doc.total;
      showError("events", null);
    } catch (e) {
      if (!(e instanceof AuthError)) showError("events", e);
    }
  }

  // --- refresh loop ---------------------------------------------------------------------------
  // The real-time panels refresh every REFRESH_MS; the 7-day analytics, which move slowly and
  // cost the store more, every ANALYTICS_EVERY refreshes (and at once on a manual refresh).
  async function refresh(manual) {
    if (state.busy) {
      // A full refresh asked for meanwhile (token saved, time zone changed) runs right after.
      if (manual !== false) state.pending = true;
      return;
    }
    state.busy = true;
    state.pending = false;
    $("status").textContent = "refreshing…";
    const jobs = [loadStats(), loadEvents()];
    if (manual !== false || state.refreshes % ANALYTICS_EVERY === 0) {
      jobs.push(loadUniques(), loadPeak(), loadFlows(), loadFunnel());
    }
    try {
      await Promise.allSettled(jobs);
    } finally {
      state.busy = false;
      state.refreshes += 1;
      document.body.dataset.refreshes = state.refreshes;
      $("status").textContent = "updated " + new Date().toLocaleTimeString();
    }
    if (state.pending) refresh(true);
  }

  function schedule() {
    clearInterval(state.timer);
    state.timer = $("auto").checked ? setInterval(() => refresh(false), REFRESH_MS) : null;
  }

  function initZones() {
    const select = $("tz");
    let zones = [];
    try {
      zones = Intl.supportedValuesOf("timeZone");
    } catch (e) {
      zones = [];
    }
    for (const z of new Set(["UTC", browserZone(), state.tz, ...zones])) {
      select.append(el("option", { value: z }, z));
    }
    select.value = state.tz;
    select.addEventListener("change", () => {
      state.tz = select.value;
      localStorage.setItem(TZ_KEY, state.tz);
      refresh();
    });
  }

  function init() {
    initZones();
    DEFAULT_STEPS.forEach((s) => addStep(s));
    $("funnel-add").addEventListener("click", () => addStep(""));
    $("funnel-form").addEventListener("submit", (e) => { e.preventDefault(); loadFunnel(); });
    $("token-form").addEventListener("submit", saveToken);
    $("refresh").addEventListener("click", () => refresh(true));
    $("auto").addEventListener("change", schedule);
    $("forget").addEventListener("click", () => {
      localStorage.removeItem(TOKEN_KEY);
      state.token = "";
      askToken("Signed out: enter the read token to see the analytics again.");
    });
    refresh();
    schedule();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
