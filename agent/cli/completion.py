"""Shell completion: `agent completion bash|zsh` prints a script; `agent __complete components` names.

The verbs and each verb's options are written into the script from the parser when it is generated,
so they match the installed agent. Component names come from the running agent when it answers (its
status document, within a second), else from the config, and nothing at all when neither can be read:
a completion must never print an error into the user's command line. The script calls the same
program the user typed (`.venv/bin/agent` completes with `.venv/bin/agent __complete ...`) and passes
on the -c/--url/--token-file options already on the line.
"""

from __future__ import annotations

import argparse
from typing import Any

# Verbs whose first argument is a component name.
NAME_VERBS = ("status", "restart", "start", "stop", "scale", "logs")
# Options whose next word is their value (so it is not taken for the verb).
VALUE_OPTIONS = ("-c", "--config", "--url", "--token-file", "--timeout", "--format", "--db")


def _verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items() if not name.startswith("_")}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(o for action in parser._actions for o in action.option_strings if o.startswith("--"))


def _positional_choices(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for action in parser._actions:
        if not action.option_strings and action.choices and not isinstance(action, argparse._SubParsersAction):
            out += [str(c) for c in action.choices]
    return out + list(_verbs(parser))


def _case_lines(verbs: dict[str, argparse.ArgumentParser], what: Any, indent: str) -> str:
    return "\n".join(f"{indent}{name}) words='{' '.join(what(p))}' ;;" for name, p in sorted(verbs.items()))


def bash_script(parser: argparse.ArgumentParser) -> str:
    verbs = _verbs(parser)
    return f"""# bash completion for agent; load with: source <(agent completion bash)
_agent_complete() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" verb="" i=1 words=""
    local -a pass=()
    while [ "$i" -lt "$COMP_CWORD" ]; do
        case "${{COMP_WORDS[i]}}" in
            -c|--config|--url|--token-file)
                pass+=("${{COMP_WORDS[i]}}" "${{COMP_WORDS[i+1]}}"); i=$((i + 2)); continue ;;
            {'|'.join(o for o in VALUE_OPTIONS if o not in ("-c", "--config", "--url", "--token-file"))})
                i=$((i + 2)); continue ;;
            -*) ;;
            *) [ -z "$verb" ] && verb="${{COMP_WORDS[i]}}" ;;
        esac
        i=$((i + 1))
    done
    if [ -z "$verb" ]; then
        case "$cur" in
            -*) words='{' '.join(_options(parser))}' ;;
            *) words='{' '.join(verbs)}' ;;
        esac
    elif [[ "$cur" == -* ]]; then
        case "$verb" in
{_case_lines(verbs, _options, " " * 12)}
        esac
    else
        case "$verb" in
            {'|'.join(NAME_VERBS)})
                words="$("${{COMP_WORDS[0]}}" __complete components "${{pass[@]}}" 2>/dev/null)" ;;
{_case_lines({k: v for k, v in verbs.items() if k not in NAME_VERBS}, _positional_choices, " " * 12)}
        esac
    fi
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F _agent_complete agent
"""


def zsh_script(parser: argparse.ArgumentParser) -> str:
    verbs = _verbs(parser)
    return f"""#compdef agent
# zsh completion for agent; load with: source <(agent completion zsh)  (after compinit)
_agent() {{
    local verb="" i=2
    local -a pass
    while (( i < CURRENT )); do
        case ${{words[i]}} in
            -c|--config|--url|--token-file) pass+=(${{words[i]}} ${{words[i+1]}}); (( i += 2 )); continue ;;
            {'|'.join(o for o in VALUE_OPTIONS if o not in ("-c", "--config", "--url", "--token-file"))})
                (( i += 2 )); continue ;;
            -*) ;;
            *) [[ -z $verb ]] && verb=${{words[i]}} ;;
        esac
        (( i++ ))
    done
    local cur=${{words[CURRENT]}} list=""
    if [[ -z $verb ]]; then
        if [[ $cur == -* ]]; then list='{' '.join(_options(parser))}'; else list='{' '.join(verbs)}'; fi
    elif [[ $cur == -* ]]; then
        case $verb in
{_case_lines(verbs, _options, " " * 12).replace("words=", "list=")}
        esac
    else
        case $verb in
            {'|'.join(NAME_VERBS)})
                list="$(${{words[1]}} __complete components $pass 2>/dev/null)" ;;
{_case_lines({k: v for k, v in verbs.items() if k not in NAME_VERBS}, _positional_choices, " " * 12)
 .replace("words=", "list=")}
        esac
    fi
    compadd -- ${{=list}}
}}
compdef _agent agent
"""


def component_names(args: argparse.Namespace) -> list[str]:
    """The running agent's component names, else the config's, else none; never raises."""
    from agent.cli.client import ControlError, call, load

    args.timeout = 1.0
    try:
        return [c["component"] for c in call(args, "GET", "/api/v1/status")["components"]]
    except (ControlError, KeyError, TypeError, ValueError):
        pass
    try:
        return list(load(args).components)
    except ControlError:
        return []


def cmd_complete(args: argparse.Namespace) -> int:
    """The hidden `agent __complete components`: one name a line."""
    if args.what == "components":
        for name in component_names(args):
            print(name)
    return 0


def cmd_completion(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    print(bash_script(parser) if args.shell == "bash" else zsh_script(parser), end="")
    return 0
