"""Service calls that survive a lost request: on a loaded machine (or a lossy link) the first request of a fresh
client can vanish while discovery settles, and one long wait then fails a call the server would have answered in
milliseconds. So: wait for the server, send, and re-send every `retry_s` (doubling) until any reply comes or
`timeout_s` is spent. Resending is safe for the calls we make: reads, and parameter sets of the same values."""
from __future__ import annotations

import time
from typing import Any, Callable, List, Optional


class ServiceTimeout(TimeoutError):
    """No reply within the total timeout (after retries)."""


def call_with_retries(node: Any, srv_type: Any, name: str, request: Any, timeout_s: float = 30.0,
                      retry_s: float = 1.0, wait: Optional[Callable[[float], None]] = None) -> Any:
    """The first reply to `request` on service `name`.

    `wait(seconds)` lets the caller's executor make progress: pass `lambda t: executor.spin_once(timeout_sec=t)`
    when nothing else spins `node`; the default sleeps (a background thread spins the node).
    """
    wait = wait or time.sleep
    client = node.create_client(srv_type, name)
    deadline = time.monotonic() + timeout_s
    futures: List[Any] = []
    try:
        while not client.service_is_ready():
            if time.monotonic() > deadline:
                raise ServiceTimeout(f"service {name} not available after {timeout_s:.0f} s")
            wait(0.05)
        interval = retry_s
        while True:
            futures.append(client.call_async(request))
            resend_at = min(time.monotonic() + interval, deadline)
            while time.monotonic() < resend_at:
                done = next((f for f in futures if f.done()), None)
                if done is not None:
                    return done.result()
                wait(0.01)
            if time.monotonic() >= deadline:
                raise ServiceTimeout(f"service {name}: no reply in {timeout_s:.0f} s ({len(futures)} requests sent)")
            interval *= 2.0
    finally:
        for future in futures:
            if not future.done():
                future.cancel()
        node.destroy_client(client)
