"""``dvt-runtime``: the device-side tools (torch-free).

    dvt-runtime predict --bundle B photos/ [--budget-ms 2]     # the cascade on image files
    dvt-runtime profile --bundle B [--device-name phone]      # per-exit latency on this device
    dvt-runtime calibrate --bundle B --data val.npz --budget-ms 5
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import textwrap
from collections.abc import Sequence
from typing import Optional

from dvt_runtime.console import join_args


class GivenNamespace(argparse.Namespace):
    """A namespace that also holds which options the command line set, in a slot: ``vars()`` (a run's recorded
    arguments, equality) does not see it."""

    __slots__ = ("given_flags",)


class Parser(argparse.ArgumentParser):
    """Every command's parser. An option is taken only as spelled in full: argparse's default took ``--target`` for
    ``bench --targets``, and a script's abbreviation would break, or change meaning, once a later version adds an option
    it also begins. An unknown option is told the closest one."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        self._given_words = list(sys.argv[1:] if args is None else args)  # for error(): a required option's typo
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # type: ignore[override]  # argparse's own: prints usage, exits 2
        words = message.split(": ", 1)[1].split() if message.startswith("unrecognized arguments: ") else (
            getattr(self, "_given_words", []) if message.startswith("the following arguments are required") else [])
        if hints := self._closest([w.split("=", 1)[0] for w in words if w.startswith("--")]):
            message += f" (did you mean: {', '.join(hints)}?)"
        super().error(message)

    def _closest(self, words: list[str]) -> list[str]:
        """``word -> option`` for each unknown option: the one it begins (what argparse's abbreviations took), else the
        closest spelling; a sub-command's options count."""
        import difflib

        parsers = [self, *(p for a in self._actions if isinstance(a, argparse._SubParsersAction) for p in a.choices.values())]
        known = sorted({o for p in parsers for a in p._actions for o in a.option_strings if o.startswith("--")})
        out = []
        for w in (w for w in words if w not in known):
            begun = [o for o in known if o.startswith(w)]
            m = begun if len(begun) == 1 else difflib.get_close_matches(w, known, n=1, cutoff=0.6)
            out += [f"{w} -> {m[0]}"] if m else []
        return out


class GivenParser(Parser):
    """An ArgumentParser whose namespace also says which options the command line set (``ns.given_flags``, a set of
    dests): e.g. ``train --resume`` takes the run's own value of every flag not given."""

    def parse_known_args(self, args=None, namespace=None):
        if namespace is not None:  # a sub-parse (or a caller's namespace): as argparse does
            return super().parse_known_args(args, namespace)
        unset = object()  # argparse fills only the attributes a namespace lacks: those left unset were not given
        probe = argparse.Namespace(**{a.dest: unset for a in self._actions if a.dest != argparse.SUPPRESS})
        given = {k for k, v in vars(super().parse_known_args(args, probe)[0]).items() if v is not unset}
        ns, rest = super().parse_known_args(args, GivenNamespace())
        ns.given_flags = given
        return ns, rest


class DocFormatter(argparse.RawDescriptionHelpFormatter):
    """A module docstring as a command's description: its lines kept, none past the terminal's width (they reached 147
    columns): prose rewrapped, a command's trailing ``# comment`` moved under it, a long command continued with ``\\``."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        para: list[str] = []  # prose lines, joined and rewrapped as one paragraph
        cmd: list[str] = []  # a command's lines (deeper-indented ones continue it), as written

        def flush() -> None:
            if para:
                item = re.match(r"([-*]|\d+\.) ", para[0])  # a list item hangs under its text
                out.extend(textwrap.wrap(" ".join(para), width, initial_indent=indent, break_on_hyphens=False,
                                         subsequent_indent=indent + " " * (item.end() if item else 0)))
                para.clear()
            if cmd:
                lead = indent + cmd[0][: len(cmd[0]) - len(cmd[0].lstrip())]
                if all(len(indent + c) <= width for c in cmd):
                    out.extend(indent + c for c in cmd)
                else:  # one command, continued with backslashes; its comment on lines of its own, under it
                    parts = [c.partition("  # ") for c in cmd]
                    out.extend(_command_lines(" ".join(c.strip() for c, _, _ in parts), lead, width))
                    note = " ".join(n.strip() for _, _, n in parts if n.strip())
                    out.extend(textwrap.wrap(note, width, initial_indent=lead + "  # ", subsequent_indent=lead + "  # "))
                cmd.clear()

        for line in text.splitlines():
            lead = line[: len(line) - len(line.lstrip())]
            if line.strip() and (not lead or para):  # prose, or an indented line continuing it (a list item's)
                if cmd or (not lead and re.match(r"([-*]|\d+\.) ", line)):  # a list item starts a paragraph of its own
                    flush()
                para.append(line.strip())
            elif line.strip():  # an indented line after a blank one or a command: a command, or a deeper line continuing one
                if not cmd or len(lead) <= len(cmd[0]) - len(cmd[0].lstrip()):
                    flush()
                cmd.append(line)
            else:
                flush()
                out.append("")
        flush()
        return "\n".join(out)


def _command_lines(command: str, lead: str, width: int) -> list[str]:
    parts = textwrap.wrap(command, max(20, width - 2), initial_indent=lead, subsequent_indent=lead + "    ", break_long_words=False,
                          break_on_hyphens=False)
    return [p + " \\" for p in parts[:-1]] + parts[-1:]


COMMANDS = {
    "predict": ("dvt_runtime.predict", "run the early-exit cascade on image files and folders: class, confidence, exit, ms"),
    "profile": ("dvt_runtime.profile", "profile each exit of a bundle on this device; import phone/Jetson measurements"),
    "calibrate": ("dvt_runtime.calibrate", "search thresholds for a measured latency budget and write calibration/<device>.json"),
    "info": ("dvt_runtime.info", "what a bundle is and how far its export checked it: each exit's size, int8 scheme, accuracy; its calibrations"),
    "vectors": ("dvt_runtime.vectors", "write test vectors (inputs, every exit's logits, answers) for a port of the cascade"),
}


def dispatch(commands: dict[str, tuple[str, str]], usage_text: str, argv: Optional[Sequence[str]], prog: str,
             elsewhere: Optional[dict[str, str]] = None, version: Optional[str] = None) -> int:
    """Run ``commands[argv[0]]``'s ``main`` with the rest of ``argv``; exit code 2 on a bad command (one of ``elsewhere``,
    command -> the program that has it, is named with that program). ``--version`` prints ``version``."""
    from dvt_runtime.console import run_cli

    return run_cli(lambda: _dispatch(commands, usage_text, argv, prog, elsewhere, version))


def _dispatch(commands: dict[str, tuple[str, str]], usage_text: str, argv: Optional[Sequence[str]], prog: str,
              elsewhere: Optional[dict[str, str]], version: Optional[str]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "help" and argv[1] in commands:  # `dvt-edge help train`: train's help, not the list
        argv = [argv[1], "--help"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage_text)
        return 0 if argv else 2
    if argv[0] in ("--version", "-V") and version:
        print(f"{prog} {version}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands and name in (elsewhere or {}):

        print(f"{prog}: {name} is a command of {elsewhere[name]}: {elsewhere[name]} {join_args([name, *rest])}", file=sys.stderr)
        return 2
    if name not in commands:
        import difflib

        close = difflib.get_close_matches(name, list(commands), n=1)
        print(f"{prog}: unknown command {name!r}; valid: {', '.join(commands)}" + (f" (did you mean {close[0]!r}?)" if close else ""),
              file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name][0])
    before, sys.argv = sys.argv, [f"{prog} {name}", *rest]  # the subcommand's usage lines name it (command_name)
    try:
        return int(module.main(rest) or 0)
    finally:  # called from Python: a later command run in this process is not named after this one
        sys.argv = before


def command_name(default: str) -> str:
    """A subcommand's name in its usage lines: as the dispatcher ran it (``dvt-runtime profile``), else ``default`` (run
    as ``python -m dvt_runtime.profile``, where ``sys.argv[0]`` is a file path)."""
    return sys.argv[0] if sys.argv and sys.argv[0].startswith(("dvt-runtime ", "dvt-edge ")) else default


def usage(prog: str, commands: dict[str, tuple[str, str]], footer: str = "") -> str:
    """The command list, wrapped to the terminal's width as argparse wraps a command's help."""
    import shutil

    columns = max(40, shutil.get_terminal_size().columns - 2)
    width = max(map(len, commands))
    lines = [f"usage: {prog} COMMAND [ARGS...]", f"  ({prog} COMMAND --help for its options; {prog} --version)", "", "commands:"]
    for name, (_, help_) in commands.items():
        lines += textwrap.wrap(help_, columns, initial_indent=f"  {name:<{width}}  ", subsequent_indent=" " * (width + 4))
    return "\n".join(lines + ([""] + textwrap.wrap(footer, columns) if footer else []))


def main(argv: Optional[Sequence[str]] = None) -> int:
    from dvt_runtime import __version__

    return dispatch(COMMANDS, usage("dvt-runtime", COMMANDS), argv, "dvt-runtime", version=__version__)


if __name__ == "__main__":
    sys.exit(main())
