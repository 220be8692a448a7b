"""``arw-models download``: start a download (or ask what one would fetch, with
``--dry-run``) and follow it to its end, and what a Ctrl-C does meanwhile.

A download of many files (``hf://OWNER/REPO``, ``ollama://``, ``oci://``) is one
job whose events carry ``files``; it succeeds only when every file ends
``complete`` or ``stored``, whatever the job's own last status says, so a script
never takes a repository with a file missing for a whole one.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .display import FINAL, Progress, describe, dry_run, human_bytes, incomplete
from .remote import GAP, EventStream, Frame, Problem, Remote

if TYPE_CHECKING:
    from .cli import Out

INTERRUPTED = 130
ENDS = FINAL
ACTIONS = ("pause", "cancel", "detach")
# Body fields taken from the options as they are (None: not sent, the service's default).
PLAIN_FIELDS = ("sha256", "provider", "rate_limit", "include", "exclude", "files", "force", "hf_cache")


def post_id(remote: Remote, action: str, model_id: str) -> Any:
    return remote.call("POST", f"/models/download/{action}", {"id": model_id})[1]


def header(text: str) -> tuple[str, str]:
    """``--header 'Name: value'``, as curl writes it."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip() or name != name.strip():
        # The value is not quoted back: it is often a credential.
        raise argparse.ArgumentTypeError("a header is written 'NAME: VALUE'")
    return name, value.strip()


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST's body: what was given, and nothing else (the service's defaults stand)."""
    body: dict[str, Any] = {"id": args.id, "url": args.url}
    for key in PLAIN_FIELDS:
        value = getattr(args, key, None)
        if value is not None and value != []:
            body[key] = value
    if args.header:
        body["headers"] = dict(args.header)
    return body


def cmd_download(remote: Remote, args: argparse.Namespace, out: Out) -> int:
    body = request_body(args)
    if args.dry_run:
        return dry(remote, body, out)
    # Subscribe before the POST: every event of the job comes after this point, and
    # a reconnect asks for what came after the last one seen.
    stream = remote.events(["Models."])
    posted = False
    try:
        stream.open()
        posted = True
        status, answer = remote.call("POST", "/models/download", body)
        if status == 200:
            out.result(answer, f"{args.id}: already installed as {answer.get('file', '?')} "
                               f"({human_bytes(answer.get('bytes'))}); nothing to transfer")
            return 0
        if out.json:
            out.doc(answer)
        return follow(remote, stream, args.id, out)
    except KeyboardInterrupt:
        stream.close()
        if not posted:
            out.note("arw-models: interrupted; no download was started")
            return INTERRUPTED
        return interrupted(remote, args, out)
    finally:
        stream.close()


def dry(remote: Remote, body: dict[str, Any], out: Out) -> int:
    """``--dry-run``: the files a download would fetch, and which the store has."""
    status, answer = remote.call("POST", "/models/download", {**body, "dry_run": True})
    if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("files"), list):
        # A service that does not know dry_run reads the POST as a download.
        out.note(f"arw-models: {body['id']}: the service did not answer the dry run (HTTP {status}, "
                 f"status {answer.get('status') if isinstance(answer, dict) else '?'}); it may not know "
                 f"dry_run and have started the download: `arw-models jobs` shows it")
        return 1
    out.result(answer, dry_run(answer))
    return 0


def follow(remote: Remote, stream: EventStream, model_id: str, out: Out) -> int:
    """Shows the job's events until it ends; its exit code."""
    progress = None if out.json else Progress(out.stdout, model_id, terminal=out.stdout.isatty())
    files: dict[str, dict[str, Any]] = {}  # each file as last seen, for the verdict at the end
    try:
        for frame in stream.frames():
            payload = job_payload(remote, frame, model_id)
            if payload is None:
                continue
            seen_files(files, payload)
            if progress is None:
                out.doc(payload)
            else:
                progress.update(payload)
            status = payload.get("status")
            if status in ENDS:
                if progress is not None:
                    progress.end()
                if files and not isinstance(payload.get("files"), list):
                    seen_files(files, final_snapshot(remote, model_id))
                return ended(payload, model_id, out, list(files.values()))
    except BaseException:
        if progress is not None:
            progress.end()
        raise
    return 1  # frames() ends only when the stream is closed


def seen_files(files: dict[str, dict[str, Any]], payload: dict[str, Any] | None) -> None:
    for item in (payload or {}).get("files") or []:
        if isinstance(item, dict) and isinstance(item.get("path"), str):
            files[item["path"]] = {**files.get(item["path"], {}), **item}


def final_snapshot(remote: Remote, model_id: str) -> dict[str, Any] | None:
    """The job's snapshot, for its files' last states when its last event left them out."""
    try:
        snapshot = remote.call("GET", f"/models/downloads/{quote(model_id, safe='')}")[1]
    except Problem:
        return None
    return snapshot if isinstance(snapshot, dict) else None


def job_payload(remote: Remote, frame: Frame, model_id: str) -> dict[str, Any] | None:
    """The job's state in ``frame``, if it is about the job. After a gap (events
    the service no longer had for us) the job's own snapshot stands in, so an end
    among the lost events is still seen."""
    if frame.event == GAP:
        try:
            snapshot = remote.call("GET", f"/models/downloads/{quote(model_id, safe='')}")[1]
        except Problem:
            return None
        return snapshot if snapshot.get("status") in ENDS else None
    if frame.event != "Models.DownloadProgress" or frame.payload.get("id") != model_id:
        return None
    return frame.payload


def ended(payload: dict[str, Any], model_id: str, out: Out, files: list[dict[str, Any]] | None = None) -> int:
    status = payload.get("status")
    left = incomplete(files or [])
    if status == "complete" and not left:
        if not out.json:
            out.text(f"{model_id}: {describe(payload)}")
        return 0
    if status == "complete":
        out.note(f"arw-models: {model_id}: ended with {len(left)} of {len(files or [])} files incomplete: "
                 + ", ".join(left))
        return 1
    if status == "error":
        seen = (f" (expected {payload['expected']}, got {payload['actual']})"
                if payload.get("expected") and payload.get("actual") else "")
        out.note(f"arw-models: {model_id}: {payload.get('code', 'error')}: {payload.get('error', '')}{seen}")
    elif status == "canceled":
        out.note(f"arw-models: {model_id}: canceled")
    else:
        out.note(f"arw-models: {model_id}: paused; `arw-models resume {model_id}` continues it")
    if left:
        out.note(f"arw-models: {model_id}: {len(left)} of {len(files or [])} files incomplete: " + ", ".join(left))
    return 1


def ask(out: Out) -> str:
    """What to do with an interrupted download, asked on the terminal."""
    for _ in range(3):
        out.stderr.write("Interrupted. [p]ause, [c]ancel, or [l]eave it running in the service? [l] ")
        out.stderr.flush()
        try:
            answer = input().strip().lower()
        except (EOFError, KeyboardInterrupt):
            return "detach"
        if answer in ("", "l", "leave", "d", "detach"):
            return "detach"
        if answer in ("p", "pause"):
            return "pause"
        if answer in ("c", "cancel"):
            return "cancel"
    return "detach"


def interrupted(remote: Remote, args: argparse.Namespace, out: Out) -> int:
    action = args.on_interrupt or (ask(out) if sys.stdin is not None and sys.stdin.isatty() else "detach")
    if action == "detach":
        out.result({"id": args.id, "status": "detached"},
                   f"{args.id}: still downloading in the service; `arw-models jobs` shows it")
        return INTERRUPTED
    try:
        answer = post_id(remote, action, args.id)
    except Problem as exc:
        # It may have ended between the Ctrl-C and this request.
        out.problem(exc)
        return 1
    if action == "pause":
        out.result(answer, f"{args.id}: paused at {human_bytes(answer.get('downloaded') or 0)}; "
                           f"`arw-models resume {args.id}` continues it")
    else:
        out.result(answer, f"{args.id}: canceled")
    return INTERRUPTED
