"""blinker signals a host app can connect to, to react to downloads without
reading the event stream.

Each is sent with the Flask app as sender and ``payload=`` the event payload (the
same dict the ``Models.DownloadProgress`` or ``Models.Changed`` event carries), from
the thread that produced the event: usually a download worker, outside any request
or app context, and with no lock of the service held: a receiver may call back
into it (list the jobs, start another download). One job's signals come in the
order of its events, one at a time. Receivers must be quick and must not raise; an
exception in one is logged and does not affect the download.

    from arw_models import signals

    @signals.download_completed.connect_via(app)
    def on_done(sender, payload):
        print("ready:", payload["id"], payload["path"])

The payload of ``download_completed`` has ``file`` (the name in ``models/``) and
``path`` (the installed file's absolute path). A receiver that logs through
``app.logger`` at INFO needs that logger's level set (or logging configured):
outside debug mode Flask leaves it at Python's default, WARNING.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

download_queued = _signals.signal("download-queued")
download_started = _signals.signal("download-started")
download_progress = _signals.signal("download-progress")
download_retrying = _signals.signal("download-retrying")
download_completed = _signals.signal("download-completed")
download_failed = _signals.signal("download-failed")
download_canceled = _signals.signal("download-canceled")
download_paused = _signals.signal("download-paused")
models_changed = _signals.signal("models-changed")

BY_STATUS = {
    "queued": download_queued,
    "started": download_started,
    "resumed": download_started,
    "downloading": download_progress,
    "retrying": download_retrying,
    "complete": download_completed,
    "error": download_failed,
    "canceled": download_canceled,
    "paused": download_paused,
}
