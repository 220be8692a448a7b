"""The command line for models of many files (``hf://OWNER/REPO``, ``ollama://``,
``oci://``): the options it sends, ``--revision`` and ``--rate-limit`` as it reads
them, a dry run's listing, the progress of each file, an exit code that fails
whenever a file is left incomplete, and ``list`` with each file. Against a stand-in
of the service on a real socket (tests/support/standin.py) answering with the
agreed shapes: a test of the client."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from arw_models.client.cli import main
from arw_models.client.display import Progress

from .support.standin import StandIn, standin

KiB = 1024
MiB = 1024 * KiB
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def no_cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("ARW_SERVER", "ARW_ADMIN_TOKEN", "ARW_PORT"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def service() -> Iterator[StandIn]:
    with standin() as server:
        yield server


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(service: StandIn, capsys: pytest.CaptureFixture[str]) -> Cli:
    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--server", service.url, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def files(*states: tuple[str, int, int, str]) -> list[dict[str, Any]]:
    return [{"path": p, "downloaded": d, "total": t, "status": s} for p, d, t, s in states]


def job(status: str, *states: tuple[str, int, int, str], **extra: Any) -> dict[str, Any]:
    listed = files(*states)
    total = sum(f["total"] for f in listed)
    done = sum(f["downloaded"] for f in listed)
    return {"id": "tiny", "status": status, "revision": COMMIT, "downloaded": done, "total": total,
            "progress": done * 100 // total, "speed": MiB, "eta_s": 1.0, "files": listed, **extra}


def a_download(service: StandIn, last: dict[str, Any]) -> None:
    """Events of a three-file download: one file in the store already, two fetched."""
    service.on_post["tiny"] = [
        job("started", ("config.json", 0, 700, "queued"), ("model.safetensors", 0, 3 * MiB, "queued"),
            ("tokenizer/vocab.json", 0, 2 * KiB, "queued")),
        job("downloading", ("config.json", 700, 700, "stored"), ("model.safetensors", MiB, 3 * MiB, "downloading"),
            ("tokenizer/vocab.json", 0, 2 * KiB, "queued")),
        job("downloading", ("config.json", 700, 700, "stored"),
            ("model.safetensors", 3 * MiB, 3 * MiB, "verifying"), ("tokenizer/vocab.json", 0, 2 * KiB, "downloading")),
        last,
    ]


def test_a_many_file_download_shows_each_file_and_succeeds_when_all_are_done(service: StandIn, cli: Cli) -> None:
    a_download(service, job("complete", ("config.json", 700, 700, "stored"),
                            ("model.safetensors", 3 * MiB, 3 * MiB, "complete"),
                            ("tokenizer/vocab.json", 2 * KiB, 2 * KiB, "complete"),
                            file="tiny-model", bytes=3 * MiB + 2 * KiB + 700, sha256=None))
    code, out, err = cli("download", "tiny", "hf://acme/tiny-model", "--include", "*.json", "--include",
                         "*.safetensors", "--exclude", "*.bin", "--file", "tokenizer/vocab.json")
    assert code == 0, err
    assert service.posts == [{"id": "tiny", "url": "hf://acme/tiny-model", "include": ["*.json", "*.safetensors"],
                              "exclude": ["*.bin"], "files": ["tokenizer/vocab.json"]}]
    lines = out.splitlines()
    # Not a terminal: plain lines, one for each file's change of state (a queued file gets none).
    assert not re.search(r"[\r\x1b]", out)
    assert "tiny: config.json: already in the store (700 B)" in lines
    assert lines.index("tiny: model.safetensors: downloading (3.0 MiB)") \
        < lines.index("tiny: model.safetensors: verifying (3.0 MiB)") \
        < lines.index("tiny: model.safetensors: complete (3.0 MiB)")
    assert "tiny: tokenizer/vocab.json: complete (2.0 KiB)" in lines
    assert not any("queued" in line for line in lines)
    assert any(re.fullmatch(r"tiny: \d+%  .* 1/3 files", line) for line in lines), lines
    assert lines[-1] == f"tiny: complete: tiny-model (3.0 MiB, 3 files, revision {COMMIT})"


@pytest.mark.parametrize(("last", "why"), [
    # The job says complete, yet a file failed: the exit code says so.
    (job("complete", ("config.json", 700, 700, "stored"), ("model.safetensors", MiB, 3 * MiB, "failed"),
         ("tokenizer/vocab.json", 2 * KiB, 2 * KiB, "complete")), "1 of 3 files incomplete: model.safetensors (failed)"),
    (job("canceled", ("config.json", 700, 700, "stored"), ("model.safetensors", MiB, 3 * MiB, "downloading"),
         ("tokenizer/vocab.json", 0, 2 * KiB, "queued")), "canceled"),
    (job("error", ("config.json", 700, 700, "stored"), ("model.safetensors", MiB, 3 * MiB, "failed"),
         ("tokenizer/vocab.json", 0, 2 * KiB, "queued"), code="checksum-mismatch", error="checksum mismatch"),
     "tiny: checksum-mismatch: checksum mismatch"),
])
def test_a_file_left_incomplete_makes_the_exit_code_non_zero(service: StandIn, cli: Cli, last: dict[str, Any],
                                                             why: str) -> None:
    a_download(service, last)
    code, _, err = cli("download", "tiny", "hf://acme/tiny-model")
    assert code == 1
    assert why in err
    if last["status"] != "complete":
        assert "2 of 3 files incomplete: model.safetensors" in err


def test_a_last_event_without_files_is_judged_by_the_jobs_snapshot(service: StandIn, cli: Cli) -> None:
    # The end event carries the totals only; the snapshot says how each file ended.
    a_download(service, {"id": "tiny", "status": "complete", "file": "tiny-model", "bytes": 3 * MiB})
    service.jobs["tiny"] = job("complete", ("config.json", 700, 700, "stored"),
                               ("model.safetensors", 3 * MiB, 3 * MiB, "complete"),
                               ("tokenizer/vocab.json", 0, 2 * KiB, "queued"))
    code, _, err = cli("download", "tiny", "hf://acme/tiny-model")
    assert code == 1 and "1 of 3 files incomplete: tokenizer/vocab.json (queued)" in err
    service.jobs["tiny"]["files"][2].update(status="complete", downloaded=2 * KiB)
    code, out, err = cli("download", "tiny", "hf://acme/tiny-model")
    assert code == 0, err
    assert out.splitlines()[-1].startswith("tiny: complete: tiny-model")


def test_a_dry_run_lists_the_files_what_the_store_has_and_what_is_left_to_fetch(service: StandIn, cli: Cli) -> None:
    answer = {"id": "tiny", "url": f"hf://acme/tiny-model@{COMMIT}", "provider": "hf", "revision": COMMIT,
              "files": [{"path": "config.json", "bytes": 700, "sha256": None, "in_store": True},
                        {"path": "model.safetensors", "bytes": 3 * MiB, "sha256": "a" * 64, "in_store": False},
                        {"path": "tokenizer/vocab.json", "bytes": 2 * KiB, "sha256": None, "in_store": False}],
              "total": 3 * MiB + 2 * KiB + 700, "to_fetch": 3 * MiB + 2 * KiB}
    service.post_answers["tiny"] = (200, answer)
    code, out, err = cli("download", "tiny", "hf://acme/tiny-model", "--revision", COMMIT, "--dry-run")
    assert code == 0, err
    assert service.posts == [{"id": "tiny", "url": f"hf://acme/tiny-model@{COMMIT}", "dry_run": True}]
    assert out.splitlines() == [
        f"tiny: hf://acme/tiny-model@{COMMIT} (hf, revision {COMMIT})",
        "PATH                     SIZE  STATE",
        "config.json             700 B  in store",
        "model.safetensors     3.0 MiB  fetch",
        "tokenizer/vocab.json  2.0 KiB  fetch",
        "3 files, 3.0 MiB in all; 2 to fetch, 3.0 MiB",
    ]
    code, out, _ = cli("--json", "download", "tiny", "hf://acme/tiny-model", "--dry-run")
    assert code == 0 and json.loads(out) == answer


def test_a_dry_run_the_service_does_not_answer_as_one_fails(service: StandIn, cli: Cli) -> None:
    code, out, err = cli("download", "tiny", "hf://acme/tiny-model", "--dry-run")
    assert code == 1 and out == ""
    assert "did not answer the dry run" in err and "arw-models jobs" in err


@pytest.mark.parametrize(("url", "revision", "sent"), [
    ("hf://acme/tiny-model", "v1.0", "hf://acme/tiny-model@v1.0"),
    ("hf://acme/tiny-model", "refs/pr/1", "hf://acme/tiny-model@refs%2Fpr%2F1"),
    ("hf://datasets/acme/set", "main", "hf://datasets/acme/set@main"),
    ("hf://acme/tiny-model@v1.0", "v1.0", "hf://acme/tiny-model@v1.0"),
    ("hf://acme/tiny-model/sub/m.gguf", "v2", "hf://acme/tiny-model@v2/sub/m.gguf"),
    ("hf://acme/tiny-model/m.gguf@v2", "v2", "hf://acme/tiny-model@v2/m.gguf"),
])
def test_revision_pins_an_hf_reference(service: StandIn, cli: Cli, url: str, revision: str, sent: str) -> None:
    service.post_answers["m"] = (200, {"id": "m", "file": "x", "bytes": 1})
    code, _, err = cli("download", "m", url, "--revision", revision)
    assert code == 0, err
    assert service.posts[-1]["url"] == sent


@pytest.mark.parametrize(("url", "revision", "said"), [
    ("hf://acme/tiny-model@v1.0", "v2.0", "already pins revision 'v1.0'"),
    ("hf://acme/tiny-model/m.gguf@v1", "main", "already pins revision 'v1'"),
    ("https://host/m.gguf", "main", "hf:// reference only"),
    ("ollama://llama3:8b", "main", "hf:// reference only"),
    ("hf://acme/tiny-model", "../x", "does not name a branch"),
    ("hf://acme", "main", "hf://OWNER/REPO"),
])
def test_a_revision_that_cannot_apply_is_a_usage_error(service: StandIn, capsys: pytest.CaptureFixture[str],
                                                       url: str, revision: str, said: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--server", service.url, "download", "m", url, "--revision", revision])
    assert exc.value.code == 2
    assert said in capsys.readouterr().err
    assert service.posts == []


@pytest.mark.parametrize(("text", "value"), [
    ("1000", 1000), ("5M", 5 * MiB), ("500K", 500 * KiB), ("500k", 500 * KiB), ("1.5M", 3 * MiB // 2),
    ("2G", 2 * 1024 * MiB), ("1T", 1024 ** 4), ("10MiB", 10 * MiB), ("64KB", 64 * KiB), (" 2m ", 2 * MiB),
])
def test_a_rate_limit_reads_as_curl_reads_it(service: StandIn, cli: Cli, text: str, value: int) -> None:
    service.post_answers["m"] = (200, {"id": "m", "file": "x", "bytes": 1})
    code, _, err = cli("download", "m", "https://host/m.gguf", "--rate-limit", text)
    assert code == 0, err
    assert service.posts[-1]["rate_limit"] == value


@pytest.mark.parametrize("text", ["fast", "0", "0.5", "-1", "1.5X", "", "M", "1e6", "1,5M", "nan"])
def test_a_bad_rate_limit_is_a_clear_usage_error(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--server", "http://127.0.0.1:9", "download", "m", "https://host/m.gguf", "--rate-limit", text])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --rate-limit:" in err
    assert "not a rate" in err or "less than one byte" in err


def test_force_and_the_hf_cache_choice_are_sent_only_when_given(service: StandIn, cli: Cli) -> None:
    service.post_answers["m"] = (200, {"id": "m", "file": "x", "bytes": 1})
    for argv, extra in ((["--force", "--hf-cache"], {"force": True, "hf_cache": True}),
                        (["--no-hf-cache"], {"hf_cache": False}), ([], {})):
        assert cli("download", "m", "hf://acme/tiny-model", *argv)[0] == 0
        assert service.posts[-1] == {"id": "m", "url": "hf://acme/tiny-model", **extra}


def test_list_shows_each_file_of_a_many_file_model(service: StandIn, cli: Cli) -> None:
    service.models = [
        {"id": "one", "file": "one.gguf", "path": "/s/models/one.gguf", "bytes": 2 * MiB, "sha256": "b" * 64,
         "status": "available"},
        {"id": "tiny", "file": "tiny-model", "path": "/s/models/tiny-model", "bytes": 3 * MiB + 700,
         "sha256": None, "status": "available", "revision": COMMIT,
         "files": [{"path": "config.json", "bytes": 700, "sha256": "c" * 64, "git_oid": "d" * 40},
                   {"path": "model.safetensors", "bytes": 3 * MiB, "sha256": "e" * 64}]},
    ]
    code, out, _ = cli("list")
    assert code == 0
    assert out.splitlines() == [
        "ID    FILE                    SIZE  SHA256        STATUS     PATH",
        "one   one.gguf             2.0 MiB  bbbbbbbbbbbb  available  /s/models/one.gguf",
        "tiny  tiny-model           3.0 MiB  -             available  /s/models/tiny-model",
        "        config.json          700 B  cccccccccccc",
        "        model.safetensors  3.0 MiB  eeeeeeeeeeee",
    ]
    code, out, _ = cli("--json", "list")
    assert json.loads(out) == {"items": service.models}


def test_jobs_says_how_many_files_of_a_many_file_job_are_done(service: StandIn, cli: Cli) -> None:
    service.jobs = {"tiny": job("downloading", ("config.json", 700, 700, "stored"),
                                ("model.safetensors", MiB, 3 * MiB, "downloading")),
                    "one": {"id": "one", "status": "paused", "progress": 50, "downloaded": MiB, "total": 2 * MiB}}
    code, out, _ = cli("jobs")
    assert code == 0
    assert out.splitlines() == [
        "ID    STATUS       PROGRESS  DOWNLOADED",
        "tiny  downloading       33%  1.0 MiB / 3.0 MiB (1/2 files)",
        "one   paused            50%  1.0 MiB / 2.0 MiB",
    ]


class Terminal:
    """A terminal's stdout, for the bar: written text kept, isatty() true."""

    encoding = "utf-8"

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_total_bar_stays_below_a_line_for_each_file() -> None:
    threads = set(threading.enumerate())
    out = Terminal()
    progress = Progress(out, "tiny", terminal=True, width=lambda: 100)  # type: ignore[arg-type]
    progress.update(job("started", ("a.json", 0, KiB, "queued"), ("b.bin", 0, 3 * KiB, "queued")))
    progress.update(job("downloading", ("a.json", KiB, KiB, "complete"), ("b.bin", KiB, 3 * KiB, "downloading")))
    progress.update(job("downloading", ("a.json", KiB, KiB, "complete"), ("b.bin", 2 * KiB, 3 * KiB, "downloading")))
    progress.update(job("complete", ("a.json", KiB, KiB, "complete"), ("b.bin", 3 * KiB, 3 * KiB, "complete"),
                        bytes=4 * KiB))
    progress.end()
    assert set(threading.enumerate()) == threads
    # What the terminal shows in the end: the file lines, each once, then the bar.
    screen = [part.rsplit("\r", 1)[-1].rstrip() for part in out.text.split("\n")]
    screen = [line for line in screen if line]
    assert screen[:3] == ["tiny: a.json: complete (1.0 KiB)", "tiny: b.bin: downloading (3.0 KiB)",
                          "tiny: b.bin: complete (3.0 KiB)"]
    assert re.match(r"tiny 100% \|█+\| 4\.0 KiB/4\.0 KiB  complete$", screen[3]), screen
    assert len(screen) == 4
    # Mid-way, the bar said how many files were done.
    assert "1/2 files" in out.text
