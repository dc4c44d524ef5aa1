"""python -m mufm.serve --model_dir=DIR [--model_name=NAME ...] [--port=8501] [--host=127.0.0.1]
    [--enable_batching=true] [--max_batch_size=8] [--batch_timeout_micros=20000]
    [--max_enqueued_batches=4] [--num_batch_threads=1] [--allowed_batch_sizes=1,2,4,8] [--max_body_bytes=16777216]
    [--max_seconds=0] [--max_connections=64] [--all_versions] [--no_warmup] [--verbose]

Serves every model under DIR (the `--out` of `python -m mufm.export`: DIR/NAME/<version>/)
over TF Serving's REST API (mufm/serve/server.py): the newest version of each, or all of
them with --all_versions; warm-up requests replayed before the port opens. SIGTERM or
Ctrl-C stops accepting, finishes the requests in flight and exits 0. Bad flags or no
model: one line on stderr, exit status 2.

    curl -s localhost:8501/v1/models/mufm
    curl -s -X POST localhost:8501/v1/models/mufm:predict \\
        -d '{"signature_name": "generate_wav", "instances": [{"text": "a calm piano piece", "seconds": 10, "seed": 0}]}'
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

PROG = "python -m mufm.serve"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def parse(argv):
    p = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True)
    p.add_argument("--model_name", action="append", default=[])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501, help="TF Serving's REST port (0: any)")
    p.add_argument("--all_versions", action="store_true")
    p.add_argument("--enable_batching", type=_bool, default=True)
    p.add_argument("--max_batch_size", type=int, default=8)
    p.add_argument("--batch_timeout_micros", type=int, default=20_000)
    p.add_argument("--max_enqueued_batches", type=int, default=4)
    p.add_argument("--num_batch_threads", type=int, default=1)
    p.add_argument("--allowed_batch_sizes", default="1,2,4,8",
                   help="comma-separated; the last must be --max_batch_size ('': no padding)")
    p.add_argument("--max_body_bytes", type=int, default=16 << 20)
    p.add_argument("--max_seconds", type=float, default=0.0)
    p.add_argument("--max_connections", type=int, default=64)
    p.add_argument("--request_timeout_s", type=float, default=600.0)
    p.add_argument("--no_warmup", action="store_true")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def _sizes(text: str) -> tuple:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--allowed_batch_sizes={text!r}: comma-separated integers") from None


def config(args):
    from mufm.serve.batching import BatchingConfig
    from mufm.serve.server import ServeConfig

    return ServeConfig(
        model_dir=args.model_dir, model_names=tuple(args.model_name), host=args.host,
        port=args.port, all_versions=args.all_versions, enable_batching=args.enable_batching,
        batching=BatchingConfig(args.max_batch_size, args.batch_timeout_micros,
                                args.max_enqueued_batches, args.num_batch_threads,
                                _sizes(args.allowed_batch_sizes)),
        max_body_bytes=args.max_body_bytes, max_seconds=args.max_seconds,
        max_connections=args.max_connections, request_timeout_s=args.request_timeout_s,
        warmup=not args.no_warmup, verbose=args.verbose)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)
    try:
        cfg = config(args)
        from mufm.serve.server import ModelServer

        server = ModelServer(cfg, log=log)
        server.load()
        server.start()
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    done = threading.Event()

    def on_signal(signum, _frame):
        log(f"[serve] {signal.Signals(signum).name}: finishing the requests in flight")
        threading.Thread(target=lambda: (server.stop(), done.set()), daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"serving on http://{server.httpd.server_address[0]}:{server.httpd.server_address[1]}",
          flush=True)
    while not done.wait(0.5):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
