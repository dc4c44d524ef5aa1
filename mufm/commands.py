"""The `python -m mufm.<family> COMMAND ...` front ends (codec, semantic, MuLan) share
one contract: `-h` prints the module's usage, an unknown command or a `CliError` prints
one line `<prog>: error: ...` on stderr and exits 2 (no traceback), and `train` is an
alias of `python -m mufm.train` (every family trains through the shared trainer)."""
from __future__ import annotations

import logging
import sys
from typing import Callable, Mapping, Sequence

Command = Callable[[list], int]


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def guarded(prog: str, fn: Command) -> Command:
    def run(argv) -> int:
        try:
            return fn(argv)
        except CliError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
    return run


def command_table(prog: str, commands: Sequence[tuple[str, Command]]) -> dict[str, Command]:
    return {name: guarded(prog, fn) for name, fn in commands}


def train_alias(prog: str) -> Command:
    def run(argv) -> int:
        from mufm.gin_flags import run_cli
        from mufm.train.loop import train

        return run_cli(train, argv, f"{prog} train")
    return run


def dispatch(prog: str, usage: str, commands: Callable[[], Mapping[str, Command]],
             argv: Sequence[str] | None = None, *, log_level: int = logging.WARNING) -> int:
    """Runs `argv[0]` of `commands()` (a callable, so the family's heavy imports happen
    only once a command is chosen) on the rest of argv; `train` is always there."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train_alias(prog)(rest)
    table = commands()
    if command not in table:
        print(f"{prog}: error: unknown command {command!r}; use one of train, "
              f"{', '.join(table)}", file=sys.stderr)
        return 2
    return table[command](rest)
