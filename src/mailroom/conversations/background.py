"""The pipeline's processes: beside an import (``pipeline.in_background``, ``mailroom sync --once``)
and beside the sync engine (``mailroom serve``, ``mailroom sync``: :func:`engine_pipeline_process`).

Its own module, importing nothing of Django at the top: a spawned process unpickles its target by
importing the target's module, before Django is set up."""

from __future__ import annotations

import os
from typing import Any


def pipeline_process(
    overrides: dict[str, Any], stop: Any, wake: Any, handed: Any, results: Any, parent: int
) -> None:
    """Sweeps while the import runs: parses, and links only when parsing has caught up (a slow import;
    a fast one is linked after it). Once told to stop, it sets ``handed`` (it links no more: the
    parent, its import done, links from then on), parses what is left with two threads and exits. It
    gives up if its parent is gone (killed: nothing to report to, and the next run's drain finishes
    the work): a watch thread ends it within a second, wherever it is (its main thread can be
    blocked for good on the lock of an ``Event`` the parent held when it was killed: a ``kill -9`` of
    ``mailroom sync`` left this process, its parse workers and their resource tracker behind)."""
    from mailroom.parsing.workers import exit_with_parent

    exit_with_parent(parent)
    import django
    from django.conf import settings

    for name, value in overrides.items():  # the parent's configuration, as changed at run time too
        setattr(settings, name, value)
    settings.MAILROOM_SQLITE_CACHE_KIB = settings.MAILROOM_SQLITE_PIPELINE_CACHE_KIB
    django.setup()
    from django.db import connections

    from mailroom.conversations.pipeline import background_step, drain
    from mailroom.parsing.workers import parse_pool

    n = 0
    try:
        while not stop.is_set() and os.getppid() == parent:
            n += background_step(wake, parse_first=True)
        handed.set()
        if os.getppid() == parent:
            n += drain(link=False)
    finally:
        results.put(n)
        parse_pool(settings.MAILROOM_PARSE_PROCESSES).shutdown()
        connections.close_all()


def engine_pipeline_process(overrides: dict[str, Any], stop: Any, wake: Any, parent: int, threads: int) -> None:
    """The pipeline of a long-running engine, in a process of its own: ``threads`` pipeline threads
    parse (in this process's parse workers) and link, woken by ``wake`` (set by the engine on every
    commit of new mail and by its sweeper), until ``stop`` is set. The engine's process keeps its
    interpreter lock for the web, the API and the IMAP import. Ends within a second if its parent
    is gone (see :func:`pipeline_process`)."""
    from mailroom.parsing.workers import exit_with_parent

    exit_with_parent(parent)
    import threading

    import django
    from django.conf import settings

    for name, value in overrides.items():
        setattr(settings, name, value)
    settings.MAILROOM_SQLITE_CACHE_KIB = settings.MAILROOM_SQLITE_PIPELINE_CACHE_KIB  # linking rereads its pages
    django.setup()
    from django.db import connections

    from mailroom.ingest.engine import PipelineWorker
    from mailroom.parsing.workers import parse_pool

    pool = parse_pool(settings.MAILROOM_PARSE_PROCESSES, settings.MAILROOM_PARSE_DEADLINE)
    pool.warm()  # the first new message does not wait for the workers' start-up
    done = threading.Event()
    workers = [PipelineWorker(done, name=f"pipeline-{i}", parse_first=True) for i in range(threads)]
    for w in workers:
        w.start()
    try:
        while not stop.is_set() and os.getppid() == parent:
            if wake.wait(0.5):
                wake.clear()
                for w in workers:
                    w.wake.set()
    finally:
        done.set()
        for w in workers:
            w.wake.set()
            w.join()
        pool.shutdown()
        connections.close_all()
