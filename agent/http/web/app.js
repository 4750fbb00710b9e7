// The agent's status page: polls the control API with the session cookie and its CSRF token.
// Every value goes into the page through textContent or attributes, never innerHTML: reasons and alert
// names come from alerts.
"use strict";
(function () {
  const POLL_MS = 2000;
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const csrf = meta("csrf-token");
  const grafana = meta("grafana-url");
  const runbook = meta("runbook-url");
  const opened = {};  // component -> {cpu, rss, at, rssSeries}: the trend since the page opened
  const SPARK = "▁▂▃▄▅▆▇█";

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

  function duration(s) {
    if (s === null || s === undefined) return "";
    s = Math.floor(s);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
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

  function trend(c) {
    const now = Date.now() / 1000;
    if (c.cpu_seconds === null || c.rss_bytes === null) return "";
    let t = opened[c.component];
    // A component a reload removed and added again starts a new trend (its CPU counter starts again).
    if (!t || c.cpu_seconds < t.cpu) t = opened[c.component] = { cpu: c.cpu_seconds, rss: c.rss_bytes, at: now, series: [] };
    t.series.push(c.rss_bytes);
    if (t.series.length > 30) t.series.shift();
    const lo = Math.min(...t.series), hi = Math.max(...t.series);
    const spark = t.series.map((v) => SPARK[hi === lo ? 0 : Math.round(((v - lo) / (hi - lo)) * 7)]).join("");
    const elapsed = now - t.at;
    const cpu = elapsed > 0 ? ((c.cpu_seconds - t.cpu) / elapsed) * 100 : 0;
    const drss = c.rss_bytes - t.rss;
    return `CPU ${Math.max(cpu, 0).toFixed(1)}% · RSS ${drss >= 0 ? "+" : "−"}${bytes(Math.abs(drss))} ${spark}`;
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

  function actions(c) {
    const box = el("div", null, { class: "actions" });
    const name = c.component;
    const button = (label, handler, cls) => {
      const b = el("button", label, { type: "button", "data-action": label, "aria-label": `${label} ${name}` });
      if (cls) b.className = cls;
      b.addEventListener("click", handler);
      box.append(b);
    };
    if (c.external) return box;
    button("restart", () => act(name, "restart"));
    button("start", () => act(name, "start"));
    button("stop", () => act(name, "stop", {}, `Stop ${name}? Automation leaves it stopped until started.`), "danger");
    const input = el("input", null, { type: "number", min: String(c.min), max: String(c.max),
      value: String(c.desired), "aria-label": `replicas of ${name}` });
    box.append(input);
    button("scale", () => {
      const n = Number(input.value);
      act(name, "scale", { replicas: n }, n === 0 ? `Scale ${name} to 0 replicas? It stops.` : null);
    });
    return box;
  }

  function links(name) {
    const box = el("span");
    if (grafana) {
      box.append(el("a", "dashboard", { href: `${grafana}${grafana.includes("?") ? "&" : "?"}var-component=${encodeURIComponent(name)}` }), " ");
    }
    if (runbook) box.append(el("a", "runbook", { href: `${runbook}#${encodeURIComponent(name)}` }));
    return box;
  }

  const LABELS = ["component", "state", "replicas/desired", "health", "restarts", "last reason", "uptime",
    "CPU s", "RSS", "trend since opened", "pids", "links", "actions"];

  function renderComponents(doc) {
    const present = new Set(doc.components.map((c) => c.component));
    for (const name of Object.keys(opened)) if (!present.has(name)) delete opened[name];  // removed by a reload
    const body = document.querySelector("#components tbody");
    const focused = document.activeElement && document.activeElement.closest("tr");
    const keep = focused && focused.dataset.component;
    const rows = doc.components.map((c) => {
      const row = el("tr");
      row.dataset.component = c.component;
      const cells = [
        c.component,
        c.state + (c.manual_stop ? " (manual)" : ""),
        `${c.replicas}/${c.desired} [${c.min}..${c.max}]`,
        `${c.healthy}/${c.desired}`,
        c.restarts,
        c.last_reason || (c.last_probe_error ? c.last_probe_error.message : ""),
        duration(c.uptime_seconds),
        c.cpu_seconds === null ? "" : c.cpu_seconds.toFixed(1),
        bytes(c.rss_bytes),
        trend(c),
        c.pids.join(" "),
      ];
      cells.forEach((value, i) => {
        const td = el(i === 0 ? "th" : "td", value, { "data-label": LABELS[i], "data-field": LABELS[i] });
        if (i === 0) td.setAttribute("scope", "row");
        if (i === 1) td.className = `state-${c.state}`;
        if ([4, 7, 8].includes(i)) td.classList.add("num");
        row.append(td);
      });
      const linkCell = el("td", null, { "data-label": "links" });
      linkCell.append(links(c.component));
      row.append(linkCell);
      const actionCell = el("td", null, { "data-label": "actions" });
      actionCell.append(actions(c));
      row.append(actionCell);
      return row;
    });
    // Keep the row holding keyboard focus (and what is typed in it) while the rest refreshes.
    const old = keep ? body.querySelector(`tr[data-component="${CSS.escape(keep)}"]`) : null;
    body.replaceChildren(...rows.map((r) => (old && r.dataset.component === keep ? old : r)));
    if (old) {
      const fresh = rows.find((r) => r.dataset.component === keep);
      fresh.querySelectorAll("[data-field]").forEach((td) => {
        const cell = old.querySelector(`[data-field="${td.dataset.field}"]`);
        if (cell) { cell.textContent = td.textContent; cell.className = td.className; }
      });
    }
  }

  function renderModes(doc) {
    document.getElementById("autonomy").textContent = doc.autonomy;
    document.getElementById("emergency").hidden = !doc.emergency_stop;
    const running = doc.components.filter((c) => c.replicas > 0).length;
    document.getElementById("summary").textContent =
      `${doc.components.length} component(s), ${running} running · agent ${doc.version} up ${duration(doc.uptime_seconds)} · updated ${new Date().toLocaleTimeString()}`;
  }

  function renderHistory(doc) {
    const rows = doc.history.slice().reverse().map((e) => {
      const row = el("tr");
      [new Date(e.ts * 1000).toLocaleTimeString(), e.source, e.alertname, e.component, e.action, e.result,
        e.reason, e.trace_id].forEach((v) => row.append(el("td", v)));
      return row;
    });
    document.querySelector("#history tbody").replaceChildren(...rows);
  }

  function renderBacklog(doc) {
    const rows = doc.counts.map((c) => {
      const row = el("tr");
      [c.status, c.priority, c.capability, c.count].forEach((v) => row.append(el("td", v)));
      return row;
    });
    if (!rows.length) rows.push(el("tr")), rows[0].append(el("td", "no todos", { colspan: "4" }));
    document.querySelector("#backlog tbody").replaceChildren(...rows);
    document.getElementById("backlog-sources").textContent = doc.sources.length
      ? "Sources: " + doc.sources.map((s) => `${s.source} ${s.up ? "up" : "DOWN" + (s.error ? ` (${s.error})` : "")}`).join(", ")
      : "No backlog sources configured.";
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      const [status, history, backlog] = await Promise.all([
        api("GET", "/api/v1/status"), api("GET", "/api/v1/history?limit=25"), api("GET", "/api/v1/backlog")]);
      renderModes(status);
      renderComponents(status);
      renderHistory(history);
      renderBacklog(backlog);
    } catch (e) {
      document.getElementById("summary").textContent = `cannot read the agent: ${e.message}`;
    }
    timer = setTimeout(refresh, POLL_MS);
  }

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
