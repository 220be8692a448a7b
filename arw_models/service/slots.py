"""Transfer slots, the queue in front of them, retry timers, and the ticker.

Design: up to ``ARW_MODELS_MAX_CONC`` threads (created on first use, never at
import or in ``init_app``, so forking servers and ``--preload`` work) are the
slots. They are plain non-daemon threads, not a ``concurrent.futures`` pool: the
interpreter's exit joins a pool's threads before the main thread counts as
finished, so a stop noticed then (see ``hosting``) would come only after every
transfer had run to its end. A slot's thread ends when the queue is empty. Each takes the oldest job of the queue, runs it (one attempt), and takes
the next until the queue is empty: there is never one executor task per job, so a
job taken out of the queue (canceled while queued) leaves nothing behind. A job
that must wait to retry holds no slot; the ticker puts it at the head of the queue
when its timer fires. The ticker (one thread) also publishes every running job's
progress once an interval, from the counters its transfer updates, so the
transfer loop never does event work.

Everything here runs under the lock of the manager that owns it, but a job's
attempt and its progress events (see docs/design.rst, "Concurrency").
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable

from .jobs import DownloadJob, Status


class Slots:
    def __init__(self, size: int, interval: float, lock: threading.RLock, run: Callable[[DownloadJob], None],
                 clock: Callable[[], float], balance: Callable[[list[DownloadJob]], None] = lambda jobs: None,
                 ) -> None:
        self.size = size
        self.interval = max(0.005, interval)
        self.clock = clock
        self._lock = lock
        self._run = run
        # Called with the jobs in a slot whenever they change, and once an interval.
        self._balance = balance
        self._tick = threading.Condition(lock)
        # The jobs waiting for a slot; the jobs in one; the jobs waiting on a retry
        # timer (the clock's time it fires).
        self._pending: deque[DownloadJob] = deque()
        # The jobs in a slot, each with how many slots hold it: a job whose retry timer
        # fires may be taken by a second slot before the first has let go of it, and
        # the first one's letting go must not take it off the ticker's list.
        self._running: Counter[DownloadJob] = Counter()
        self._waiting: dict[DownloadJob, float] = {}
        self._draining = 0
        self._threads: set[threading.Thread] = set()
        self._ticker: threading.Thread | None = None
        self._closed = False

    def rebalance(self) -> None:
        """Under the lock: the limits changed; share them out now."""
        self._balance(list(self._running))

    def busy(self) -> int:
        """Jobs in a slot or queued for one (not those waiting on a timer)."""
        return len(self._running) + len(self._pending)

    def enqueue(self, job: DownloadJob, front: bool = False) -> None:
        """The job waits for a slot (at the head of the queue after a retry timer,
        which it has waited for already)."""
        if front:
            self._pending.appendleft(job)
        else:
            self._pending.append(job)
        if self._draining < self.size and not self._closed:
            self._draining += 1
            thread = threading.Thread(target=self._drain, name=f"arw-download-{len(self._threads)}")
            self._threads.add(thread)
            thread.start()
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick_loop, name="arw-ticker", daemon=True)
            self._ticker.start()

    def wait(self, job: DownloadJob, delay: float) -> None:
        """The job gives its slot up and waits ``delay`` seconds to be queued again."""
        self._waiting[job] = self.clock() + delay
        self._tick.notify()

    def take_back(self, job: DownloadJob) -> bool:
        """A job that holds no slot (queued, or waiting to retry) leaves the queue
        and the timers; False if it is in a slot."""
        if self._waiting.pop(job, None) is not None:
            return True
        try:
            self._pending.remove(job)
        except ValueError:
            return False
        return True

    def _drain(self) -> None:
        """One slot: runs queued jobs, oldest first, until none is left."""
        while True:
            with self._lock:
                if not self._pending or self._closed:
                    self._draining -= 1
                    self._threads.discard(threading.current_thread())
                    return
                job = self._pending.popleft()
                self._running[job] += 1
                self._balance(list(self._running))
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running[job] -= 1
                    if self._running[job] <= 0:
                        del self._running[job]
                    self._balance(list(self._running))

    def _tick_loop(self) -> None:
        """Fires retry timers and publishes progress, once an interval."""
        while True:
            with self._lock:
                if self._closed:
                    return
                now = self.clock()
                for job in [j for j, due in self._waiting.items() if due <= now]:
                    del self._waiting[job]
                    self.enqueue(job, front=True)
                running = list(self._running)
                self._balance(running)
            for job in running:
                fields = job.tick(now)
                if fields is not None:
                    job.transition(Status.DOWNLOADING, **fields)
            with self._lock:
                if self._closed:
                    return
                wait = self.interval
                if self._waiting:
                    wait = min(wait, max(0.0, min(self._waiting.values()) - self.clock()))
                self._tick.wait(wait)

    def close(self, wait: bool = True) -> None:
        """No job starts any more; the ticker ends, and with ``wait``, the slots too."""
        with self._lock:
            self._closed = True
            self._tick.notify_all()
            ticker = self._ticker
            threads = list(self._threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()
        if wait and ticker is not None and ticker is not threading.current_thread():
            ticker.join()
