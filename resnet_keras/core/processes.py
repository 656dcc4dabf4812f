"""Child processes that never outlive their parent, however the parent ends (SIGKILL included).

A parent killed with SIGKILL runs no cleanup, so the child must watch for it itself. Every child
this package starts (the `prepare` workers, the benchmark's memory probe) calls `die_with_parent`
first thing, with the parent's pid passed down.

On Linux the kernel does the watching: `prctl(PR_SET_PDEATHSIG, SIGKILL)` has the child killed the
moment its parent dies, even while the child is deep in native code (a TensorFlow write, a Pillow
decode) that would keep a watcher thread from getting the GIL. Elsewhere a daemon thread polls the
parent's pid twice a second.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Ends this process (exit 1, or SIGKILL on Linux) when the process `parent_pid` ends.

    `parent_pid` is the parent's own pid, read in the parent (`os.getpid()`) before it started the
    child: if the parent died before this call, the child has been re-parented already and exits now.
    """
    if sys.platform.startswith("linux") and _set_parent_death_signal():
        if os.getppid() != parent_pid:  # died before prctl took effect
            os._exit(1)
        return
    threading.Thread(target=_watch, args=(parent_pid,), name="die-with-parent", daemon=True).start()


def _set_parent_death_signal() -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no prctl in this libc: fall back to polling
        return False


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    os._exit(1)
