"""TLS to the broker verifies the certificate's host name, not only its chain: a real TLS
peer (a TLS echo server on loopback, with certificates made by a CA of the test's own)."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from worker.amqp.broker import connect
from worker.settings import AmqpSettings
from worker.tools.bench.servers import free_port


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, issuer_key, issuer: str, key, ca: bool, dns: str | None):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test CA", ca_key, "test CA", ca_key, True, None)
    paths = {"ca": folder / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for host in ("localhost", "evil.example"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(host, ca_key, "test CA", key, False, host)
        paths[host] = folder / f"{host}.pem"
        paths[host].write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return paths


def tls_server(certificate: Path) -> tuple[int, threading.Event]:
    """Accepts TLS connections with `certificate` and records whether a handshake finished."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate)
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    handshaken = threading.Event()

    def serve() -> None:
        listener.settimeout(3)  # the client may try more than once
        try:
            while True:
                raw, _ = listener.accept()
                try:
                    with context.wrap_socket(raw, server_side=True) as connection:
                        handshaken.set()
                        connection.settimeout(2)
                        connection.recv(8)  # the AMQP protocol header, then we hang up
                except (OSError, ssl.SSLError):
                    pass
        except OSError:  # no further client
            pass
        finally:
            listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return port, handshaken


def handshake(pki, certificate: str, **settings) -> tuple[Exception, bool]:
    """Connect the worker's way to a TLS peer with `certificate`; the error (there is no
    broker behind it) and whether the TLS handshake finished."""
    port, handshaken = tls_server(pki[certificate])
    amqp = AmqpSettings(url=f"amqps://u:p@127.0.0.1:{port}//", ssl_ca_file=pki["ca"], **settings)
    with pytest.raises(Exception) as error, connect(amqp) as connection:
        connection.ensure_connection(max_retries=1)
    return error.value, handshaken.wait(2)


def test_a_certificate_for_another_host_is_refused(pki):
    error, handshaken = handshake(pki, "evil.example", ssl_server_hostname="localhost")
    assert "hostname" in str(error).lower() or "certificate" in str(error).lower()
    assert not handshaken


def test_the_urls_host_is_checked_by_default(pki):
    error, handshaken = handshake(pki, "localhost")  # the URL says 127.0.0.1
    assert "certificate" in str(error).lower() or "hostname" in str(error).lower()
    assert not handshaken


def test_the_right_host_name_passes_the_handshake(pki):
    _, handshaken = handshake(pki, "localhost", ssl_server_hostname="localhost")
    assert handshaken
