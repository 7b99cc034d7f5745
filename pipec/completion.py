"""Shell completion for `pipec`: ``eval "$(pipec completion bash)"`` (or ``zsh``).

The script is made from the command-line parser itself, so a new command or option
completes without anyone editing it: commands, each command's options, the values of
options with choices (``--format``, ``--backend``), and .pipe files and folders.
"""

from __future__ import annotations

import argparse


def _words(parser: argparse.ArgumentParser) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Command -> its option strings (and sub-actions), and option -> its choices."""
    commands: dict[str, list[str]] = {}
    choices: dict[str, list[str]] = {}
    top = [s for a in parser._actions for s in a.option_strings]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words = []
                for a in sub._actions:
                    words += a.option_strings
                    if isinstance(a, argparse._SubParsersAction):
                        words += list(a.choices)
                    if a.choices and a.option_strings and not isinstance(a, argparse._SubParsersAction):
                        for s in a.option_strings:
                            choices[s] = [str(c) for c in a.choices]
                commands[name] = words
    commands[""] = sorted(commands) + top
    return commands, choices


def script(shell: str, parser: argparse.ArgumentParser, backends: list[str]) -> str:
    """The completion script for ``shell`` (``bash`` or ``zsh``)."""
    commands, choices = _words(parser)
    for option in ("--backend", "-b"):
        choices[option] = backends
    cases = "\n".join(f'        "{name}") words="{" ".join(words)}" ;;' for name, words in commands.items() if name)
    values = "\n".join(f'        "{opt}") COMPREPLY=($(compgen -W "{" ".join(vals)}" -- "$cur")); return ;;'
                       for opt, vals in sorted(choices.items()))
    body = f"""_pipec() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" cmd="" words="" w
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$w" in -*) ;; *) cmd="$w"; break ;; esac
    done
    case "$prev" in
{values}
    esac
    case "$cmd" in
        "") COMPREPLY=($(compgen -W "{" ".join(commands[""])}" -- "$cur")); return ;;
{cases}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$words" -- "$cur" | grep -v '^-') $(compgen -d -- "$cur") \\
                   $(compgen -f -X '!*.pipe' -- "$cur"))
    fi
}}
complete -o filenames -F _pipec pipec
"""
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + body
    return body
