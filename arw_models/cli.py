"""The ``arw-models`` command."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="arw-models", description="Local model download service.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the HTTP API (gunicorn, one process, many threads)")
    serve.add_argument("--bind", default=os.environ.get("ARW_BIND", "127.0.0.1"),
                       help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=int(os.environ.get("ARW_PORT", "8090")))
    serve.add_argument("--state-dir", default=os.environ.get("ARW_STATE_DIR", "./state"))
    serve.add_argument("--threads", type=int, default=int(os.environ.get("ARW_THREADS", "32")),
                       help="request threads; each open event stream holds one")
    serve.add_argument("--allow-remote", action="store_true",
                       help="listen on a non-loopback address without ARW_ADMIN_TOKEN")
    args = parser.parse_args(argv)

    os.environ["ARW_STATE_DIR"] = args.state_dir
    os.environ["ARW_BIND"] = args.bind
    os.environ["ARW_PORT"] = str(args.port)
    os.environ["ARW_THREADS"] = str(args.threads)
    if args.allow_remote:
        os.environ["ARW_ALLOW_REMOTE"] = "1"
    from gunicorn.app.wsgiapp import run

    sys.argv = ["arw-models", "-c", "python:arw_models.gunicorn_conf", "arw_models:create_app()"]
    run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
