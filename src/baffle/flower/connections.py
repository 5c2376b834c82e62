"""Write baffle's SuperLink connections into the Flower configuration file ($FLWR_HOME/config.toml).

flwr 1.42 reads ``flwr run . <connection>`` connections from that file, not from pyproject.toml (a
``[tool.flwr.federations]`` table there is "migrated" by ``flwr run``, which comments it out of
pyproject.toml). This adds, or replaces, two connections in Flower's current format and leaves every
other entry alone:

* ``local-simulation``: Flower's managed local SuperLink in simulation mode (``address = ":local:"``);
* ``local-deployment``: a SuperLink you started on this machine (``scripts/deploy_local.sh``), Control API
  on 127.0.0.1:9093, insecure (``--root-certificates`` switches it to TLS).

The simulation's size is no longer part of the connection (flwr 1.42 deprecates ``options.`` there and
warns on every run): pass it per run, ``flwr run . local-simulation --federation-config
"num-supernodes=10 client-resources-num-cpus=1"`` (``federation_config()`` builds that string), as
``scripts/flower_sim.sh`` does. Ten nodes are ten partitions, as ``baffle run``'s ``data.num_clients=10``.

Usage: ``python -m baffle.flower.connections [--home DIR] [--address HOST:PORT] [--root-certificates CA.pem]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

DEPLOYMENT_ADDRESS = "127.0.0.1:9093"
LOCAL_SIMULATION = ":local:"  # flwr's managed local SuperLink (simulation runtime)


def flwr_home(home: str | os.PathLike[str] | None = None) -> Path:
    if home:
        return Path(home)
    return Path(os.environ["FLWR_HOME"]) if os.environ.get("FLWR_HOME") else Path.home() / ".flwr"


def connections(address: str = DEPLOYMENT_ADDRESS, root_certificates: str | None = None) -> dict[str, dict[str, Any]]:
    deploy: dict[str, Any] = {"address": address}
    if root_certificates:
        deploy["root-certificates"] = str(Path(root_certificates).resolve())
    else:
        deploy["insecure"] = True
    return {"local-simulation": {"address": LOCAL_SIMULATION}, "local-deployment": deploy}


def federation_config(num_supernodes: int = 10, num_cpus: int = 1) -> str:
    """``--federation-config`` of ``flwr run`` for a simulation of ``num_supernodes`` nodes (partitions)."""
    return f"num-supernodes={num_supernodes} client-resources-num-cpus={num_cpus}"


def write_connections(home: str | os.PathLike[str] | None = None, **kwargs: Any) -> Path:
    import tomli_w  # a dependency of flwr

    path = flwr_home(home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    superlink = data.setdefault("superlink", {})
    superlink.setdefault("default", "local-simulation")
    superlink.update(connections(**kwargs))
    from baffle.records.checkpoint import atomic_write_bytes  # here: the other commands need no torch

    atomic_write_bytes(path, tomli_w.dumps(data).encode())
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m baffle.flower.connections", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", help="Flower home (default: $FLWR_HOME or ~/.flwr)")
    p.add_argument("--address", default=DEPLOYMENT_ADDRESS, help="Control API address of the deployed SuperLink")
    p.add_argument("--root-certificates", help="CA certificate (PEM) of a TLS SuperLink; omit for insecure")
    a = p.parse_args(argv)
    path = write_connections(a.home, address=a.address, root_certificates=a.root_certificates)
    print(f"wrote SuperLink connections local-simulation, local-deployment to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
