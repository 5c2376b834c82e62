"""Self-signed certificates for a TLS SuperLink on loopback (tests and local trials, not production).

Writes ``ca.crt``/``ca.key`` (a throwaway CA) and ``server.pem``/``server.key`` (a server certificate for
127.0.0.1 and localhost signed by that CA) into a directory, with the ``cryptography`` package Flower
already depends on: no network, no openssl binary needed. Then:

    flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key ...
    flower-supernode --root-certificates ca.crt ...     # and root-certificates = ca.crt for `flwr run`

Usage: ``python -m baffle.flower.certs DIR [NUM_NODE_KEYS]`` (node keys for SuperNode authentication go
to ``DIR/node-keys``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import sys
from pathlib import Path


def write_certs(out: str | Path, days: int = 2) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "baffle local CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def key_bytes(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    paths = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM), "ca.key": key_bytes(ca_key),
             "server.pem": cert.public_bytes(serialization.Encoding.PEM), "server.key": key_bytes(key)}
    for name, data in paths.items():
        (out / name).write_bytes(data)
        if name.endswith(".key"):
            (out / name).chmod(0o600)
    return {name: out / name for name in paths}


def write_node_keys(out: str | Path, count: int) -> list[tuple[Path, Path]]:
    """One ECDSA (P-384) key pair per SuperNode, in the OpenSSH formats Flower reads: ``node_i`` (private,
    for ``flower-supernode --auth-supernode-private-key``) and ``node_i.pub`` (for ``flwr supernode register``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP384R1())
        priv, pub = out / f"node_{i}", out / f"node_{i}.pub"
        priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        priv.chmod(0o600)
        pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
        pairs.append((priv, pub))
    return pairs


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m baffle.flower.certs", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="directory to write ca.crt, ca.key, server.pem, server.key into (created if missing)")
    p.add_argument("num_node_keys", nargs="?", type=int, default=0,
                   help="SuperNode authentication key pairs to write into DIR/node-keys (default 0)")
    a = p.parse_args(argv)
    if a.num_node_keys < 0:
        p.error("NUM_NODE_KEYS must be >= 0")
    for path in write_certs(a.dir).values():
        print(path)
    for priv, pub in write_node_keys(Path(a.dir) / "node-keys", a.num_node_keys) if a.num_node_keys else []:
        print(priv, pub)
    return 0


if __name__ == "__main__":
    sys.exit(main())
