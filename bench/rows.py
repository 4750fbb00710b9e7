"""From the raw results of a run to the planned table rows, with the issue's targets applied.

The rows are planned from the parameters alone, so a run always reports every planned row: a section
that failed leaves its rows with status "error", and a webhook endpoint that is not there yet leaves
its rows "not available".
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from typing import Any

from bench.params import Params
from bench.report import ERROR, NOT_AVAILABLE, OK, Row, apply_target

MiB = float(2**20)
STATS = ("p50", "p90", "p99", "max")
MODES = {"aggressive": "restart-aggressive settings", "default": "default settings"}
IDLE_CPU = {  # row key -> (label, agent variant, supervisord variant, circus variant)
    "on": ("idle CPU % of a core, agent probes+metrics ON", "agent_on", "supervisord", "circus"),
    "off": ("idle CPU % of a core, agent probes+metrics OFF", "agent_off", "supervisord", "circus"),
    "nosample": ("idle CPU % of a core, agent OFF + sampler 1h", "agent_nosample", "supervisord", "circus"),
    "aggr": ("idle CPU % of a core, peers aggressive (agent OFF)", "agent_off", "supervisord_aggr", "circus_aggr"),
}
IDLE_RSS = {
    "on": ("peak RSS, agent probes+metrics ON", "agent_on"),
    "off": ("peak RSS, agent probes+metrics OFF", "agent_off"),
}


def plan(params: Params) -> list[Row]:
    """Every row this run will report, without figures yet."""
    rows: list[Row] = []
    if "restart" in params.sections:
        for n in params.n:
            for mode, text in MODES.items():
                rows += [Row(f"restart.{mode}.n{n}.{s}", f"crash-to-restart {s}, {text}", n, "ms") for s in STATS]
    if "startup" in params.sections:
        rows += [Row(f"startup.n{n}", "start-up to all children running (median)", n, "s") for n in params.n]
    if "idle" in params.sections:
        for n in params.n:
            rows += [Row(f"idle.cpu.{key}.n{n}", spec[0], n, "%") for key, spec in IDLE_CPU.items()]
            rows += [Row(f"idle.rss.{key}.n{n}", spec[0], n, "MiB") for key, spec in IDLE_RSS.items()]
    if "metrics" in params.sections:
        for m in params.components:
            rows += [
                Row(f"metrics.c{m}.p50", "/metrics latency p50 (agent only, 2 replicas each)", m, "ms"),
                Row(f"metrics.c{m}.p99", "/metrics latency p99 (agent only, 2 replicas each)", m, "ms"),
                Row(f"metrics.c{m}.rss", "agent RSS while scraped (agent only)", m, "MiB"),
            ]
    if "cycle" in params.sections:
        for n in params.cycle_sizes:
            rows += [
                Row(f"cycle.n{n}.sample", "one resource sample pass, CPU (in-process)", n, "ms"),
                Row(f"cycle.n{n}.probe", "one tcp probe round over all, CPU (in-process)", n, "ms"),
            ]
        rows.append(Row("cycle.sample_growth", "sample cost per component, largest N / smallest N", None, "x"))
    if "webhook" in params.sections:
        rows += [
            Row("webhook.throughput", "webhook POST /webhook/alertmanager throughput", None, "req/s"),
            Row("webhook.p50", "webhook latency p50", None, "ms"),
            Row("webhook.p99", "webhook latency p99", None, "ms"),
            Row("webhook.ceiling", "webhook load client's ceiling: same requests, server answering at once",
                None, "req/s"),
        ]
    if "burst" in params.sections:
        n = params.burst_alerts
        rows += [
            Row("burst.unanswered", "webhook burst: requests not answered", n, "count"),
            Row("burst.p99", "webhook burst: latency p99", n, "ms"),
            Row("burst.rss_growth", "webhook burst: agent RSS peak minus before", n, "MiB"),
            Row("burst.dedupe_keys", "webhook burst: dedupe keys held after it", n, "count"),
        ]
    return rows


def _fill_restart(rows: dict[str, Row], raw: list[dict[str, Any]]) -> None:
    for group in raw:
        n, mode = group["n"], group["mode"]
        per_kind = group["results"]
        counts = ", ".join(f"{k} {v['count']}/{v['planned']}" for k, v in per_kind.items())
        timeouts = ", ".join(f"{k} {v['timeouts']}" for k, v in per_kind.items() if v["timeouts"])
        for s in STATS:
            row = rows[f"restart.{mode}.n{n}.{s}"]
            row.agent, row.supervisord, row.circus = (per_kind[k][s] for k in ("agent", "supervisord", "circus"))
            if s == "p50":
                row.note = f"kills done/planned: {counts}" + (f"; timeouts: {timeouts}" if timeouts else "")


def _fill_idle(rows: dict[str, Row], raw: list[dict[str, Any]]) -> None:
    for entry in raw:
        n, usage = entry["n"], entry["usage"]
        for key, (_, agent, sd, circus) in IDLE_CPU.items():
            row = rows[f"idle.cpu.{key}.n{n}"]
            row.agent, row.supervisord, row.circus = (usage[v]["cpu_percent"] for v in (agent, sd, circus))
            if key == "on":
                row.note = f"window {entry['window']:.0f} s"
        for key, (_, agent) in IDLE_RSS.items():
            row = rows[f"idle.rss.{key}.n{n}"]
            row.agent = usage[agent]["peak_rss"] / MiB
            row.supervisord = usage["supervisord"]["peak_rss"] / MiB
            row.circus = usage["circus"]["peak_rss"] / MiB
            helper = usage[agent]["extra"].get("helper_rss", 0) / MiB
            row.note = f"agent's helper process (guardian): {helper:.1f} MiB more"


def _fill_metrics(rows: dict[str, Row], raw: list[dict[str, Any]]) -> None:
    for entry in raw:
        m = entry["components"]
        rows[f"metrics.c{m}.p50"].agent = entry["latency_ms"]["p50"]
        p99 = rows[f"metrics.c{m}.p99"]
        p99.agent = entry["latency_ms"]["p99"]
        p99.note = (f"{entry['series']} series, {entry['body_bytes'] / 1e6:.2f} MB per scrape, "
                    f"{entry['cpu_per_scrape_ms']:.0f} ms agent CPU per scrape, "
                    f"max {entry['latency_ms']['max']:.0f} ms")
        rows[f"metrics.c{m}.rss"].agent = entry["rss"] / MiB


def _fill_cycle(rows: dict[str, Row], raw: list[dict[str, Any]]) -> None:
    for entry in raw:
        n = entry["n"]
        sample = rows[f"cycle.n{n}.sample"]
        sample.agent = 1000.0 * entry["sample_cpu_s"]
        sample.note = (f"{entry['sample_us_per_component']:.0f} us per component, {entry['host_processes']} "
                       f"processes on the host, {1000 * entry['sample_wall_s']:.0f} ms wall")
        probe = rows[f"cycle.n{n}.probe"]
        probe.agent = 1000.0 * entry["probe_round_cpu_s"]
        probe.note = f"{entry['probe_us_per_component']:.0f} us per component"
    if raw:
        first, last = raw[0], raw[-1]
        growth = rows["cycle.sample_growth"]
        growth.agent = last["sample_us_per_component"] / first["sample_us_per_component"]
        bends = [e["n"] for prev, e in itertools.pairwise(raw)
                 if e["sample_us_per_component"] > 1.25 * prev["sample_us_per_component"]]
        growth.note = (f"N {first['n']} -> {last['n']}; 1.00 would be linear; per-component cost grows >25% "
                       f"per step from N={bends[0]}" if bends else "linear within 25% per step")


def _fill_webhook(rows: dict[str, Row], raw: dict[str, Any]) -> None:
    ids = ("webhook.throughput", "webhook.p50", "webhook.p99", "webhook.ceiling")
    if not raw.get("available"):
        for row_id in ids:
            rows[row_id].status = NOT_AVAILABLE
            rows[row_id].note = raw.get("note", "")
        return
    rows["webhook.throughput"].agent = raw["throughput"]
    note = (f"{raw['requests']} requests {raw['kinds']}, HTTP {raw['statuses']}, alert results {raw['alert_results']}, "
            f"{raw.get('components', 4)} components")
    rows["webhook.throughput"].note = note + (f"; {raw['note']}" if raw["note"] else "")
    rows["webhook.p50"].agent = raw["latency_ms"]["p50"]
    rows["webhook.p99"].agent = raw["latency_ms"]["p99"]
    if raw.get("agent_cpu"):
        rate = raw["throughput"]
        per_request = f" ({1e6 * raw['agent_cpu'] / rate:.0f} us of CPU per request)" if rate else ""
        rows["webhook.throughput"].note += (f"; during the load the agent used {raw['agent_cpu']:.2f} of a core"
                                            f"{per_request}, the load client {raw['client_cpu']:.2f}")
    ceiling = rows["webhook.ceiling"]
    ceiling.agent = raw.get("ceiling") or None
    if ceiling.agent is not None:
        lat = raw["ceiling_latency_ms"]
        ceiling.note = (f"not the agent: bench/httpload.py's client against a server that answers every request "
                        f"with one prepared response; p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms")


def _fill_burst(rows: dict[str, Row], raw: dict[str, Any]) -> None:
    rows["burst.unanswered"].agent = raw["requests"] - raw["answered"]
    rows["burst.unanswered"].note = (f"{raw['requests']} requests of {raw['alerts']} alerts in "
                                     f"{raw['elapsed']:.1f} s, HTTP {raw['statuses']}, client errors "
                                     f"{raw['errors']}, alert results {raw['alert_results']}")
    rows["burst.p99"].agent = raw["latency_ms"]["p99"]
    rows["burst.p99"].note = f"p50 {raw['latency_ms']['p50']:.1f} ms, max {raw['latency_ms']['max']:.1f} ms"
    rows["burst.rss_growth"].agent = (raw["rss_peak"] - raw["rss_before"]) / MiB
    rows["burst.rss_growth"].note = (f"before {raw['rss_before'] / MiB:.1f} MiB, peak {raw['rss_peak'] / MiB:.1f}, "
                                     f"after {raw['rss_after'] / MiB:.1f}")
    rows["burst.dedupe_keys"].agent = raw["dedupe_keys"]
    rows["burst.dedupe_keys"].note = (f"dedupe_max_entries {raw['dedupe_max_entries']}, journal "
                                      f"{raw['journal_bytes']} bytes, evictions {raw['evictions']:.0f}, "
                                      f"start actions executed {raw['executed']:.0f}")


def _targets(rows: dict[str, Row], params: Params) -> None:
    def at(row_id: str, text: str, check: Callable[[float, Row], bool]) -> None:
        if row_id in rows:
            apply_target(rows[row_id], text, check)

    at("restart.aggressive.n50.p99", "<= 10 ms", lambda a, r: a <= 10.0)
    at("restart.aggressive.n200.p99", "<= 20 ms", lambda a, r: a <= 20.0)
    for n in params.n:
        at(f"idle.cpu.off.n{n}", "<= supervisord", lambda a, r: r.supervisord is not None and a <= r.supervisord)
        at(f"idle.rss.on.n{n}", "<= 60 MiB", lambda a, r: a <= 60.0)
    at("idle.cpu.on.n50", "<= 1 % of a core", lambda a, r: a <= 1.0)
    at("startup.n200", "<= circus", lambda a, r: r.circus is not None and a <= r.circus)
    at("metrics.c500.p99", "<= 50 ms", lambda a, r: a <= 50.0)
    at("webhook.throughput", ">= 5000 req/s", lambda a, r: a >= 5000.0)
    at("webhook.p99", "<= 10 ms", lambda a, r: a <= 10.0)
    at("burst.unanswered", "0", lambda a, r: a == 0)
    at("burst.p99", "< 1000 ms", lambda a, r: a < 1000.0)
    at("burst.dedupe_keys", f"<= {params.burst_max_entries}", lambda a, r: 0 <= a <= params.burst_max_entries)


def build(params: Params, raw: dict[str, Any]) -> list[Row]:
    """The planned rows filled from `raw`; rows of a failed section get status error."""
    planned = plan(params)
    rows = {row.id: row for row in planned}
    fillers: dict[str, Callable[[dict[str, Row], Any], None]] = {
        "restart": _fill_restart, "startup": _fill_startup, "idle": _fill_idle, "metrics": _fill_metrics,
        "cycle": _fill_cycle, "webhook": _fill_webhook, "burst": _fill_burst,
    }
    errors: dict[str, str] = raw.get("errors", {})
    for section in params.sections:
        if section in raw:
            fillers[section](rows, raw[section])
    for row in planned:
        section = row.id.split(".", 1)[0]
        if row.status == OK and row.agent is None:
            row.status = ERROR
            row.note = errors.get(section, "no figure recorded").splitlines()[0][:200]
    _targets(rows, params)
    return planned


def _fill_startup(rows: dict[str, Row], raw: list[dict[str, Any]]) -> None:
    for entry in raw:
        row = rows[f"startup.n{entry['n']}"]
        seconds = entry["seconds"]
        row.agent, row.supervisord, row.circus = (
            statistics.median(seconds[k]) if seconds[k] else None for k in ("agent", "supervisord", "circus")
        )
        row.note = "runs: " + ", ".join(f"{k} " + "/".join(f"{s:.2f}" for s in v) for k, v in seconds.items())
