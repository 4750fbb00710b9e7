"""Map the seed system's `config/autonomous_config.json` shape onto the native config.

Seed entries under `services` and `agents` become components. The seed launcher knew its commands
from shell scripts, so its JSON has none: an entry without a `command` is an external component
(probed and exported, never started); one given a `command` (an argv list) is run by the agent. Any
other native component key (env, cwd, replicas, probe, ...) may be added beside the seed keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SEED_SECTIONS = ("services", "agents", "orchestration")
SEED_ENTRY_KEYS = ("enabled", "auto_restart", "max_restarts", "health_check_url")

# Capabilities of the seed's five components, from its documentation.
SEED_CAPABILITIES = {
    "mcp_server": ["mcp", "tools", "agents", "orchestration", "health_monitoring", "plugin_system",
                   "circuit_breaker", "redis_cache"],
    "todo_dashboard": ["todo_management", "dashboard", "api", "web_interface", "real_time_updates"],
    "unified_todo_agent": ["todo_processing", "analysis", "assignment", "execution", "monitoring"],
    "auto_restart_agents": ["agent_monitoring", "health_checks", "auto_restart", "service_management"],
    "ollama": ["ai_inference", "language_models", "text_generation", "embeddings"],
}


def is_seed_shape(data: Mapping[str, Any]) -> bool:
    """True when the document uses the seed's top-level sections rather than `components`."""
    return "components" not in data and any(k in data for k in SEED_SECTIONS)


def _default_health_url(name: str, env: Mapping[str, str]) -> str | None:
    if name == "mcp_server":
        return f"http://{env.get('MCP_HOST') or '127.0.0.1'}:{env.get('MCP_PORT') or '5005'}/health"
    if name == "todo_dashboard":
        return f"http://127.0.0.1:{env.get('DASHBOARD_PORT') or '5001'}/api/health"
    return None


def map_seed(data: dict[str, Any], env: Mapping[str, str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Return the native document and the problems found (field path, message)."""
    problems: list[tuple[str, str]] = []
    out: dict[str, Any] = {k: v for k, v in data.items() if k not in SEED_SECTIONS}
    orchestration = data.get("orchestration") or {}
    if not isinstance(orchestration, dict):
        problems.append(("orchestration", "must be a mapping"))
        orchestration = {}
    auto_scaling = orchestration.get("auto_scaling", True)
    agent_section = out.setdefault("agent", {})
    if isinstance(agent_section, dict):
        if "intelligence_enabled" in orchestration and "autonomy" not in agent_section:
            agent_section["autonomy"] = "on" if orchestration["intelligence_enabled"] else "off"
        if "cycle_interval" in orchestration:
            agent_section.setdefault("resources", {}).setdefault("interval", orchestration["cycle_interval"])
    for key in orchestration:
        if key not in ("cycle_interval", "intelligence_enabled", "auto_scaling"):
            problems.append((f"orchestration.{key}", "unknown key"))

    components: dict[str, Any] = {}
    for section in ("services", "agents"):
        entries = data.get(section) or {}
        if not isinstance(entries, dict):
            problems.append((section, "must be a mapping of name -> settings"))
            continue
        for name, entry in entries.items():
            path = f"{section}.{name}"
            if not isinstance(entry, dict):
                problems.append((path, f"must be a mapping, got {entry!r}"))
                continue
            if name in components:
                problems.append((path, "duplicate component name (also defined under services)"))
                continue
            # Without a `command` the entry is external: the seed's launcher scripts start it, the agent
            # probes and exports it (add "command": [...] to have the agent run it).
            native = {k: v for k, v in entry.items() if k not in SEED_ENTRY_KEYS}
            native.setdefault("capabilities", SEED_CAPABILITIES.get(name, []))
            native.setdefault("kind", "service" if section == "services" else "worker")
            if entry.get("enabled", True) is False:
                native.setdefault("replicas", {"min": 0, "max": 1, "initial": 0})
            restart = native.setdefault("restart", {})
            if isinstance(restart, dict):
                if entry.get("auto_restart", True) is False:
                    restart.setdefault("policy", "never")
                if "max_restarts" in entry:
                    restart.setdefault("max_restarts", entry["max_restarts"])
            url = entry.get("health_check_url") or _default_health_url(name, env)
            if url and "probe" not in native:
                native["probe"] = {"http": {"url": url}}
            if not auto_scaling:
                native.setdefault("remediation", {}).setdefault("allowed_actions", ["restart", "start"])
            components[name] = native
    out["components"] = components
    return out, problems
