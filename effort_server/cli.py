"""The `effort` console script: one entry point that dispatches to the two halves.

`effort serve` and `effort bench` are the server's (`effort_server.server.cli`); `train`, `merge`,
`profile`, `eval`, `router`, `report` and `data` are training's (`effort_server.training.cli`). Only the half
that owns the command is imported, so serving never loads training code. Each half exposes
`add_commands(subparsers, names)`. Every user error ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys

# command → (the half that owns it, its one-line help)
COMMANDS = {
    "serve": ("server", "start the OpenAI-compatible effort-control server"),
    "bench": ("server", "benchmarks that print a table, with the peer measured in the same run"),
    "train": ("training", "train the base model or an adapter"),
    "merge": ("training", "update-selective merge of a trained adapter into a new adapter"),
    "profile": ("training", "onboard a model: measure its full-effort reasoning on your prompts, write its manifest"),
    "eval": ("training", "measure accuracy vs reasoning tokens for adapters x efforts/budgets"),
    "router": ("training", "the difficulty router for effort 'auto': fit and calibrate"),
    "report": ("training", "measured reports"),
    "data": ("training", "export a task's problems as JSONL"),
}


# `effort CMD --help` lists a config's `HELP_MAIN` fields (a class attribute; all fields when it has
# none); `--help-all` lists every flag. Set by main() before the parser is built.
FULL_HELP = False


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def add_dataclass_args(parser: argparse.ArgumentParser, cls, title: str, suppress: bool = False) -> None:
    """Expose a config dataclass's fields as --flags, help texts from field metadata.
    `suppress`: leave unset flags out of the namespace (so a config file can fill them)."""
    group = parser.add_argument_group(title)
    parser.usage = parser.usage or "%(prog)s [options]"
    main = getattr(cls, "HELP_MAIN", None)
    hidden = 0
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "").replace("%", "%%")
        default = f.default if f.default is not dataclasses.MISSING else None
        argdefault = argparse.SUPPRESS if suppress else default
        if f.type in ("bool", bool):
            kw = {"action": "store_true", "help": help_}
        else:
            typ = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            shown = help_ if "(default:" in help_ else f"{help_} (default: {default!r})"
            kw = {"type": typ, "help": shown}
        if main is not None and f.name not in main and not FULL_HELP:
            hidden += 1
            kw["help"] = argparse.SUPPRESS
        group.add_argument(flag, default=argdefault, **kw)
    if hidden:
        more = f"{hidden} more {title} options: --help-all."
        parser.epilog = f"{parser.epilog} {more}" if parser.epilog else more


def dataclass_from_args(cls, args: argparse.Namespace):
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**kw)


def config_command(module: str, config: str, run: str):
    """A command that builds `module`'s `config` dataclass from the flags and calls `run` with it
    (both imported when the command runs)."""

    def command(args) -> int:
        mod = importlib.import_module(module)
        getattr(mod, run)(dataclass_from_args(getattr(mod, config), args))
        return 0

    return command


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the commands of the half named by `argv`'s first word in full (both halves
    when `argv` is None), the others as one-line entries."""
    p = argparse.ArgumentParser(
        prog="effort",
        description="Control how hard a reasoning model thinks.",
        epilog="`effort CMD --help` shows a command's main options, `effort CMD --help-all` all of them.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    words = [a for a in argv if not a.startswith("-")] if argv is not None else []
    wanted = {"server", "training"} if argv is None else {COMMANDS[w][0] for w in words[:1] if w in COMMANDS}
    for half in ("server", "training"):
        names = [c for c, (h, _) in COMMANDS.items() if h == half]
        if half in wanted:
            importlib.import_module(f"effort_server.{half}.cli").add_commands(sub, names)
        else:
            for c in names:
                sub.add_parser(c, help=COMMANDS[c][1])
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    global FULL_HELP
    FULL_HELP = "--help-all" in argv
    argv = ["--help" if a == "--help-all" else a for a in argv]
    args = build_parser(argv).parse_args(argv)
    try:
        return args.func(args)
    except (CliError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"effort: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("effort: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # `python -m effort_server.cli`: run the module the halves import, not a copy
    from effort_server.cli import main as _main

    sys.exit(_main())
