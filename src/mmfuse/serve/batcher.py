"""Dynamic batching: requests that arrive together share one forward pass.

`await batcher.submit(item)` queues one item and waits for its result. A collector task takes
the first waiting item, gathers more for up to `max_wait_ms` (or until `max_batch` are in
hand), and hands them to `run_batch(items) -> results` as one list, run in a single worker
thread: one forward at a time on the model, and a batch of N costs far less than N forwards.
While a forward runs, new items queue up and form the next batch, so under load batches grow
on their own, and a lone request waits at most `max_wait_ms`.

    batcher = DynamicBatcher(predictor.predict_tensors, max_batch=32, max_wait_ms=5)
    prediction = await batcher.submit(predictor.preprocess(sample))
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchStats:
    """What the batcher has done: forward calls and how many items each one carried."""

    forwards: int = 0
    items: int = 0
    sizes: Counter = field(default_factory=Counter)  # batch size → number of forwards

    @property
    def largest(self) -> int:
        return max(self.sizes, default=0)

    @property
    def mean(self) -> float:
        return self.items / self.forwards if self.forwards else 0.0

    def record(self, size: int) -> None:
        self.forwards += 1
        self.items += size
        self.sizes[size] += 1

    def to_dict(self) -> dict:
        return {
            "forwards": self.forwards,
            "items": self.items,
            "mean_batch": round(self.mean, 3),
            "largest_batch": self.largest,
            "sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


class DynamicBatcher(Generic[T, R]):
    """Collect concurrent `submit` calls into lists for `run_batch`, one call at a time.

    `run_batch` must return one result per item, in order; an exception it raises is raised
    by every `submit` of that batch. The collector starts on the first `submit` in a running
    event loop (so no lifespan hook is needed) and `close` stops it.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, item: T) -> R:
        """Queue `item`; return its result once the batch that carries it has run."""
        queue = self._ensure_running()
        future = asyncio.get_running_loop().create_future()
        queue.put_nowait((item, future))
        return await future

    def _ensure_running(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        # A new loop (a test client per test, a restarted server) gets its own queue and task.
        if self._loop is not loop or self._task is None or self._task.done():
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="mmfuse-forward")
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._collect_forever(self._queue))
        return self._queue

    async def _collect_forever(self, queue: asyncio.Queue) -> None:
        while True:
            batch = await self._next_batch(queue)
            if batch:
                await self._run(batch)

    async def _next_batch(self, queue: asyncio.Queue) -> list[tuple[T, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [(item, future) for item, future in batch if not future.done()]  # not cancelled

    async def _run(self, batch: list[tuple[T, asyncio.Future]]) -> None:
        items = [item for item, _ in batch]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, items)
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)}")
        except Exception as e:
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        self.stats.record(len(items))
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Stop the collector, fail whatever still waits, and free the worker thread."""
        if self._task is not None and self._loop is asyncio.get_running_loop():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            while self._queue is not None and not self._queue.empty():
                _, future = self._queue.get_nowait()
                if not future.done():
                    future.set_exception(RuntimeError("the server is shutting down"))
        self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
