"""A crash-tolerant process runner: every case gets a verdict, even when its worker process dies.

A worker killed for memory, or a reader that crashes the interpreter, breaks a whole
``ProcessPoolExecutor``: every case then in flight fails with ``BrokenProcessPool``, and only one of
them was the cause. :func:`run_cases` keeps the cases that had finished, retries the others one at a
time in a fresh single worker (which pins the blame exactly) and lists only the culprit as skipped.
"""
from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from nnunet_voco.pool.inputs import InputCase
from nnunet_voco.pool.report import PoolReport

WORKER_DIED = "worker process died while preprocessing this case (out of memory or a crash in the reader?)"


def run_cases(cases: list[InputCase], work: Callable[[InputCase], str | None], num_processes: int,
              report: PoolReport, progress: bool) -> None:
    """Run ``work`` on every case, in worker processes when ``num_processes`` > 1, updating ``report``.

    At most ``num_processes`` cases are in flight. When a worker dies (e.g. killed for memory), the
    cases in flight are retried one at a time in a fresh single worker, which pins the blame exactly.

    Args:
        cases: the cases to run.
        work: picklable function returning None (written) or the reason the case was skipped.
        num_processes: worker processes (spawned); 1 runs ``work`` in this process.
        report: gets each case id in ``written`` or a ``{"file", "reason"}`` entry in ``skipped``.
        progress: show a tqdm progress bar.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(cases), desc="Preprocessing unlabelled cases", unit="case", disable=not progress)

    def record(case: InputCase, reason: str | None) -> None:
        if reason is None:
            report.written.append(case.case_id)
        else:
            report.skipped.append({"file": case.source, "reason": reason})
        bar.set_postfix(skipped=len(report.skipped), refresh=False)
        bar.update()

    with bar:
        if num_processes <= 1:
            for case in cases:
                record(case, work(case))
            return
        queue, suspects = deque(cases), deque()
        while queue or suspects:
            source, workers = (suspects, 1) if suspects else (queue, num_processes)
            _run_in_workers(source, workers, work, record, suspects)


def _run_in_workers(source: deque, workers: int, work: Callable[[InputCase], str | None],
                    record: Callable[[InputCase, str | None], None], suspects: deque) -> None:
    """Run the cases of ``source`` in one process pool until it is empty or a worker dies.

    When a worker dies, the cases that had finished are recorded and the others join ``suspects``
    (with ``workers == 1`` the one case in flight is the culprit and is recorded as skipped).
    """
    running: dict = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as executor:
        try:
            while source or running:
                while source and len(running) < workers:
                    case = source.popleft()
                    try:
                        running[executor.submit(work, case)] = case
                    except BrokenProcessPool:
                        source.appendleft(case)
                        raise
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    reason = future.result()  # raises BrokenProcessPool when a worker died
                    record(running.pop(future), reason)
        except BrokenProcessPool:
            stranded = []
            for future, case in running.items():
                if future.done() and future.exception() is None:
                    record(case, future.result())
                else:
                    stranded.append(case)
            # Nothing in flight means the pool broke on submit; the next case then takes the
            # blame or the retry, so that the loop always progresses.
            stranded = stranded or [source.popleft()]
            if workers == 1:
                record(stranded[0], WORKER_DIED)
            else:
                suspects.extend(stranded)
