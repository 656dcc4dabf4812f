"""Is the internet reachable? One bounded probe before a download, so offline users learn it at once.

TFDS retries for about 200 s before it fails without a network, and Keras' `get_file` waits on
DNS; a 3 s probe lets `data` and `weights` say "no network" in one line instead.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

PROBE_TIMEOUT_S = 3.0


def network_available(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when an HTTPS HEAD request to url gets any answer within timeout seconds.

    A thread bounds the whole probe, DNS included (urllib's timeout does not cover DNS); an HTTP
    error status (403, 404) is an answer, so it counts as a working network.
    """
    reached = []

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
            reached.append(True)
        except urllib.error.HTTPError:
            reached.append(True)
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(reached)
