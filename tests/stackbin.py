"""Helpers for tests of the Prometheus stack: find its binaries (skip without them locally, fail without
them in CI), and a short-clock copy of rules/ for end-to-end tests."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

# Debian package that ships each binary (upstream names the Alertmanager binary `alertmanager`).
PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "alertmanager": "prometheus-alertmanager",
}


def require_binary(*names: str) -> str:
    """Path of the first of `names` on PATH; otherwise pytest.fail when CI=true, else pytest.skip."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    packages = sorted({PACKAGES.get(name, name) for name in names})
    message = (
        f"none of {', '.join(names)} is on PATH: install the Debian package(s) {' '.join(packages)} "
        f"(apt-get install {' '.join(packages)}; ./dev.sh test does this when run as root)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


ROOT = Path(__file__).resolve().parent.parent
_WINDOW = re.compile(r"\[(\d+)m\]")
_CONSTANT = re.compile(r"\+\s*[0-9.]+\s*$")


def fast_rules(dst: Path, thresholds: Mapping[str, float] | None = None) -> list[Path]:
    """Copy rules/*.yml into `dst` with every minute made a second, for tests on a short clock.

    Each `for: Nm` becomes `for: Ns` and each range window `[Nm]` becomes `[Ns]` (hour windows and
    predict_linear horizons stay). `thresholds` maps a threshold recording rule (`orchestrator:...`,
    built as `0 * <metric> + <default>`) to a new default, e.g. {"orchestrator:idle_window_seconds": 10}.
    Returns the written files; Prometheus loads them with `rule_files: [<dst>/*.yml]`.
    """
    wanted = dict(thresholds or {})
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sorted((ROOT / "rules").glob("*.yml")):
        doc = yaml.safe_load(src.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = re.sub(r"^(\d+)m$", r"\1s", str(rule["for"]))
                rule["expr"] = _WINDOW.sub(r"[\1s]", rule["expr"])
                name = rule.get("record")
                if name in wanted:
                    expr, count = _CONSTANT.subn(f"+ {wanted.pop(name)}", rule["expr"].strip())
                    if count != 1:
                        raise ValueError(f"{name} is not of the form `0 * <metric> + <number>`")
                    rule["expr"] = expr
        path = dst / src.name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        written.append(path)
    if wanted:
        raise KeyError(f"no such threshold rule: {sorted(wanted)}")
    return written
