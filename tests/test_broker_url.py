"""What the worker reads from its broker URL: the address a person is shown (never the
password), the user it logs in as, and the TLS options it connects with (the handshake
itself: test_tls.py)."""

from __future__ import annotations

import ssl

import pytest
from pydantic import ValidationError

from worker.amqp.broker import broker_address, broker_user, connect, tls_options
from worker.settings import AmqpSettings, Settings


@pytest.mark.parametrize(
    "url, address",
    [
        ("amqp://jm:s3cret@rabbit:5673/shop%2Feu", "rabbit:5673 (vhost shop/eu)"),
        ("amqp://jm:s3cret@rabbit/", "rabbit:5672 (vhost /)"),
        ("amqp://jm:s3cret@rabbit", "rabbit:5672 (vhost /)"),
        ("amqps://jm:s3cret@rabbit//", "rabbit:5671 (vhost /)"),
        ("amqp://jm:s3cret@rabbit:port/jewelmatch", "rabbit:5672 (vhost jewelmatch)"),
        ("amqp://", "localhost:5672 (vhost /)"),
        ("memory://", "memory://"),
    ],
)
def test_the_address_shown_names_host_port_and_vhost_and_never_the_password(url, address):
    shown = broker_address(AmqpSettings(url=url))
    assert shown == address and "s3cret" not in shown


@pytest.mark.parametrize("url", ["jm:s3cret@rabbit:5672/", "rabbit", "http://jm:s3cret@rabbit"])
def test_a_url_of_no_broker_scheme_is_refused_without_showing_it(url):
    # kombu would take it for a host name, and every message about the broker would show it
    with pytest.raises(ValidationError, match="must start with one of amqp://") as refused:
        Settings(_env_file=None, amqp={"url": url})
    assert "s3cret" not in str(refused.value) and url not in str(refused.value)
    assert AmqpSettings(url="AMQPS://jm:s3cret@rabbit").url  # a scheme in capitals is one


def test_the_login_is_the_urls_user_or_guest_and_nobody_in_memory():
    assert broker_user(AmqpSettings(url="amqp://jm%40shop:s3cret@rabbit//")) == "jm@shop"
    assert broker_user(AmqpSettings(url="amqp://rabbit//")) == "guest"  # as kombu's default
    assert broker_user(AmqpSettings(url="memory://")) is None


def test_tls_verifies_the_broker_whenever_asked_by_the_url_or_the_setting(tmp_path):
    assert tls_options(AmqpSettings(url="amqp://rabbit//")) is None
    for settings in (
        AmqpSettings(url="amqps://rabbit//"),
        AmqpSettings(url="amqp://rabbit//", ssl=True),
    ):
        # no host name given: kombu fills in the URL's, which turns the host check on
        assert tls_options(settings) == {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}
    mutual = AmqpSettings(
        url="amqps://rabbit//",
        ssl_ca_file=tmp_path / "ca.pem",
        ssl_cert_file=tmp_path / "worker.pem",
        ssl_key_file=tmp_path / "worker.key",
        ssl_server_hostname="rabbit.internal",
    )
    assert tls_options(mutual) == {
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": "rabbit.internal",
        "ca_certs": str(tmp_path / "ca.pem"),
        "certfile": str(tmp_path / "worker.pem"),
        "keyfile": str(tmp_path / "worker.key"),
    }
    key_in_certificate = AmqpSettings(url="amqps://rabbit//", ssl_cert_file=tmp_path / "both.pem")
    assert tls_options(key_in_certificate)["keyfile"] is None


def test_a_connection_waits_for_the_broker_to_take_each_message_and_beats_its_heart():
    plain = connect(AmqpSettings(url="amqp://jm:s3cret@rabbit//", heartbeat_seconds=15))
    assert plain.transport_options["confirm_publish"] is True  # else a lost publish looks sent
    assert plain.heartbeat == 15 and not plain.ssl
    secure = AmqpSettings(url="amqps://jm:s3cret@rabbit//")
    assert connect(secure).ssl == tls_options(secure)  # verified, as above
