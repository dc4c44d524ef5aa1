"""python -m mufm.export --gin_file=configs/generate/cpu.gin [--gin_file=configs/export/cpu.gin]
    --out=DIR [--gin.ExportConfig.max_seconds=30 ...] [--name NAME] [--version N]

Exports the cascade a `GenerateConfig` names (the runs, their sampling settings) as one
SavedModel at DIR/NAME/<version>/ (mufm/export/saved_model.py), configured by
`ExportConfig` in gin (configs/export/*.gin) or the flags, which win. Prints the version
directory. Bad input (runs that do not fit together, a bad binding, a version that
exists): one line on stderr, exit status 2, before anything is written.

    python -m mufm.export.saved_model_cli show --all --dir DIR/NAME/1
    python -m mufm.serve --model_dir=DIR
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

PROG = "python -m mufm.export"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse(argv):
    p = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the model base directory: DIR/NAME/<version>/")
    p.add_argument("--name", help="the model name (ExportConfig.name)")
    p.add_argument("--version", type=int, help="the version (ExportConfig.version; 0: the next)")
    p.add_argument("--max_seconds", type=float, help="ExportConfig.max_seconds")
    p.add_argument("--bucket_seconds", type=float, help="ExportConfig.bucket_seconds")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from mufm import gin_flags
    from mufm.export.saved_model import ExportConfig, ExportError
    from mufm.generate.config import ROLES, GenerateConfig
    from mufm.sample.cascade import CascadeError

    files, bindings, rest = gin_flags.split_args(sys.argv[1:] if argv is None else argv)
    args = parse(rest)
    try:
        if not files:
            raise CascadeError("give --gin_file=configs/generate/<...>.gin (the runs to export)")
        gin_flags.parse(files, bindings, finalize=False)
        changes = {k: getattr(args, k) for k in ("name", "version", "max_seconds", "bucket_seconds")
                   if getattr(args, k) is not None}
        cfg = dataclasses.replace(ExportConfig(), **changes)
        generate = GenerateConfig()
        cascade = generate.load()
        from mufm.export.programs import Programs
        from mufm.export.saved_model import export

        runs = {role: getattr(generate, role) for role in (*ROLES, "semantic_tokenizer")}
        path = export(Programs(cascade), args.out, cfg, runs=runs,
                      log=lambda m: print(m, file=sys.stderr, flush=True))
    except (CascadeError, ExportError, gin_flags.GinConfigError, ValueError,
            FileNotFoundError) as e:
        one_line = " / ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"{PROG}: error: {one_line}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
