"""A small SSE client for tests: reads frames from a real socket."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import requests


@dataclass
class Frame:
    id: str | None = None
    event: str = "message"
    data: str = ""
    retry: str | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def payload(self) -> Any:
        return self.json["payload"]


class SSEClient:
    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 5.0,
                 params: Any = None) -> None:
        self.response = requests.get(url, headers=headers, params=params, stream=True, timeout=(2, timeout))
        self._lines = self.response.iter_lines(chunk_size=1, decode_unicode=False)
        self.comments: list[str] = []

    def next(self, keep_comments: bool = False) -> Frame:
        """The next frame (a comment-only block counts when ``keep_comments``)."""
        frame = Frame()
        seen = False
        for raw in self._lines:
            line = raw.decode("utf-8")
            if line == "":
                if seen and (frame.data or frame.event != "message" or (keep_comments and frame.comments)):
                    return frame
                continue
            seen = True
            if line.startswith(":"):
                frame.comments.append(line[1:].strip())
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                frame.data = frame.data + "\n" + value if frame.data else value
            elif name == "id":
                frame.id = value
            elif name == "event":
                frame.event = value
            elif name == "retry":
                frame.retry = value
        raise EOFError("the stream ended")

    def until(self, predicate: Any, limit: int = 10_000) -> Frame:
        for _ in range(limit):
            frame = self.next()
            if predicate(frame):
                return frame
        raise AssertionError("no matching frame")

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PROGRESS = "Models.DownloadProgress"
ENDED = ("complete", "error", "canceled")


def read_frames_until(sse: SSEClient, predicate: Callable[[Frame], bool]) -> list[Frame]:
    """Every frame up to and including the first that ``predicate`` accepts."""
    frames = []
    while True:
        frame = sse.next()
        frames.append(frame)
        if predicate(frame):
            return frames


def is_status(model_id: str, *statuses: str) -> Callable[[Frame], bool]:
    return lambda f: (f.event == PROGRESS and f.payload["id"] == model_id and f.payload["status"] in statuses)


def post_and_follow(base: str, body: dict[str, Any], until: Callable[[Frame], bool]) -> list[Frame]:
    """POSTs the download ``body`` to the service at ``base`` with its event stream
    already open (so no event of it is missed), and reads the stream until ``until``."""
    with SSEClient(base + "/events", params={"prefix": "Models."}) as sse:
        assert sse.next().event == "service.connected"
        answer = requests.post(base + "/models/download", json=body, timeout=5)
        assert answer.status_code == 202, answer.text
        return read_frames_until(sse, until)
