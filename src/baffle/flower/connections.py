"""Write baffle's SuperLink connections into the Flower configuration file ($FLWR_HOME/config.toml).

flwr 1.42 reads ``flwr run . <connection>`` connections from that file, not from pyproject.toml (a
``[tool.flwr.federations]`` table there is "migrated" by ``flwr run``, which comments it out of
pyproject.toml). This adds, or replaces, two connections and leaves every other entry alone:

* ``local-simulation``: Flower's managed local SuperLink in simulation mode (Ray), 10 virtual nodes
  (``--num-supernodes`` to change), each running the ClientApp on its own partition;
* ``local-deployment``: a SuperLink you started on this machine (``scripts/deploy_local.sh``), Control API
  on 127.0.0.1:9093, insecure (``--root-certificates`` switches it to TLS).

Usage: ``python -m baffle.flower.connections [--home DIR] [--num-supernodes N] [--root-certificates CA.pem]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

DEPLOYMENT_ADDRESS = "127.0.0.1:9093"


def flwr_home(home: str | os.PathLike[str] | None = None) -> Path:
    if home:
        return Path(home)
    return Path(os.environ["FLWR_HOME"]) if os.environ.get("FLWR_HOME") else Path.home() / ".flwr"


def connections(num_supernodes: int = 10, address: str = DEPLOYMENT_ADDRESS, root_certificates: str | None = None, num_cpus: int = 1) -> dict[str, dict[str, Any]]:
    deploy: dict[str, Any] = {"address": address}
    if root_certificates:
        deploy["root-certificates"] = str(Path(root_certificates).resolve())
    else:
        deploy["insecure"] = True
    sim = {
        "address": ":local:",
        "options": {"num-supernodes": num_supernodes, "backend": {"client-resources": {"num-cpus": num_cpus, "num-gpus": 0}}},
    }
    return {"local-simulation": sim, "local-deployment": deploy}


def write_connections(home: str | os.PathLike[str] | None = None, **kwargs: Any) -> Path:
    import tomli_w  # a dependency of flwr

    path = flwr_home(home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    superlink = data.setdefault("superlink", {})
    superlink.setdefault("default", "local-simulation")
    superlink.update(connections(**kwargs))
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(data))
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m baffle.flower.connections", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", help="Flower home (default: $FLWR_HOME or ~/.flwr)")
    p.add_argument("--num-supernodes", type=int, default=10)
    p.add_argument("--address", default=DEPLOYMENT_ADDRESS, help="Control API address of the deployed SuperLink")
    p.add_argument("--root-certificates", help="CA certificate (PEM) of a TLS SuperLink; omit for insecure")
    p.add_argument("--num-cpus", type=int, default=1, help="CPUs Ray reserves per simulated node")
    a = p.parse_args(argv)
    if a.num_supernodes < 1:
        p.error("--num-supernodes must be >= 1")
    path = write_connections(a.home, num_supernodes=a.num_supernodes, address=a.address, root_certificates=a.root_certificates, num_cpus=a.num_cpus)
    print(f"wrote SuperLink connections local-simulation, local-deployment to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
