"""The ``arw-models`` command: ``serve`` runs the service; the other commands talk
to a running one over HTTP (``--server``, or ``ARW_SERVER``, or 127.0.0.1 on
``ARW_PORT``), with the admin token from ``ARW_ADMIN_TOKEN``.

Exit codes: 0 done; 1 the service said no (a problem document) or the download
failed, was canceled or paused elsewhere, or left a file of a many-file model
incomplete; 2 no service answers (and bad usage);
130 interrupted by Ctrl-C (a download is then paused, canceled or still running,
as chosen).

One concern: the parser (which the docs render) and one short function a command;
``download`` (which follows a job to its end), the HTTP client, the options' types
and the display live in modules of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO
from urllib.parse import quote

from .. import config
from . import options
from .display import amount, files_done, human_bytes, table
from .download import ACTIONS, INTERRUPTED, cmd_download, header, post_id
from .remote import GAP, Problem, Remote, Unreachable


def default_server() -> str:
    return f"http://127.0.0.1:{config.env_setting('ARW_PORT')}"


SERVER_HELP = "the service's base url (default: $ARW_SERVER, else http://127.0.0.1:$ARW_PORT)"
JSON_HELP = "JSON for scripts: one document, or one object per line for download and events"


def build_parser() -> argparse.ArgumentParser:
    # The global options are accepted after the command too (`arw-models list --json`):
    # each command's copy defaults to SUPPRESS, so it only overrides when given.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=argparse.SUPPRESS, help=SERVER_HELP)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=JSON_HELP)
    parser = argparse.ArgumentParser(
        prog="arw-models", description="Fetch, verify and keep local model files; talk to the service.",
        epilog="Exit codes: 0 done, 1 refused or failed, 2 no service answers, 130 interrupted by Ctrl-C.")
    parser.add_argument("--server", default=None, help=SERVER_HELP)
    parser.add_argument("--json", action="store_true", default=False, help=JSON_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    download = commands.add_parser("download", parents=[common], help="download a model and follow its progress")
    download.add_argument("id", help="the model's id: 1-128 of A-Z a-z 0-9 . _ -")
    download.add_argument("url", help="an http(s) url (one file); hf://OWNER/REPO/PATH[@REVISION] (one file of "
                          "a hub repository); hf://OWNER/REPO[@REVISION] (the whole repository), "
                          "ollama://NAME[:TAG] or oci://HOST/REPO[:TAG|@sha256:...] (a model of many files)")
    download.add_argument("--sha256", help="the expected SHA-256 (64 hex digits); checked before install")
    download.add_argument("--provider", help="a short label kept with the model (default: local)")
    download.add_argument("--rate-limit", type=options.rate, metavar="RATE",
                          help="the most bytes per second for this download: 1000, 500K, 1.5M, 2G "
                               "(K, M, G, T are powers of 1024, as curl's --limit-rate reads them)")
    download.add_argument("--header", "-H", action="append", default=[], metavar="'NAME: VALUE'",
                          type=header, help="a request header for a gated origin (repeatable); sent to the "
                          "url's own host only, never shown")
    many = download.add_argument_group("a model of many files")
    many.add_argument("--include", action="append", default=[], metavar="PATTERN",
                      help="fetch only the files whose path matches this glob (repeatable)")
    many.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                      help="leave out the files matching this glob (repeatable)")
    many.add_argument("--file", action="append", default=[], dest="files", metavar="PATH",
                      help="fetch this file of the repository (repeatable; an exact path)")
    many.add_argument("--revision", metavar="REV",
                      help="pin an hf:// reference to this branch, tag or commit (hf://OWNER/REPO@REV)")
    many.add_argument("--dry-run", action="store_true",
                      help="list the files, their sizes and which are in the store already; fetch nothing")
    many.add_argument("--force", action="store_true", default=None,
                      help="fetch the files again even when the store has them")
    many.add_argument("--hf-cache", action=argparse.BooleanOptionalAction, default=None,
                      help="also put the model into the Hugging Face cache (ARW_HF_CACHE), or not "
                           "(default: the service's setting)")
    download.add_argument("--on-interrupt", choices=ACTIONS,
                          help="what Ctrl-C does to the download, without asking (default: ask on a "
                               "terminal, else detach: it keeps running in the service)")
    for name, what in (("pause", "pause a download, keeping its partial file"),
                       ("resume", "continue a paused or partial download"),
                       ("cancel", "cancel a download and remove its partial file")):
        command = commands.add_parser(name, parents=[common], help=what)
        command.add_argument("id")
    commands.add_parser("list", parents=[common], help="installed models (and each file of a model of many)")
    commands.add_parser("jobs", parents=[common], help="queued, running, paused and partial downloads")
    rm = commands.add_parser("rm", parents=[common], help="remove an installed model and its file")
    rm.add_argument("id")
    events = commands.add_parser("events", parents=[common], help="print the service's events until Ctrl-C")
    events.add_argument("--prefix", action="append", default=[], metavar="P",
                        help="only kinds starting with P (repeatable), e.g. Models.")
    add_serve(commands)
    return parser


class Out:
    """Where a command writes: results on stdout, messages for people on stderr."""

    def __init__(self, json_mode: bool, stdout: TextIO, stderr: TextIO) -> None:
        self.json = json_mode
        self.stdout = stdout
        self.stderr = stderr

    def doc(self, value: Any) -> None:
        self.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
        self.stdout.flush()

    def text(self, line: str) -> None:
        self.stdout.write(line + "\n")
        self.stdout.flush()

    def note(self, line: str) -> None:
        self.stderr.write(line + "\n")
        self.stderr.flush()

    def problem(self, exc: Problem) -> None:
        if self.json:
            self.doc(exc.doc)
        self.note(f"arw-models: {exc.code}: {exc.detail}")

    def result(self, value: Any, line: str) -> None:
        """``value`` as JSON, or ``line`` for people."""
        if self.json:
            self.doc(value)
        else:
            self.text(line)


def run_client(args: argparse.Namespace, server: str, token: str | None,
               stdout: TextIO, stderr: TextIO) -> int:
    out = Out(args.json, stdout, stderr)
    remote = Remote(server, token)
    try:
        return COMMANDS[args.command](remote, args, out)
    except Unreachable as exc:
        out.note(f"arw-models: {exc}")
        return 2
    except Problem as exc:
        out.problem(exc)
        return 1
    except KeyboardInterrupt:
        # A Ctrl-C outside a download's own handling (a listing, a second Ctrl-C
        # while a pause is being sent): stop without a traceback.
        out.note("arw-models: interrupted")
        return INTERRUPTED
    finally:
        remote.close()


def cmd_pause(remote: Remote, args: argparse.Namespace, out: Out) -> int:
    answer = post_id(remote, "pause", args.id)
    out.result(answer, f"{args.id}: paused at {human_bytes(answer.get('downloaded') or 0)}")
    return 0


def cmd_resume(remote: Remote, args: argparse.Namespace, out: Out) -> int:
    answer = post_id(remote, "resume", args.id)
    # "resumed", or "queued" while every transfer slot is taken.
    out.result(answer, f"{args.id}: {answer.get('status', 'resumed')}")
    return 0


def cmd_cancel(remote: Remote, args: argparse.Namespace, out: Out) -> int:
    answer = post_id(remote, "cancel", args.id)
    out.result(answer, f"{args.id}: canceled")
    return 0


def cmd_list(remote: Remote, args: argparse.Namespace, out: Out) -> int:
    answer = remote.call("GET", "/models")[1]
    items = answer.get("items", [])
    rows = []
    for m in items:
        rows.append([m.get("id", ""), m.get("file", ""), human_bytes(m.get("bytes")),
                     str(m.get("sha256") or "-")[:12], m.get("status", ""), m.get("path") or "-"])
        # A model of many files: each file under it, indented, by its path in the model's folder.
        for f in m.get("files") or []:
            if isinstance(f, dict):
                rows.append(["", "  " + str(f.get("path", "?")), human_bytes(f.get("bytes")),
                             str(f.get("sha256") or f.get("git_oid") or "-")[:12], "", ""])
    out.result(answer, table(["ID", "FILE", "SIZE", "SHA256", "STATUS", "PATH"], rows, right=[2])
               if rows else "no models installed")
    return 0


def cmd_jobs(remote: Remote, args: argparse.Namespace, out: Out) -> int:
    answer = remote.call("GET", "/models/downloads")[1]
    items = answer.get("items", [])
    rows = [[j.get("id", ""), j.get("status", ""),
             f"{j['progress']}%" if isinstance(j.get("progress"), int) else "-",
             amount(j) + (f" ({files_done(j['files'])})" if isinstance(j.get("files"), list) and j["files"] else "")]
            for j in items]
    out.result(answer, table(["ID", "STATUS", "PROGRESS", "DOWNLOADED"], rows, right=[2])
               if rows else "no downloads")
    return 0


def cmd_rm(remote: Remote, args: argparse.Namespace, out: Out) -> int:
    answer = remote.call("DELETE", f"/models/{quote(args.id, safe='')}")[1]
    out.result(answer, f"{args.id}: removed")
    return 0


def cmd_events(remote: Remote, args: argparse.Namespace, out: Out) -> int:
    stream = remote.events(args.prefix)
    try:
        hello = stream.open()
        if out.json:
            out.doc({"event_id": None, "kind": "service.connected", "time": None, "payload": hello})
        else:
            out.note(f"listening to {remote.server}/events (version {hello.get('version', '?')}); Ctrl-C ends")
        for frame in stream.frames():
            if out.json:
                out.doc({"event_id": frame.id, "kind": frame.data.get("kind", frame.event),
                         "time": frame.data.get("time"), "payload": frame.payload})
            elif frame.event == GAP:
                out.text(f"-- {frame.payload.get('missed') or 'some'} events missed --")
            else:
                fields = " ".join(f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
                                  for k, v in frame.payload.items())
                out.text(f"{frame.data.get('time', '')} {frame.event} {fields}".strip())
    except KeyboardInterrupt:
        return 0
    finally:
        stream.close()
    return 0


COMMANDS = {
    "download": cmd_download,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "cancel": cmd_cancel,
    "list": cmd_list,
    "jobs": cmd_jobs,
    "rm": cmd_rm,
    "events": cmd_events,
}



def add_serve(commands: Any) -> None:
    serve = commands.add_parser("serve", help="serve the HTTP API (gunicorn, one process, many threads)")
    serve.add_argument("--bind", default=config.env_setting("ARW_BIND"),
                       help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=config.env_setting("ARW_PORT"))
    serve.add_argument("--state-dir", default=config.env_setting("ARW_STATE_DIR"))
    serve.add_argument("--threads", type=int, default=config.env_setting("ARW_THREADS") or config.SERVER_THREADS,
                       help="request threads; each open event stream holds one")
    serve.add_argument("--allow-remote", action="store_true",
                       help="listen on a non-loopback address without ARW_ADMIN_TOKEN")


def serve(args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "download" and args.revision is not None:
        try:
            args.url = options.pinned(args.url, args.revision)
        except ValueError as exc:
            parser.error(f"download: {exc}")
    try:
        server = args.server or config.env_setting("ARW_SERVER") or default_server()
        token = (config.env_setting("ARW_ADMIN_TOKEN") or "").strip() or None
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return run_client(args, server, token, sys.stdout, sys.stderr)
    except BrokenPipeError:
        # The reader left (`arw-models events | head`): stop quietly, as other
        # tools do, and keep the interpreter's last flush from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
