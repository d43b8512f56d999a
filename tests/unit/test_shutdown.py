"""SIGTERM always ends a ``Shutdown`` block, whatever the main thread is doing when it lands."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

# A stream's idle loop at its worst: the main thread is almost always inside Event.wait() on the
# very event the stop sets. With Event.set() in the signal handler, 8 of 20 of these hung for good.
CHILD = textwrap.dedent(
    """
    from edge_runtime.runtime.shutdown import Shutdown
    with Shutdown() as shutdown:
        print("ready", flush=True)
        while not shutdown.requested.is_set():
            shutdown.requested.wait(0)
    print(shutdown.signal_name, flush=True)
    """
)


def test_sigterm_ends_a_loop_waiting_on_the_stop_event() -> None:
    hung, names = 0, set()
    for i in range(20):
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        time.sleep(0.003 * (i % 5))
        child.send_signal(signal.SIGTERM)
        try:
            names.add(child.communicate(timeout=20)[0].strip())
        except subprocess.TimeoutExpired:
            hung += 1
            child.kill()
            child.communicate()
    assert hung == 0 and names == {"SIGTERM"}


def test_a_callback_registered_after_the_stop_runs_at_once() -> None:
    from edge_runtime.runtime.shutdown import Shutdown

    ran: list[str] = []
    with Shutdown() as shutdown:
        shutdown.request(signal.SIGINT)
        shutdown.on_request(lambda: ran.append("late"))
    assert ran == ["late"] and shutdown.signal_name == "SIGINT"
    assert signal.getsignal(signal.SIGTERM) is not shutdown._handler  # the previous handlers are back
