// The agent's status page: polls the control API with the session cookie and its CSRF token.
// Every value goes into the page through textContent or attributes, never innerHTML: reasons and alert
// names come from alerts.
"use strict";
(function () {
  const POLL_MS = 2000;
  const TREND_SECONDS = 60;
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const csrf = meta("csrf-token");
  const grafana = meta("grafana-url");
  const runbook = meta("runbook-url");
  const seen = {};  // component -> [{at, cpu, rss}]: its figures over the last minute the page was open
  const SPARK = "▁▂▃▄▅▆▇█";
  let ahead = { alerts: [] };  // the last GET /api/v1/alerts

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    return node;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  // Times as the CLI prints them (agent/cli/output.py `seconds`, agent/config/units.py `clock`): `12s`, and clock times
  // in local time as HH:MM:SS when today's, YYYY-MM-DD HH:MM:SS otherwise.
  function seconds(s) {
    return s === null || s === undefined ? "" : `${Math.max(0, Math.round(s))}s`;
  }

  function clock(epoch) {
    if (epoch === null || epoch === undefined) return "";
    const d = new Date(epoch * 1000), today = new Date();
    const two = (n) => String(n).padStart(2, "0");
    const time = [d.getHours(), d.getMinutes(), d.getSeconds()].map(two).join(":");
    if (d.getFullYear() === today.getFullYear() && d.getMonth() === today.getMonth() &&
        d.getDate() === today.getDate()) return time;
    return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${time}`;
  }

  function say(text, bad) {
    const node = document.getElementById("message");
    node.textContent = text;
    node.className = bad ? "alert" : "";
  }

  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let doc = {};
    try { doc = await response.json(); } catch (e) { doc = {}; }
    if (response.status === 401 || response.status === 403) {
      throw new Error(`${doc.error || "refused"}: open the link with ?token= again`);
    }
    if (!response.ok) throw new Error(doc.error || `HTTP ${response.status}`);
    return doc;
  }

  // CPU use and RSS over the last minute of polls: a figure from the second poll on (2 s).
  function trend(c) {
    const now = Date.now() / 1000;
    if (c.cpu_seconds === null || c.rss_bytes === null) { delete seen[c.component]; return ["", ""]; }
    let series = seen[c.component];
    // A restarted process starts its CPU counter again: so does its trend.
    if (!series || c.cpu_seconds < series[series.length - 1].cpu) series = seen[c.component] = [];
    series.push({ at: now, cpu: c.cpu_seconds, rss: c.rss_bytes });
    while (series.length > 2 && now - series[0].at > TREND_SECONDS) series.shift();
    const first = series[0], last = series[series.length - 1];
    const rss = series.map((p) => p.rss);
    const lo = Math.min(...rss), hi = Math.max(...rss);
    const spark = rss.map((v) => SPARK[hi === lo ? 0 : Math.round(((v - lo) / (hi - lo)) * 7)]).join("");
    const span = last.at - first.at;
    if (span <= 0) return [`… ${spark}`, "CPU and RSS trend: from the next poll"];
    const cpu = Math.max(0, ((last.cpu - first.cpu) / span) * 100);
    return [`${cpu.toFixed(1)}% ${spark}`,
      `CPU ${cpu.toFixed(1)}% over the last ${seconds(span)}; RSS ${bytes(first.rss)} → ${bytes(last.rss)} (low ${bytes(lo)}, high ${bytes(hi)})`];
  }

  function marker(a, now) {
    const what = a.action + (a.replica !== undefined ? ` #${a.replica}` : "") +
      (a.desired_replicas !== undefined ? ` → ${a.desired_replicas}` : "");
    return `${what} ${a.state} ${a.active_at ? seconds(now - a.active_at) : ""}`.trim();
  }

  async function act(name, verb, body, question) {
    if (question && !window.confirm(question)) return;
    say(`${verb} ${name}…`);
    try {
      await api("POST", `/api/v1/components/${encodeURIComponent(name)}/${verb}`, body || {});
      say(`${verb} ${name}: done`);
    } catch (e) {
      say(`${verb} ${name}: ${e.message}`, true);
    }
    refresh();
  }

  // Only what makes sense in the row's state: no start on a running component, no stop on a stopped one.
  function menu(c) {
    const name = c.component;
    const box = el("details", null, { class: "menu" });
    const summary = el("summary", "actions", { "aria-label": `actions for ${name}` });
    const items = el("div", null, { role: "group", "aria-label": `actions for ${name}` });
    box.append(summary, items);
    const button = (label, handler, cls) => {
      const b = el("button", label, { type: "button", "data-action": label, "aria-label": `${label} ${name}` });
      if (cls) b.className = cls;
      b.addEventListener("click", () => { box.open = false; handler(); });
      items.append(b);
    };
    if (!c.external) {
      const running = c.replicas > 0;
      if (running || (c.circuit !== "closed" && !c.manual_stop)) button("restart", () => act(name, "restart"));
      if (!running) button("start", () => act(name, "start"));
      if (!c.manual_stop && (running || c.desired > 0)) {
        button("stop", () => act(name, "stop", {}, `Stop ${name}? Automation leaves it stopped until started.`), "danger");
      }
      const scale = el("div", null, { class: "scale" });
      const input = el("input", null, { type: "number", min: String(c.min), max: String(c.max),
        value: String(c.desired), "aria-label": `replicas of ${name}` });
      const go = el("button", "scale", { type: "button", "data-action": "scale", "aria-label": `scale ${name}` });
      go.addEventListener("click", () => {
        const n = Number(input.value);
        box.open = false;
        act(name, "scale", { replicas: n }, n === 0 ? `Scale ${name} to 0 replicas? It stops.` : null);
      });
      scale.append(input, go);
      items.append(scale);
    }
    if (grafana) {
      items.append(el("a", "dashboard", { href: `${grafana}${grafana.includes("?") ? "&" : "?"}var-component=${encodeURIComponent(name)}` }));
    }
    if (runbook) items.append(el("a", "runbook", { href: `${runbook}#${encodeURIComponent(name)}` }));
    if (!items.childElementCount) return el("span");
    box.addEventListener("toggle", () => {
      if (box.open) document.querySelectorAll("details.menu[open]").forEach((d) => { if (d !== box) d.open = false; });
    });
    box.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && box.open) { box.open = false; summary.focus(); }
    });
    return box;
  }

  function notes(c) {
    const parts = [];
    if (c.circuit_until) parts.push(`circuit open until ${clock(c.circuit_until)}`);
    else if (c.circuit && c.circuit !== "closed") parts.push(`circuit ${c.circuit}`);
    if (c.last_probe_error) parts.push(`probe: ${c.last_probe_error.message} (at ${clock(c.last_probe_error.ts)})`);
    return parts.join(" · ");
  }

  // [label, field] of each cell; `clip` cells end in an ellipsis with their whole text in the title.
  const COLUMNS = [
    ["component"], ["state"], ["replicas"], ["health"], ["restarts", "num"], ["reason"],
    ["about to act", "clip"], ["circuit · probe error", "clip"], ["uptime", "num"], ["RSS", "num"],
    ["trend"], ["pids", "clip"],
  ];

  function renderComponents(doc) {
    const present = new Set(doc.components.map((c) => c.component));
    for (const name of Object.keys(seen)) if (!present.has(name)) delete seen[name];  // removed by a reload
    const now = Date.now() / 1000;
    const byComponent = {};
    for (const a of ahead.alerts || []) (byComponent[a.component] = byComponent[a.component] || []).push(a);
    const body = document.querySelector("#components tbody");
    const active = document.activeElement && document.activeElement.closest("#components tr");
    const open = body.querySelector("details.menu[open]");
    // The row holding keyboard focus or an open menu stays (and what is typed in it); its figures refresh.
    const keep = new Set([active, open && open.closest("tr")].filter(Boolean).map((r) => r.dataset.component));
    const rows = doc.components.map((c) => {
      const row = el("tr");
      row.dataset.component = c.component;
      const [trendText, trendTitle] = trend(c);
      const acting = (byComponent[c.component] || []).map((a) => marker(a, now)).join(", ");
      const values = [
        c.component,
        c.state + (c.manual_stop ? " (manual)" : ""),
        `${c.replicas}/${c.desired} [${c.min}..${c.max}]`,
        `${c.healthy}/${c.desired}`,
        c.restarts,
        c.last_reason,
        acting,
        notes(c),
        seconds(c.uptime_seconds),
        bytes(c.rss_bytes),
        trendText,
        c.pids.join(" "),
      ];
      values.forEach((value, i) => {
        const [label, kind] = COLUMNS[i];
        const td = el(i === 0 ? "th" : "td", null, { "data-label": label });
        if (i === 0) td.setAttribute("scope", "row");
        const holder = kind === "clip" ? el("div", null, { class: "clip" }) : td;
        holder.textContent = value === null || value === undefined ? "" : String(value);
        holder.dataset.field = label;
        if (kind === "clip" || label === "trend") holder.title = label === "trend" ? trendTitle : holder.textContent;
        if (label === "state") holder.className = `state-${c.state}`;
        if (label === "about to act" && value) {
          holder.classList.add((byComponent[c.component] || []).some((a) => a.state === "firing") ? "firing" : "pending");
        }
        if (label === "circuit · probe error" && value) holder.classList.add("error");
        if (kind === "num") td.classList.add("num");
        if (label === "about to act") td.classList.add("share");
        if (label === "circuit · probe error") td.classList.add("share-more");
        if (holder !== td) td.append(holder);
        row.append(td);
      });
      const actionCell = el("td", null, { "data-label": "actions" });
      actionCell.append(menu(c));
      row.append(actionCell);
      return row;
    });
    const old = {};
    body.querySelectorAll("tr").forEach((r) => { if (keep.has(r.dataset.component)) old[r.dataset.component] = r; });
    body.replaceChildren(...rows.map((r) => old[r.dataset.component] || r));
    for (const [name, kept] of Object.entries(old)) {
      const fresh = rows.find((r) => r.dataset.component === name);
      if (!fresh) continue;
      fresh.querySelectorAll("[data-field]").forEach((cell) => {
        const target = kept.querySelector(`[data-field="${CSS.escape(cell.dataset.field)}"]`);
        if (target) { target.textContent = cell.textContent; target.className = cell.className; target.title = cell.title; }
      });
    }
  }

  function renderModes(doc) {
    document.getElementById("autonomy").textContent = doc.autonomy;
    document.getElementById("emergency").hidden = !doc.emergency_stop;
    const running = doc.components.filter((c) => c.replicas > 0).length;
    document.getElementById("summary").textContent =
      `${doc.components.length} component(s), ${running} running · agent ${doc.version} up ${seconds(doc.uptime_seconds)} · updated ${clock(Date.now() / 1000)}`;
  }

  function renderPipeline(doc) {
    const banner = document.getElementById("pipeline");
    const p = doc.alert_pipeline;
    if (!p || p.up) { banner.hidden = true; banner.textContent = ""; return; }
    const since = p.silent_since;
    banner.textContent = `Alert pipeline silent since ${clock(since)} — no heartbeat from Alertmanager for ` +
      `${seconds(Date.now() / 1000 - since)}; the agent acts on no alert meanwhile. ` +
      "docs/operations.md, 'When the alert pipeline goes silent'";
    banner.hidden = false;
  }

  function renderAhead(doc) {
    ahead = doc;
    const state = document.getElementById("ahead-state");
    const list = document.getElementById("ahead");
    const now = Date.now() / 1000;
    state.className = "";
    if (!doc.prometheus_url) {
      state.textContent = "Off: set agent.status_page.prometheus_url to the Prometheus that evaluates the rules " +
        "(docs/config.md) to see the alerts pending and firing there that would make this agent act.";
      list.replaceChildren();
      return;
    }
    if (doc.error) {
      state.textContent = `Cannot read the alerts from Prometheus: ${doc.error}`;
      state.className = "error";
    } else if (!doc.alerts.length) {
      state.textContent = `Nothing pending or firing with an action label in Prometheus (read at ${clock(doc.checked_at)}).`;
    } else {
      state.textContent = `From Prometheus at ${clock(doc.checked_at)}:`;
    }
    list.replaceChildren(...doc.alerts.map((a) => {
      const item = el("li", null, { "data-component": a.component, "data-state": a.state });
      item.append(el("strong", a.component), `: ${a.action}` +
        (a.replica !== undefined ? ` replica ${a.replica}` : "") +
        (a.desired_replicas !== undefined ? ` to ${a.desired_replicas}` : "") + ` (${a.alertname}) `,
        el("span", a.active_at ? `${a.state} for ${seconds(now - a.active_at)}` : a.state, { class: a.state }));
      return item;
    }));
  }

  function renderHistory(doc) {
    const rows = doc.history.slice().reverse().map((e) => {
      const row = el("tr");
      [clock(e.ts), e.source, e.alertname, e.component, e.action, e.result,
        e.reason, e.trace_id].forEach((v) => row.append(el("td", v)));
      return row;
    });
    document.querySelector("#history tbody").replaceChildren(...rows);
  }

  const STATUSES = [["pending", "pending"], ["in_progress", "in progress"], ["done", "done"], ["failed", "failed"]];

  function renderBacklog(doc) {
    const total = {}, caps = {};
    for (const c of doc.counts) {
      total[c.status] = (total[c.status] || 0) + c.count;
      const cap = caps[c.capability] = caps[c.capability] || { byPriority: {} };
      cap[c.status] = (cap[c.status] || 0) + c.count;
      if (c.status === "pending") cap.byPriority[c.priority] = (cap.byPriority[c.priority] || 0) + c.count;
    }
    const shown = (counts, always) => STATUSES.filter(([s]) => always.includes(s) || counts[s])
      .map(([s, label]) => `${counts[s] || 0} ${label}`);
    document.getElementById("backlog-total").textContent = doc.counts.length
      ? shown(total, ["pending", "in_progress", "done"]).join(" · ") : "No todos.";
    document.getElementById("backlog").replaceChildren(...Object.keys(caps).sort().map((name) => {
      const cap = caps[name];
      const priorities = Object.entries(cap.byPriority).map(([p, n]) => `${p} ${n}`).join(", ");
      const parts = shown(cap, []);
      if (priorities) parts[0] += ` (${priorities})`;
      const item = el("li", null, { "data-capability": name });
      item.append(el("strong", name), `: ${parts.join(", ")}`);
      return item;
    }));
    document.getElementById("backlog-sources").textContent = doc.sources.length
      ? "Sources: " + doc.sources.map((s) => `${s.source} ${s.up ? "up" : "DOWN" + (s.error ? ` (${s.error})` : "")}`).join(", ")
      : "No backlog sources configured.";
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      const [status, history, backlog, alerts] = await Promise.all([
        api("GET", "/api/v1/status"), api("GET", "/api/v1/history?limit=25"), api("GET", "/api/v1/backlog"),
        // An older agent, or one that cannot answer this, still shows everything else.
        api("GET", "/api/v1/alerts").catch((e) => ({ prometheus_url: "?", alerts: [], error: e.message }))]);
      renderModes(status);
      renderPipeline(status);
      renderAhead(alerts);
      renderComponents(status);
      renderHistory(history);
      renderBacklog(backlog);
    } catch (e) {
      document.getElementById("summary").textContent = `cannot read the agent: ${e.message}`;
    }
    timer = setTimeout(refresh, POLL_MS);
  }

  document.addEventListener("click", (e) => {
    // A click outside an open menu closes it, as a menu does.
    document.querySelectorAll("details.menu[open]").forEach((d) => { if (!d.contains(e.target)) d.open = false; });
  });
  document.getElementById("autonomy-set").addEventListener("click", async () => {
    const mode = document.getElementById("autonomy-mode").value;
    try { await api("POST", "/api/v1/autonomy", { mode }); say(`autonomy ${mode}`); } catch (e) { say(e.message, true); }
    refresh();
  });
  document.getElementById("emergency-stop").addEventListener("click", async () => {
    if (!window.confirm("Emergency stop: stop every component and hold autonomy off until `agent autonomy on`?")) return;
    try { await api("POST", "/api/v1/emergency-stop"); say("emergency stop in force", true); } catch (e) { say(e.message, true); }
    refresh();
  });
  refresh();
})();
