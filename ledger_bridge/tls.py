"""TLS of the ledger: a cluster CA, one certificate per replica, and SSL contexts for the
peer port (mutual TLS between replicas) and the client port (server TLS, clients pin the CA).

Why here and not in `crypto.py`: X.509 building needs `cryptography.hazmat`/`x509`, which the
layering check confines to a few modules; this one only writes PEM files into the genesis
directory and builds `ssl.SSLContext`s from them.

Identity rule: replica `i`'s certificate has common name and DNS name `node-<i>`. Dialling
replicas verify the server name `node-<j>` against the CA (so a replica cannot impersonate
another), and servers require a client certificate from the same CA and check that it names
the replica the hello claims (see `transport.PeerListener`). A certificate from any other CA
fails the handshake. Private keys are written with mode 0600.

The client port uses the same certificate, without client certificates: a reader proves a
member's Ed25519 key instead, by signing a challenge bound to the server certificate's
`fingerprint` (see `transport.reader_transcript`), and members have no X.509 certificates.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY_DAYS = 3650


@dataclass(frozen=True)
class TlsFiles:
    """PEM paths of one party: the cluster CA certificate, its own certificate and key."""

    ca_cert: Path
    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Create with 0600 from the start: never a moment where the key is world-readable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_ca(directory: Path, name: str = "civis-ledger-ca") -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 CA; returns (cert path, key path)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(key_path, _key_pem(key))
    return cert_path, key_path


def issue_node_certificate(
    directory: Path, ca_cert: Path, ca_key: Path, node_id: int, hosts: list[str]
) -> TlsFiles:
    """Certificate `node-<id>` signed by the CA, valid for the given host names / IPs."""
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    loaded = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey), "the cluster CA key is ECDSA"
    key = ec.generate_private_key(ec.SECP256R1())
    name = f"node-{node_id}"
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(loaded, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(key_path, _key_pem(key))
    return TlsFiles(ca_cert=ca_cert, cert=cert_path, key=key_path)


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """Accepting side: TLS 1.3, and a client certificate from the cluster CA is mandatory."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(files.cert, files.key)
    ctx.load_verify_locations(cafile=str(files.ca_cert))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """Dialling side: verifies the server as `node-<j>` under the CA and presents our cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(files.ca_cert))
    ctx.load_cert_chain(files.cert, files.key)
    return ctx


def fingerprint(cert: Path) -> bytes:
    """SHA-256 of a PEM certificate's DER bytes: what a reader's signature is bound to, so a
    signature made on one TLS channel is worth nothing on a channel to another server."""
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).digest()


def client_port_context(files: TlsFiles) -> ssl.SSLContext:
    """The replica's client port: TLS 1.3 with its `node-<i>` certificate, no client
    certificate asked (readers prove their key by a signed challenge)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(files.cert, files.key)
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def reader_context(ca_cert: Path) -> ssl.SSLContext:
    """A client of the client port: the server must hold a certificate of the cluster CA for
    the name the client dials (`node-<j>`); nothing is presented in return."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca_cert))
    return ctx
