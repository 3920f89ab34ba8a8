"""Free loopback ports, for whoever starts real servers on this machine (the Triton and Ray tests,
`benchmarks/serve_load.py`): one definition instead of a copy in each."""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """n distinct ports the OS had free a moment ago (all bound at once, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
