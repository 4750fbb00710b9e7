"""Loading the config: YAML or JSON files (layered), `${VAR:-default}` expansion, the seed's JSON
shape, and errors that name the field path and the bad value.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from agent.config.models import Config, dependency_problems
from agent.config.search import DEFAULT_CONFIG
from agent.config.seed import is_seed_shape, map_seed
from agent.config.settings import AgentSettings
from agent.config.webconfig import WebConfigError, read_web_config
from agent.config.yamlfile import load_yaml


class ConfigError(Exception):
    """A config that cannot be used; `problems` holds one `(path, message)` per error."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} error(s)"]
        lines += [f"  {path}: {msg}" if path else f"  {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class MissingVariable(KeyError):
    """`${VAR}` without a default, and VAR unset."""


def expand_env(value: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string of a loaded document."""
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if env.get(name):
                return env[name]
            if default is not None:
                return default
            if name == "HOSTNAME":
                return socket.gethostname()
            raise MissingVariable(name, path)

        return _VAR.sub(repl, value)
    if isinstance(value, dict):
        return {k: expand_env(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, f"{path}.{i}") for i, v in enumerate(value)]
    return value


class _JsonObject(dict[str, Any]):
    """A decoded JSON object that remembers keys it saw twice."""

    duplicates: list[str]


def _json_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    out = _JsonObject()
    out.duplicates = []
    for key, value in pairs:
        if key in out:
            out.duplicates.append(key)
        out[key] = value
    return out


def _json_duplicates(value: Any, path: str = "") -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if isinstance(value, _JsonObject):
        found += [(f"{path}.{k}" if path else k, "duplicate key (defined twice)") for k in value.duplicates]
        for k, v in value.items():
            found += _json_duplicates(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _json_duplicates(v, f"{path}.{i}")
    return found


def parse_document(text: str, source: str) -> Any:
    """Parse YAML or JSON text (JSON when the source ends in .json or the text starts with `{`)."""
    if source.endswith(".json") or text.lstrip().startswith("{"):
        try:
            data = json.loads(text, object_pairs_hook=_json_object)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno} column {exc.colno}"
            raise ConfigError(source, [("", f"invalid JSON at {where}: {exc.msg}")]) from None
        duplicates = _json_duplicates(data)
        if duplicates:
            raise ConfigError(source, duplicates)
        return data
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [("", f"invalid YAML{where}: {problem}")]) from None


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and p.startswith(("function-", "list[")))]
    return ".".join(parts)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (through Optional, list, dict values, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _container(annotation: Any) -> bool:
    """True when an annotation is a dict or list (possibly Optional): the next path part is a key."""
    if typing.get_origin(annotation) in (dict, list):
        return True
    return any(_container(a) for a in typing.get_args(annotation) if a is not type(None))


def did_you_mean(loc: tuple[Any, ...]) -> str:
    """`; did you mean 'x'?` for an unknown key at `loc` close to a key its model knows, else ''."""
    model: type[BaseModel] | None = Config
    keyed = False  # the part before was a mapping or a list: this part is a key or an index
    for part in loc[:-1]:
        if keyed:
            keyed = False
            continue
        field = model.model_fields.get(str(part)) if model is not None else None
        if field is None:
            return ""
        model = _model_in(field.annotation)
        keyed = _container(field.annotation)
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """One `(field.path, message with the bad value)` per pydantic error."""
    problems = []
    for err in exc.errors(include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        path = _format_loc(err["loc"])
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + did_you_mean(err["loc"])
        elif err["type"] == "missing":
            msg = "required field is missing"
        if "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            shown = repr(err["input"])
            if err["loc"][-1:] == ("dsn",) and isinstance(err["input"], str):
                from agent.config.dsn import redact

                shown = repr(redact(err["input"]))  # the error is about a password: never echo it
            if len(shown) > 80:
                shown = shown[:77] + "..."
            msg += f" (got {shown})"
        if not path and msg.startswith("components") and ": " in msg:
            path, _, msg = msg.partition(": ")
        problems.append((path, msg))
    return problems


def _raw_dependencies(components: Any) -> dict[str, list[str]]:
    """name -> depends_on from an unvalidated `components` mapping (malformed entries count as none)."""
    if not isinstance(components, dict):
        return {}
    graph: dict[str, list[str]] = {}
    for name, entry in components.items():
        deps = entry.get("depends_on") if isinstance(entry, dict) else None
        graph[str(name)] = [d for d in deps if isinstance(d, str)] if isinstance(deps, list) else []
    return graph


def build_config(data: Any, source: str = "<config>", env: Mapping[str, str] | None = None,
                 *, expand: bool = True) -> Config:
    """Validate a loaded document (native or seed shape) into a Config, applying env overrides.

    `expand=False`: the document's `${VAR}` were already expanded (load_document does it per file).
    """
    env = os.environ if env is None else env
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [("", f"the top level must be a mapping, got {type(data).__name__}")])
    if expand:
        data = _expanded(data, env, source)
    problems: list[tuple[str, str]] = []
    if is_seed_shape(data):
        data, problems = map_seed(data, env)
    level = env.get("AUTONOMOUS_LOG_LEVEL")
    if level:
        data.setdefault("agent", {})
        if isinstance(data["agent"], dict):
            data["agent"]["log_level"] = level
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # Dependency errors too, though the model's own check runs only once every field is valid.
        deps = dependency_problems(_raw_dependencies(data.get("components")))
        problems += [p for p in validation_problems(exc) if p not in deps] + deps
        raise ConfigError(source, problems) from None
    web = config.agent.web_config_file
    if web is not None:
        try:
            read_web_config(web)
        except WebConfigError as exc:
            problems += [("agent.web_config_file", f"{exc.path}: {p}: {m}" if p else f"{exc.path}: {m}")
                         for p, m in exc.problems]
    if problems:
        raise ConfigError(source, problems)
    return config


def merge_documents(base: Any, extra: Any) -> Any:
    """Deep-merge mappings (later wins); lists and scalars are replaced."""
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for key, value in extra.items():
            out[key] = merge_documents(base[key], value) if key in base else value
        return out
    return extra


def _expanded(data: Any, env: Mapping[str, str], source: str) -> Any:
    try:
        return expand_env(data, env)
    except MissingVariable as exc:
        msg = f"environment variable ${{{exc.args[0]}}} is not set and has no default (use ${{VAR:-default}})"
        raise ConfigError(source, [(exc.args[1], msg)]) from None


def load_document(paths: Sequence[Path], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read, expand and merge the files, relative paths resolved against each file's directory.

    Each file is expanded (`${VAR}`) and its relative paths made absolute against its own directory
    before the merge, so a value resolves against the file that set it (docs/config.md, "Relative
    paths"); a component's `cwd` defaults to the directory of the file that set its `command`, and
    `state_dir` and `log_dir`, when no file sets them, to `.agent` and `logs` in the first file's
    directory. The embedded default is not a user's file: its paths stay relative to the working
    directory.
    """
    env = os.environ if env is None else env
    document: dict[str, Any] = {}
    command_dirs: dict[str, Path | None] = {}  # component -> directory its command came from
    for p in paths:
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            tried = "" if p.is_absolute() else f" {p.absolute()}"
            raise ConfigError(str(p), [("", f"cannot read the file{tried}: {exc.strerror or exc}")]) from None
        part = parse_document(text, str(p))
        if part is not None and not isinstance(part, dict):
            raise ConfigError(str(p), [("", f"the top level must be a mapping, got {type(part).__name__}")])
        part = _expanded(part or {}, env, str(p))
        base = None if is_embedded(p) else p.resolve().parent
        if base is not None:
            resolve_paths(part, base)
        for _, name, entry in component_entries(part):
            if "command" in entry or name not in command_dirs:
                command_dirs[name] = base
        document = merge_documents(document, part)
    for _, name, entry in component_entries(document):
        where = command_dirs.get(name)
        if where is not None and entry.get("command") is not None and "cwd" not in entry:
            entry["cwd"] = str(where)
    user = [p for p in paths if not is_embedded(p)]
    agent = document.setdefault("agent", {}) if user else None
    if isinstance(agent, dict):
        # Defaults are set by no file: they resolve against the first file's directory (as Compose's
        # project directory), so `.agent/control.token` is found from anywhere without naming it.
        for key in DEFAULT_DIRS:
            if key not in agent:
                agent[key] = str(user[0].resolve().parent / str(AgentSettings.model_fields[key].default))
    return document


def load_config(path: str | Path | Sequence[str | Path], env: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate a config file, or several merged in order (later files win)."""
    paths = [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    document = load_document(paths, env)
    return build_config(document, " + ".join(str(p) for p in paths), env, expand=False)


# Keys holding file system paths, by where they sit; `env` values are never touched (they are not paths).
AGENT_PATH_KEYS = ("state_dir", "log_dir", "control_token_file", "web_config_file")
CLIENT_TLS_PATH_KEYS = ("ca_file", "cert_file", "key_file")
DEFAULT_DIRS = ("state_dir", "log_dir")  # relative defaults (.agent, logs) resolved the same way
WEBHOOK_PATH_KEYS = ("bearer_token_file", "basic_auth_password_file")
COMPONENT_PATH_KEYS = ("cwd", "env_file")
COMPONENT_SECTIONS = ("components", "services", "agents")  # native, and the seed's two


def _absolute(mapping: Any, keys: Sequence[str], base: Path) -> None:
    if not isinstance(mapping, dict):
        return
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            mapping[key] = str(base / value)


def component_entries(document: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(field path, name, mapping) of every component entry: native (`components.<name>`) or the
    seed's (`services.<name>`, `agents.<name>`)."""
    out = []
    if isinstance(document, dict):
        for section in COMPONENT_SECTIONS:
            entries = document.get(section)
            if isinstance(entries, dict):
                out += [(f"{section}.{n}", str(n), e) for n, e in entries.items() if isinstance(e, dict)]
    return out


def resolve_paths(document: dict[str, Any], base: Path) -> None:
    """Make the relative paths of one file's document absolute against `base`, in place."""
    agent = document.get("agent")
    _absolute(agent, AGENT_PATH_KEYS, base)
    if isinstance(agent, dict):
        _absolute(agent.get("webhook"), WEBHOOK_PATH_KEYS, base)
        _absolute(agent.get("client_tls"), CLIENT_TLS_PATH_KEYS, base)
    for _, _, entry in component_entries(document):
        _absolute(entry, COMPONENT_PATH_KEYS, base)
        stderr = entry.get("stderr")
        if isinstance(stderr, str) and stderr not in ("merged", "file"):
            _absolute(entry, ("stderr",), base)
    backlog = document.get("backlog")
    sources = backlog.get("sources") if isinstance(backlog, dict) else None
    if isinstance(sources, list):
        for source in sources:
            _absolute(source, ("path", "passfile", "password_file"), base)


def is_embedded(path: Path) -> bool:
    """Whether `path` is the embedded demo, however it is spelled (relative, through a symlink)."""
    try:
        return path.resolve() == DEFAULT_CONFIG
    except OSError:
        return False

