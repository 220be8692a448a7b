"""The hash of parallel ranges (engine.verify.PrefixHasher): a thread hashes the
bytes from 0 as far as they are contiguous, while they arrive, so that the digest is
nearly done when the last byte lands; with a part that is shorter than its ranges
say, a resume that had hashed some bytes already, and a stop part-way."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from arw_models.engine import verify

from .support.origin import payload


class Recorder:
    """A SHA-256 that tells how many bytes it was given, and wakes who waits for them."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.seen = 0
        self.cond = threading.Condition()

    def update(self, data: bytes | memoryview) -> None:
        self.sha.update(data)
        with self.cond:
            self.seen += len(data)
            self.cond.notify_all()

    def hexdigest(self) -> str:
        return self.sha.hexdigest()

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.seen >= count, timeout)


class Prefix:
    """How far the bytes are contiguous, as the ranges would say; counts who asks."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self.calls = 0
        self.asked = threading.Event()

    def __call__(self) -> int:
        self.calls += 1
        self.asked.set()
        return self.value


@pytest.fixture
def part(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """A .part of 1000 bytes, all on disk (the prefix says how many count)."""
    data = payload(1000, seed=301)
    path = tmp_path / "a.part"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


def test_the_bytes_from_0_are_hashed_as_they_become_contiguous(part: tuple[int, bytes],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each time the ranges join up further, the new bytes are hashed then, not at
    the end, and never a byte past the prefix (those may still be holes); reads of at
    most the buffer's size, down to a single byte, all count."""
    monkeypatch.setattr(verify, "READ", 64)
    fd, data = part
    prefix, recorder = Prefix(), Recorder()
    hasher = verify.PrefixHasher(fd, prefix, recorder)
    try:
        for end in (1, 2, 130, 131, 700):
            prefix.value = end
            hasher.poke()
            assert recorder.wait_for(end), f"nothing hashed up to {end} before the end"
            assert recorder.seen == end
    finally:
        prefix.value = 1000
        done = hasher.finish()
    assert done is recorder and recorder.seen == 1000 and hasher.hashed == 1000
    assert recorder.hexdigest() == hashlib.sha256(data).hexdigest()
    assert hasher.read_back == 1000


def test_a_resumed_hash_reads_back_only_the_bytes_it_has_not_hashed(part: tuple[int, bytes]) -> None:
    """A later attempt goes on from the hasher of the one before: the bytes that one
    hashed are not read from disk again, and the digest is still the whole file's."""
    fd, data = part
    earlier = hashlib.sha256(data[:300])
    hasher = verify.PrefixHasher(fd, Prefix(1000), earlier, 300)
    assert hasher.finish() is earlier
    assert earlier.hexdigest() == hashlib.sha256(data).hexdigest()
    assert hasher.hashed == 1000 and hasher.read_back == 700


def test_without_an_earlier_hash_it_starts_from_byte_0(part: tuple[int, bytes]) -> None:
    """The first attempt of a file gives neither a hasher nor a start: a SHA-256 of
    its own, from byte 0."""
    fd, data = part
    hasher = verify.PrefixHasher(fd, Prefix(1000))
    assert hasher.finish().hexdigest() == hashlib.sha256(data).hexdigest()
    assert hasher.hashed == 1000 and hasher.read_back == 1000


def test_a_part_shorter_than_its_ranges_say_fails_the_hash(part: tuple[int, bytes]) -> None:
    """The ranges say bytes are there that the file does not hold (truncated behind
    the service's back): finishing the hash raises, rather than a digest of less than
    the file or a thread that reads forever."""
    fd, _ = part
    hasher = verify.PrefixHasher(fd, Prefix(1200))
    with pytest.raises(OSError, match="shorter than its ranges say"):
        hasher.finish()


def test_a_hasher_with_nothing_new_waits_without_spinning(part: tuple[int, bytes]) -> None:
    """While no range joins the prefix, the thread sleeps on its condition: it must
    not burn a core beside the transfers by asking again and again."""
    fd, _ = part
    prefix = Prefix(10)
    recorder = Recorder()
    hasher = verify.PrefixHasher(fd, prefix, recorder)
    try:
        assert recorder.wait_for(10)
        before = prefix.calls
        threading.Event().wait(0.3)  # a span of time to count the calls in, not a synchronisation
        assert prefix.calls - before <= 5
    finally:
        hasher.finish()


@pytest.mark.parametrize("end", ["finish", "abandon"])
def test_the_end_of_the_hash_does_not_wait_out_the_threads_nap(part: tuple[int, bytes], end: str) -> None:
    """When the last byte lands (or the transfer stops), the thread is woken at once:
    the digest is not held back by the half-second it naps between pokes."""
    fd, _ = part
    prefix, recorder = Prefix(10), Recorder()
    hasher = verify.PrefixHasher(fd, prefix, recorder)
    assert recorder.wait_for(10)
    prefix.asked.clear()
    assert prefix.asked.wait(5)  # the thread has just asked again, and gone to sleep
    started = time.monotonic()
    getattr(hasher, end)()
    assert time.monotonic() - started < 0.3
    assert recorder.seen == hasher.hashed == 10


def test_an_abandoned_hash_keeps_what_it_hashed_and_stops(part: tuple[int, bytes]) -> None:
    """A stop or a failure abandons the hash: the bytes from 0 that are contiguous by
    then are hashed, the thread has ended when abandon() returns (the .part may be
    closed next), and the hasher and its count agree, for the next attempt."""
    fd, data = part
    prefix, recorder = Prefix(0), Recorder()
    hasher = verify.PrefixHasher(fd, prefix, recorder)
    prefix.value = 900  # not poked: abandon() wakes the thread itself
    hasher.abandon()
    assert recorder.seen == hasher.hashed == 900
    assert recorder.hexdigest() == hashlib.sha256(data[:900]).hexdigest()
    assert not any(t.name == "arw-hash" and t.is_alive() for t in threading.enumerate())
