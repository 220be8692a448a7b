"""Settings: every ``ARW_*`` key with its default, and reading them from the
environment.

The keys double as ``app.config`` keys. Only :func:`arw_models.create_app` reads
the environment; a host app that embeds the extension sets ``app.config``
itself, and :meth:`ArwModels.init_app` fills in the defaults with ``setdefault``.

It is longer than most modules on purpose: it is the one table of settings (each
key, its default, how it is read, what it does), which the app, the command line,
the gunicorn configuration and the documented table all take their keys from;
split, it would be several half-tables.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .redact import redact_url

MiB = 1024 * 1024


# What ARW_EVENTS_MAX_STREAMS is when neither it nor the thread count is known:
# small enough to leave threads over under most servers' defaults.
UNKNOWN_THREADS_STREAM_CAP = 8


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


DIRECT_IO_MODES = ("auto", "on", "off")


def _direct_io(text: str) -> str:
    value = text.strip().lower()
    if value not in DIRECT_IO_MODES:
        raise ValueError(f"not one of {', '.join(DIRECT_IO_MODES)}: {text!r}")
    return value


def _auto_or_rate(text: str) -> float | None:
    value = text.strip().lower()
    if value == "auto":
        return None
    rate = float(value)
    if not rate >= 0 or rate == float("inf"):
        raise ValueError(f"not auto nor a number of MiB/s of 0 or more: {text!r}")
    return rate


def _stream_keep(value: Any) -> float | None:
    """ARW_DL_STREAM_KEEP_MB_S (parsed already, or given as a number) in bytes/s."""
    rate = None if value is None else _auto_or_rate(str(value))
    return None if rate is None else rate * MiB


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(text: str) -> Any:
        return None if text.strip() == "" else parse(text)

    return parse_optional


ORIGIN_RE = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")


def parse_origins(value: Any) -> list[str]:
    """``ARW_CORS_ORIGINS`` as a list: a comma-separated string (or a list, in
    ``app.config``) of origins such as ``https://ops.example.org:8443``, or ``*``
    for any. Raises ``ValueError`` for anything else, so that a typo stops the
    app at start rather than silently keeping a page out."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    origins = []
    for item in items:
        origin = str(item).strip().rstrip("/")
        if not origin:
            continue
        if origin != "*" and not ORIGIN_RE.fullmatch(origin):
            raise ValueError(f"ARW_CORS_ORIGINS: {origin!r} is not an origin (scheme://host[:port]) or '*'")
        origins.append(origin)
    return origins


def _endpoint(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("must be an http or https url, such as https://huggingface.co")
    return text.strip().rstrip("/")


def _items(value: Any) -> list[str]:
    """A comma-separated string (or a list, in ``app.config``) as its blank-free items."""
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        items = [v.strip() for v in str(value or "").split(",")]
    return [item for item in items if item]


def parse_mirrors(value: Any) -> tuple[str, ...]:
    """``ARW_DL_MIRRORS``: url templates, each an http(s) url once ``{host}``,
    ``{path}``, ``{sha256}`` and ``{size}`` are filled in. A template names the file
    by its url (``{path}``) or by its digest (``{sha256}``): one with neither would
    fetch every file from one url."""
    templates = []
    for item in _items(value):
        sample = (item.replace("{host}", "example.org").replace("{path}", "/f")
                  .replace("{sha256}", "0" * 64).replace("{size}", "1"))
        parts = urlsplit(sample)
        if parts.scheme not in ("http", "https") or not parts.hostname or "{" in sample or "}" in sample:
            raise ValueError(f"{item!r} is not an http(s) url template with {{host}} and {{path}}, or {{sha256}}")
        if "{path}" not in item and "{sha256}" not in item:
            raise ValueError(f"{item!r} has neither {{path}} nor {{sha256}}: every file would be fetched from one url")
        templates.append(item)
    return tuple(templates)


def parse_peers(value: Any) -> tuple[str, ...]:
    """``ARW_DL_PEERS``: the base urls of other services (``http(s)://host[:port]``,
    with the path prefix they are mounted under, if any), without a trailing slash."""
    peers = []
    for item in _items(value):
        parts = urlsplit(item)
        if (parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment
                or "@" in parts.netloc):
            raise ValueError(f"{item!r} is not a service's base url, such as http://10.0.0.5:8090 or "
                             "https://host/arw (no userinfo, query or fragment: the token is ARW_PEERS_TOKEN)")
        peers.append(item.rstrip("/"))
    return tuple(peers)


REGISTRY_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?")


def parse_insecure(value: Any) -> tuple[str, ...]:
    """``ARW_REGISTRY_INSECURE``: registries (``HOST:PORT``, or ``HOST`` for one on
    port 80, as a reference names it) asked over plain http, like Docker's
    insecure registries; comma-separated, or a list in ``app.config``. Lowercased."""
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        items = [v.strip() for v in str(value or "").split(",")]
    hosts = []
    for item in items:
        if not item:
            continue
        match = REGISTRY_HOST_RE.fullmatch(item)
        if not match or (match.group(1) is not None and not 0 < int(match.group(1)) <= 65535):
            raise ValueError(f"{item!r} is not a registry HOST:PORT (no scheme, no path), such as 127.0.0.1:5000")
        hosts.append(item.lower())
    return tuple(hosts)


def _log_format(value: Any) -> str | None:
    """None (logging is left to the host), "text" or "json"; blank is unset."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    text = str(value).strip().lower()
    if text not in LOG_FORMATS:
        raise ValueError(f"ARW_LOG_FORMAT must be text or json, not {value!r}")
    return text


def parse_mode(value: Any) -> int:
    """``ARW_MODELS_MODE``: a file mode in octal (``0644``, ``644``, ``0o644``), or an
    int in ``app.config``. Only permission bits; the owner must be able to read and
    write (the service hashes and replaces its models), and no one else to write
    (the service vouches for the bytes by their SHA-256)."""
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        text = str(value).strip().lower().removeprefix("0o")
        if not re.fullmatch(r"[0-7]{1,4}", text):
            raise ValueError(f"ARW_MODELS_MODE must be an octal file mode such as 0644, not {value!r}")
        mode = int(text, 8)
    if not 0 <= mode <= 0o777 or mode & 0o600 != 0o600 or mode & 0o022:
        raise ValueError(f"ARW_MODELS_MODE must be a file mode that lets the owner read and write and no one "
                         f"else write (0600 to 0755, such as 0644 or 0640), not {value!r}")
    return mode


# Request threads of the bundled gunicorn configuration when ARW_THREADS is unset:
# 102 event streams (100 browser tabs, say) and a reserve of 34 for other requests.
# gthread starts its threads as they are needed, so an idle worker pays nothing for
# them; an open stream costs about 37 KiB of RSS (measured: see the README).
SERVER_THREADS = 136


@dataclass(frozen=True)
class Setting:
    """One ``ARW_*`` key: its default, how its environment text is read, and what it
    does. The app, the command line, the gunicorn configuration and the README's
    table (a test compares them) all take their keys from :data:`SETTINGS`."""

    key: str
    default: Any
    parse: Callable[[str], Any]
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting("ARW_STATE_DIR", "./state", str,
            'Where models, partial downloads, models.json and the lock live.'),
    Setting("ARW_BIND", "127.0.0.1", str,
            'Address and port for `make run` and the `arw-models serve` command.'),
    Setting("ARW_ALLOW_REMOTE", False, _bool,
            'Serve a non-loopback ARW_BIND without ARW_ADMIN_TOKEN (the bundled gunicorn configuration refuses it otherwise).'),
    Setting("ARW_PORT", 8090, int,
            'Address and port for `make run` and the `arw-models serve` command.'),
    Setting("ARW_SERVER", None, _optional(str),
            "Where the command line finds the service (its --server); None: 127.0.0.1 on ARW_PORT."),
    Setting("ARW_ADMIN_TOKEN", None, _optional(str),
            'Unset: no token needed. Set: POST, DELETE and /events need it.'),
    Setting("ARW_CORS_ORIGINS", None, _optional(parse_origins),
            'Origins (comma-separated) whose pages may call the API from a browser; None: none.'),
    Setting("ARW_MODELS_MAX_CONC", 2, int,
            'How many transfers run at once; more wait as `queued`.'),
    Setting("ARW_MODELS_MAX_MB", None, _optional(float),
            'Largest model accepted, in MiB (None: no cap).'),
    Setting("ARW_MODELS_MODE", "0644", parse_mode,
            'Mode (octal) of installed model files, readable by runtimes that run as another user; their folders get the matching search bits (0644: 0755). Partial files, sidecars, models.json and the lock stay 0600.'),
    Setting("ARW_MODELS_DISK_RESERVE_MB", 256, float,
            "Free space, in MiB, that downloads must leave on the state directory's disk."),
    Setting("ARW_DL_CONNECT_TIMEOUT_SECS", 10.0, float,
            'Seconds to wait for a TCP connection to the origin.'),
    Setting("ARW_DL_IDLE_TIMEOUT_SECS", 30.0, float,
            'Seconds without a single byte from the origin before the read is a stall.'),
    Setting("ARW_DL_RETRIES", 8, int,
            'Retries of transient failures in a row (reset while bytes keep arriving).'),
    Setting("ARW_DL_RETRY_BACKOFF_MS", 500, float,
            'First retry delay in ms; doubles per retry, with jitter.'),
    Setting("ARW_DL_RETRY_BACKOFF_MAX_MS", 30000, float,
            'Ceiling of one retry delay (and of an honoured Retry-After), in ms.'),
    Setting("ARW_DL_CHUNK_BYTES", 1 * MiB, int,
            'Bytes asked of the socket per read in the transfer loop.'),
    Setting("ARW_DL_FSYNC_BYTES", 64 * MiB, int,
            'Bytes written between two fsyncs of a `.part` (bounds what a crash can lose).'),
    Setting("ARW_DL_CHECKPOINT_SECS", 1.0, float,
            'Seconds between two fsyncs of a `.part` that is being written, however few bytes came (with ARW_DL_FSYNC_BYTES, bounds what a kill -9 can lose).'),
    Setting("ARW_DL_DIRECT_IO", "auto", _direct_io,
            "Write a single stream's `.part` past the page cache (O_DIRECT): `auto` where the file system allows it, `on` (a download fails if it refuses), `off`."),
    Setting("ARW_DL_PROGRESS_INTERVAL_MS", 250, float,
            'Least time between two progress events of one job, in ms.'),
    Setting("ARW_DL_RESUME_ON_START", True, _bool,
            'Resume the incomplete downloads found in the state directory at start.'),
    Setting("ARW_DL_STALE_PART_HOURS", 168.0, float,
            '`.part` files with no job, untouched for this many hours, are removed at start.'),
    Setting("ARW_EVENTS_REPLAY", 4096, int,
            'How many recent events the stream keeps for replay.'),
    Setting("ARW_EVENTS_QUEUE", 1024, int,
            'How many events may wait for one slow subscriber before it gets bus.gap.'),
    Setting("ARW_EVENTS_KEEPALIVE_SECS", 15.0, float,
            'Seconds between keep-alive comments on an idle event stream.'),
    Setting("ARW_EVENTS_RETRY_MS", 3000, int,
            'Reconnection delay suggested to SSE clients (the `retry:` field), in ms.'),
    Setting("ARW_DL_RATE_LIMIT", None, _optional(int),
            'Bytes per second for all downloads together (None: no limit); changeable at run time.'),
    Setting("ARW_DL_SEGMENTS", 8, int,
            'Parallel connections (ranges) for one download, 1 to 16; 1: one stream.'),
    Setting("ARW_DL_FILES_AT_ONCE", 4, int,
            'Files of one many-file model (a hub repository, a registry model) fetched at once, 1 to 16; each may still be split into ranges.'),
    Setting("ARW_DL_SEGMENT_MIN_MB", 64.0, float,
            'Files smaller than this (MiB) are fetched as one stream.'),
    Setting("ARW_DL_STREAM_KEEP_MB_S", "auto", _auto_or_rate,
            "A file large enough for ranges stays one stream if that stream brings at least this many MiB/s from its 8th to its 40th MiB (one stream costs less CPU per byte, so where the origin is that fast it is the faster way), and is split within milliseconds if it averages less than 200 MiB/s (or this, if lower) from its first read; `auto`: 0.45 of one core's SHA-256 speed here; 0: ranges at once."),
    Setting("ARW_JOBS_KEEP", 1000, int,
            'How many finished jobs stay in memory for GET /models/downloads/<id>; oldest go first.'),
    Setting("ARW_LOCK_WAIT_SECS", 5.0, float,
            "Seconds a starting server waits for the state directory's lock (held by a process that is still exiting, say); a sibling worker is refused at once."),
    Setting("ARW_EVENTS_MAX_STREAMS", None, _optional(int),
            'Event streams open at once (each holds a request thread); more get 503. None: derived from ARW_THREADS (see events_stream_cap), 8 if that is unknown.'),
    Setting("ARW_THREADS", None, _optional(int),
            'Request threads of the server. Under gunicorn the service reads the real number, which wins; None: unknown (a host app under some other server).'),
    Setting("ARW_BODY_TIMEOUT_SECS", 10.0, float,
            'Seconds a request body may take to arrive before it is answered with 408.'),
    Setting("ARW_HF_ENDPOINT", "https://huggingface.co", _endpoint,
            'The Hugging Face hub that `hf://` references resolve against (a mirror of it, say); unset: HF_ENDPOINT, else the public hub.'),
    Setting("ARW_HF_TOKEN", None, _optional(str),
            'Token sent (as `Authorization: Bearer`) with `hf://` downloads, to the hub host alone; unset: HF_TOKEN. Never shown.'),
    Setting("ARW_HF_CACHE", None, _optional(str),
            "A Hugging Face cache folder (as HF_HUB_CACHE names one) into which installed `hf://` models are also put, hard-linked, so that tools built on huggingface_hub open them offline; empty: off."),
    Setting("ARW_DL_MIRRORS", None, _optional(parse_mirrors),
            'Comma-separated url templates tried in order before the origin, with `{host}` (the url\'s host and port) and `{path}` (its path and query), e.g. `http://cache.lan:8080/{host}{path}`; or with `{sha256}` (and `{size}`), e.g. `https://bucket.s3.example/sha256/{sha256}`: such a template is tried only once the digest is known (the request\'s `sha256`, a listing\'s, or one the origin publishes on its first answer).'),
    Setting("ARW_DL_PEERS", None, _optional(parse_peers),
            'Comma-separated base urls of other arw-models services (e.g. `http://10.0.0.5:8090`, `http://host/arw` behind a proxy), asked for `{base}/blobs/sha256/{sha256}` before the mirrors and the origin, once the digest is known.'),
    Setting("ARW_PEERS_TOKEN", None, _optional(str),
            'The token sent (as `Authorization: Bearer`) to the peers of ARW_DL_PEERS, to each peer\'s host alone: their ARW_ADMIN_TOKEN. Never shown.'),
    Setting("ARW_DL_PEER_TIMEOUT_SECS", 2.0, float,
            'Seconds a peer may take to connect, to answer, and between two reads of its body; a peer that takes longer is skipped for the job, at the cost of this one wait.'),
    Setting("ARW_SERVE_BLOBS", True, _bool,
            'Serve GET /blobs/sha256/<digest> (the store\'s verified files, to peers); 0: the endpoint answers 404, as for a blob the store does not hold.'),
    Setting("ARW_SERVE_GATED_BLOBS", False, _bool,
            'Also serve the blobs of gated downloads (fetched with the request\'s headers, a hub token or registry credentials), whose licence may not allow passing them on.'),
    Setting("ARW_REGISTRY_INSECURE", None, _optional(parse_insecure),
            'Comma-separated registries (`HOST:PORT`, as an `oci://` or `ollama://` reference names them) asked over plain http instead of https, like Docker\'s insecure registries; credentials and tokens go to them unencrypted.'),
    Setting("ARW_LOG_FORMAT", None, _optional(str),
            'Unset: the service leaves logging to its host. "text" or "json": the `arw_models` logger gets its own stderr handler in that format (json: one object per line), at INFO unless its level is set.'),
)
BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
DEFAULTS: dict[str, Any] = {s.key: s.default for s in SETTINGS}
_PARSERS: dict[str, Callable[[str], Any]] = {s.key: s.parse for s in SETTINGS}


def env_setting(key: str, environ: Mapping[str, str] | None = None) -> Any:
    """One setting as the environment gives it, parsed, or its default: for the
    parts that run before any app exists (the gunicorn configuration, the CLI)."""
    environ = os.environ if environ is None else environ
    setting = BY_KEY[key]
    if key not in environ:
        return setting.default
    try:
        return setting.parse(environ[key])
    except ValueError as exc:
        raise ValueError(f"{key}={environ[key]!r}: {exc}") from None


def events_stream_cap(threads: int | None) -> int:
    """The default ARW_EVENTS_MAX_STREAMS: all threads but a reserve of a quarter
    of them (at least 4) for every other request, and never less than one."""
    if threads is None:
        return UNKNOWN_THREADS_STREAM_CAP
    return max(1, threads - max(4, threads // 4))


def describe_stream_cap(max_streams: int, threads: int | None, threads_from: str, explicit: bool) -> str:
    """Where the cap on event streams came from, for the refusal that names it."""
    if explicit:
        return "set by ARW_EVENTS_MAX_STREAMS"
    if threads is None:
        return "the default while the server's thread count is unknown: set ARW_THREADS to it"
    return f"{threads} server threads ({threads_from}) less a reserve of {threads - max_streams} for other requests"


LOG_FORMATS = ("text", "json")


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``ARW_*`` keys present in ``environ``, parsed to their types."""
    found: dict[str, Any] = {}
    for key, parse in _PARSERS.items():
        if key in environ:
            try:
                found[key] = parse(environ[key])
            except ValueError as exc:
                raise ValueError(f"{key}={environ[key]!r}: {exc}") from None
    # The hub's own variables, as huggingface_hub reads them, when ours are unset.
    for ours, theirs in (("ARW_HF_TOKEN", "HF_TOKEN"), ("ARW_HF_ENDPOINT", "HF_ENDPOINT")):
        if ours not in found and environ.get(theirs):
            found[ours] = _PARSERS[ours](environ[theirs])
    return found


@dataclass(frozen=True)
class Settings:
    """The effective settings of one app, read once when the service starts."""

    state_dir: str
    admin_token: str | None
    cors_origins: tuple[str, ...]
    max_conc: int
    max_bytes: int | None
    disk_reserve_bytes: int
    connect_timeout: float
    idle_timeout: float
    retries: int
    backoff: float
    backoff_max: float
    chunk_bytes: int
    fsync_bytes: int
    checkpoint_secs: float
    direct_io: str
    progress_interval: float
    resume_on_start: bool
    stale_part_secs: float
    events_replay: int
    events_queue: int
    keepalive: float
    retry_ms: int
    jobs_keep: int
    segments: int
    segment_min_bytes: int
    stream_keep: float | None  # bytes/s; None: auto
    rate_limit: int | None
    lock_wait: float
    threads: int | None
    max_streams: int
    body_timeout: float
    log_format: str | None
    hf_endpoint: str = "https://huggingface.co"
    hf_token: str | None = field(default=None, repr=False)
    mirrors: tuple[str, ...] = ()
    files_at_once: int = 4
    models_mode: int = 0o644
    registry_insecure: tuple[str, ...] = ()
    hf_cache: str | None = None
    peers: tuple[str, ...] = ()
    peers_token: str | None = field(default=None, repr=False)
    peer_timeout: float = 2.0
    serve_blobs: bool = True
    serve_gated_blobs: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        def get(key: str) -> Any:
            value = config.get(key, DEFAULTS[key])
            if isinstance(value, str) and key in _PARSERS and key not in (
                "ARW_STATE_DIR",
                "ARW_ADMIN_TOKEN",
                "ARW_HF_TOKEN",
                "ARW_PEERS_TOKEN",
                "ARW_HF_CACHE",
                "ARW_BIND",
            ):
                value = _PARSERS[key](value)
            return value

        max_mb = get("ARW_MODELS_MAX_MB")
        threads = get("ARW_THREADS")
        threads = None if threads is None else int(threads)
        max_streams = get("ARW_EVENTS_MAX_STREAMS")
        settings = cls(
            state_dir=os.path.abspath(os.fspath(get("ARW_STATE_DIR"))),
            # Surrounding blanks are not part of a token; a blank one is no token.
            admin_token=(get("ARW_ADMIN_TOKEN") or "").strip() or None,
            cors_origins=tuple(parse_origins(get("ARW_CORS_ORIGINS"))),
            max_conc=int(get("ARW_MODELS_MAX_CONC")),
            max_bytes=None if max_mb is None else int(float(max_mb) * MiB),
            disk_reserve_bytes=int(float(get("ARW_MODELS_DISK_RESERVE_MB")) * MiB),
            connect_timeout=float(get("ARW_DL_CONNECT_TIMEOUT_SECS")),
            idle_timeout=float(get("ARW_DL_IDLE_TIMEOUT_SECS")),
            retries=int(get("ARW_DL_RETRIES")),
            backoff=float(get("ARW_DL_RETRY_BACKOFF_MS")) / 1000.0,
            backoff_max=float(get("ARW_DL_RETRY_BACKOFF_MAX_MS")) / 1000.0,
            chunk_bytes=int(get("ARW_DL_CHUNK_BYTES")),
            fsync_bytes=int(get("ARW_DL_FSYNC_BYTES")),
            checkpoint_secs=float(get("ARW_DL_CHECKPOINT_SECS")),
            direct_io=_direct_io(str(get("ARW_DL_DIRECT_IO"))),
            progress_interval=float(get("ARW_DL_PROGRESS_INTERVAL_MS")) / 1000.0,
            resume_on_start=bool(get("ARW_DL_RESUME_ON_START")),
            stale_part_secs=float(get("ARW_DL_STALE_PART_HOURS")) * 3600.0,
            events_replay=int(get("ARW_EVENTS_REPLAY")),
            events_queue=int(get("ARW_EVENTS_QUEUE")),
            keepalive=float(get("ARW_EVENTS_KEEPALIVE_SECS")),
            retry_ms=int(get("ARW_EVENTS_RETRY_MS")),
            jobs_keep=int(get("ARW_JOBS_KEEP")),
            segments=int(get("ARW_DL_SEGMENTS")),
            rate_limit=None if get("ARW_DL_RATE_LIMIT") is None else int(get("ARW_DL_RATE_LIMIT")),
            segment_min_bytes=int(float(get("ARW_DL_SEGMENT_MIN_MB")) * MiB),
            stream_keep=_stream_keep(get("ARW_DL_STREAM_KEEP_MB_S")),
            lock_wait=float(get("ARW_LOCK_WAIT_SECS")),
            threads=threads,
            max_streams=events_stream_cap(threads) if max_streams is None else int(max_streams),
            body_timeout=float(get("ARW_BODY_TIMEOUT_SECS")),
            log_format=_log_format(get("ARW_LOG_FORMAT")),
            # The hub's own variables, as huggingface_hub reads them, when ours are unset.
            hf_endpoint=_endpoint(str(get("ARW_HF_ENDPOINT"))),
            hf_token=(get("ARW_HF_TOKEN") or "").strip() or None,
            mirrors=parse_mirrors(get("ARW_DL_MIRRORS") or ()),
            files_at_once=int(get("ARW_DL_FILES_AT_ONCE")),
            models_mode=parse_mode(get("ARW_MODELS_MODE")),
            registry_insecure=parse_insecure(get("ARW_REGISTRY_INSECURE") or ()),
            # A path, made absolute as the state directory is; blank: no export.
            hf_cache=os.path.abspath(os.fspath(get("ARW_HF_CACHE"))) if str(get("ARW_HF_CACHE") or "").strip()
            else None,
            peers=parse_peers(get("ARW_DL_PEERS") or ()),
            peers_token=(get("ARW_PEERS_TOKEN") or "").strip() or None,
            peer_timeout=float(get("ARW_DL_PEER_TIMEOUT_SECS")),
            serve_blobs=bool(get("ARW_SERVE_BLOBS")),
            serve_gated_blobs=bool(get("ARW_SERVE_GATED_BLOBS")),
        )
        if settings.max_conc < 1:
            raise ValueError("ARW_MODELS_MAX_CONC must be at least 1")
        if settings.chunk_bytes < 1024:
            raise ValueError("ARW_DL_CHUNK_BYTES must be at least 1024")
        if settings.retries < 0:
            raise ValueError("ARW_DL_RETRIES must not be negative")
        if settings.rate_limit is not None and settings.rate_limit < 1:
            raise ValueError("ARW_DL_RATE_LIMIT must be at least 1 (bytes per second), or unset")
        if not 1 <= settings.segments <= 16:
            raise ValueError("ARW_DL_SEGMENTS must be between 1 and 16")
        if not 1 <= settings.files_at_once <= 16:
            raise ValueError("ARW_DL_FILES_AT_ONCE must be between 1 and 16")
        if settings.segment_min_bytes < 0:
            raise ValueError("ARW_DL_SEGMENT_MIN_MB must not be negative")
        if settings.jobs_keep < 0:
            raise ValueError("ARW_JOBS_KEEP must not be negative")
        if not 0 <= settings.lock_wait <= 60:
            raise ValueError("ARW_LOCK_WAIT_SECS must be between 0 and 60")
        if settings.threads is not None and settings.threads < 1:
            raise ValueError("ARW_THREADS must be at least 1")
        if settings.max_streams < 1:
            raise ValueError("ARW_EVENTS_MAX_STREAMS must be at least 1")
        if not settings.checkpoint_secs > 0:
            raise ValueError("ARW_DL_CHECKPOINT_SECS must be positive")
        if not settings.body_timeout > 0:
            raise ValueError("ARW_BODY_TIMEOUT_SECS must be positive")
        if not settings.peer_timeout > 0:
            raise ValueError("ARW_DL_PEER_TIMEOUT_SECS must be positive")
        return settings

    def public(self) -> dict[str, Any]:
        """What /probe shows: everything but the token itself."""
        return {
            "cors_origins": list(self.cors_origins),
            "max_conc": self.max_conc,
            "max_mb": None if self.max_bytes is None else self.max_bytes / MiB,
            "disk_reserve_mb": self.disk_reserve_bytes / MiB,
            "connect_timeout_secs": self.connect_timeout,
            "idle_timeout_secs": self.idle_timeout,
            "retries": self.retries,
            "retry_backoff_ms": self.backoff * 1000.0,
            "retry_backoff_max_ms": self.backoff_max * 1000.0,
            "chunk_bytes": self.chunk_bytes,
            "fsync_bytes": self.fsync_bytes,
            "checkpoint_secs": self.checkpoint_secs,
            "direct_io": self.direct_io,
            "progress_interval_ms": self.progress_interval * 1000.0,
            "resume_on_start": self.resume_on_start,
            "stale_part_hours": self.stale_part_secs / 3600.0,
            "events_replay": self.events_replay,
            "events_queue": self.events_queue,
            "events_keepalive_secs": self.keepalive,
            "events_retry_ms": self.retry_ms,
            "jobs_keep": self.jobs_keep,
            "segments": self.segments,
            "files_at_once": self.files_at_once,
            "rate_limit": self.rate_limit,
            "segment_min_mb": self.segment_min_bytes / MiB,
            "stream_keep_mb_s": "auto" if self.stream_keep is None else self.stream_keep / MiB,
            "lock_wait_secs": self.lock_wait,
            "events_max_streams": self.max_streams,
            "threads": self.threads,
            "body_timeout_secs": self.body_timeout,
            "log_format": self.log_format,
            "models_mode": f"{self.models_mode:04o}",
            "hf_endpoint": redact_url(self.hf_endpoint),  # its userinfo may be a credential
            "hf_token": "set" if self.hf_token else None,
            "mirrors": [redact_url(m) for m in self.mirrors],
            "registry_insecure": list(self.registry_insecure),
            "hf_cache": self.hf_cache,
            "peers": [redact_url(p) for p in self.peers],
            "peers_token": "set" if self.peers_token else None,
            "peer_timeout_secs": self.peer_timeout,
            "serve_blobs": self.serve_blobs,
            "serve_gated_blobs": self.serve_gated_blobs,
            "auth": "token" if self.admin_token else "none",
        }
