"""What a node and the server must agree on before a round: the baffle version and the noise spec.

Flower ships the app bundle (FAB) to every node, but each node imports the baffle *installed* in its
environment, so a server and its nodes can run different code without noticing: different seeds-to-noise
maps or round bodies silently break the protocol (the server reconstructs with directions no node used).
Each node answers the server's query with ``local_versions()``; the server refuses a node whose versions
differ from its own (``mismatch`` says how, naming both sides).
"""

from __future__ import annotations

from typing import Mapping

VERSIONS = "baffle.versions"  # ConfigRecord a node answers a query with
CHECKED = ("baffle", "noise-spec")  # keys that must be equal on the server and every node


def local_versions() -> dict[str, str]:
    """This process's versions: baffle, the noise spec(s) it implements, and the direction kinds."""
    import baffle
    from baffle.protocol import noise

    return {"baffle": baffle.__version__, "noise-spec": noise.NOISE_SPEC, "noise-kinds": ",".join(noise.KINDS)}


def mismatch(node_versions: Mapping[str, str] | None, node: str, server: Mapping[str, str] | None = None) -> str | None:
    """None when ``node_versions`` agree with the server's on every ``CHECKED`` key, else the refusal."""
    server = dict(server or local_versions())
    if node_versions is None:
        return (f"{node} did not report its versions (it runs a baffle older than the server's "
                f"baffle {server['baffle']}, {server['noise-spec']}); install the same baffle on every node")
    diffs = [k for k in CHECKED if str(node_versions.get(k)) != server[k]]
    if not diffs:
        return None
    theirs = ", ".join(f"{k} {node_versions.get(k)}" for k in CHECKED)
    ours = ", ".join(f"{k} {server[k]}" for k in CHECKED)
    return f"{node} runs {theirs}; the server runs {ours}: refused (install the same baffle on the server and every node)"
