"""Behind load balancers: the PROXY protocol (v1, v2) before the TLS handshake, and
forwarded certificates trusted only from proxies that prove who they are."""
from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import struct
import urllib.parse
from pathlib import Path

import pytest
import yaml
from support import PKIFiles, ServerProcess, client_context, raw_https, status_of

from securewsgi.config import load_config
from securewsgi.errors import ConfigError
from securewsgi.proxyprotocol import V2_SIGNATURE, ProxyHeaderError, parse_v1, parse_v2

APPS = str(Path(__file__).parent / "apps")
GET = b"GET /who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def v1(source: str, port: int) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    dest = "::1" if family == "TCP6" else "127.0.0.1"
    return f"PROXY {family} {source} {dest} {port} 8443\r\n".encode()


def v2(source: str, port: int, command: int = 0x21) -> bytes:
    address = ipaddress.ip_address(source)
    if address.version == 4:
        body = struct.pack("!4s4sHH", address.packed, bytes([127, 0, 0, 1]), port, 8443)
        family = 0x11
    else:
        body = struct.pack("!16s16sHH", address.packed, ipaddress.IPv6Address("::1").packed,
                           port, 8443)
        family = 0x21
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(body)) + body


# ------------------------------------------------------------------- the parsers


def test_parse_v1_and_v2() -> None:
    assert parse_v1(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 443\r\n") == ("192.0.2.7", 5555)
    assert parse_v1(b"PROXY TCP6 2001:db8::7 ::1 5555 443\r\n") == ("2001:db8::7", 5555)
    assert parse_v1(b"PROXY UNKNOWN\r\n") is None
    fixed = v2("198.51.100.9", 4242)
    assert parse_v2(fixed[:16], fixed[16:]) == ("198.51.100.9", 4242)
    fixed = v2("2001:db8::9", 4242)
    assert parse_v2(fixed[:16], fixed[16:]) == ("2001:db8::9", 4242)
    local = V2_SIGNATURE + bytes([0x20, 0x00]) + b"\x00\x00"
    assert parse_v2(local, b"") is None


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.0.2.7 127.0.0.1 5555\r\n",       # missing a port
    b"PROXY TCP4 2001:db8::1 127.0.0.1 5555 443\r\n",  # family mismatch
    b"PROXY TCP4 192.0.2.300 127.0.0.1 5555 443\r\n",  # not an address
    b"PROXY TCP4 192.0.2.7 127.0.0.1 65536 443\r\n",   # port out of range
    b"PROXY TCP4 192.0.2.7 127.0.0.1 05555 443\r\n",   # leading zero
    b"PROXY UDP4 192.0.2.7 127.0.0.1 5555 443\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 443\n",
])
def test_parse_v1_refuses_malformed_lines(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_v1(line)


# ------------------------------------------------------------ through the server


@pytest.fixture(scope="module")
def behind_haproxy(start_server, test_pki: PKIFiles) -> ServerProcess:
    return start_server({"tls": test_pki.tls_section("mutual"),
                         "server": {"proxy_protocol": True, "handshake_timeout": 2},
                         "identity": {"trusted_proxies": ["127.0.0.1/32"]},
                         "app": {"factory": "echo:app", "python_path": [APPS]}},
                        name="proxyproto")


def _through_proxy(server: ServerProcess, test_pki: PKIFiles, header: bytes,
                   host: str = "127.0.0.1") -> bytes:
    """What HAProxy in TCP mode does: connect, send the PROXY header, then the client's
    own TLS bytes (here: our TLS client on the same socket)."""
    ctx = client_context(test_pki.ca_pem, test_pki.clients["alice"])
    with socket.create_connection((host, server.port), timeout=10) as sock:
        sock.sendall(header)
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(GET)
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return data


@pytest.mark.parametrize("make", [v1, v2], ids=["v1", "v2"])
@pytest.mark.parametrize("source", ["203.0.113.5", "2001:db8::5"])
def test_proxy_header_sets_the_client_address(behind_haproxy, test_pki, make,
                                              source: str) -> None:
    response = _through_proxy(behind_haproxy, test_pki, make(source, 40123))
    assert status_of(response) == 200
    env = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert env["REMOTE_ADDR"] == source
    assert env["REMOTE_PORT"] == "40123"
    assert env["SSL_CLIENT_S_DN"] == "CN=alice"  # the backend verified the client itself
    assert f" {source} alice TLSv1.3 " in behind_haproxy.wait_log(source, stream="stdout")


def test_v2_local_command_keeps_the_proxy_address(behind_haproxy, test_pki) -> None:
    response = _through_proxy(behind_haproxy, test_pki,
                              V2_SIGNATURE + bytes([0x20, 0x00]) + b"\x00\x00")
    env = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert env["REMOTE_ADDR"] == "127.0.0.1"


def test_trusted_proxy_must_send_the_header(behind_haproxy, test_pki) -> None:
    with pytest.raises((ssl.SSLError, OSError)):
        _through_proxy(behind_haproxy, test_pki, b"")
    behind_haproxy.wait_log("PROXY header refused: proxy=127.0.0.1:\\d+ reason=expected a "
                            "PROXY protocol header")


def test_proxy_header_from_an_untrusted_address_is_not_believed(start_server,
                                                                test_pki) -> None:
    server = start_server({"tls": test_pki.tls_section("mutual"),
                           "server": {"proxy_protocol": True},
                           "identity": {"trusted_proxies": ["10.0.0.0/8"]},
                           "app": {"factory": "echo:app", "python_path": [APPS]}},
                          name="proxyproto-untrusted")
    with pytest.raises((ssl.SSLError, OSError)):
        _through_proxy(server, test_pki, v1("203.0.113.5", 1))
    server.wait_log("TLS handshake failed: client=127.0.0.1")
    response = _through_proxy(server, test_pki, b"")  # a direct client still works
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["REMOTE_ADDR"] == "127.0.0.1"


def test_proxy_protocol_needs_trusted_proxies(tmp_path, test_pki) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"tls": test_pki.tls_section("server"),
                                    "server": {"proxy_protocol": True},
                                    "app": {"factory": "securewsgi.demo:app"}}))
    with pytest.raises(ConfigError, match=r"server\.proxy_protocol: needs identity\."):
        load_config(path)


# ----------------------------------------------------- proxies that prove who they are


@pytest.fixture(scope="module")
def identity_checked(start_server, test_pki: PKIFiles) -> ServerProcess:
    """Trusts forwarded certificates only from 127.0.0.1 *and* a proxy certificate CN=bob."""
    return start_server({"tls": test_pki.tls_section("mutual"),
                         "identity": {"trusted_proxies": ["127.0.0.0/8"],
                                      "trusted_proxy_identities": [{"cn": "bob"}]},
                         "app": {"factory": "echo:app", "python_path": [APPS]}},
                        name="proxy-identities")


def _forwarding(server: ServerProcess, test_pki: PKIFiles, proxy: str, forwarded: str) -> dict:
    pem = urllib.parse.quote(test_pki.clients[forwarded].cert.read_text(), safe="")
    request = (f"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
               f'X-Forwarded-Client-Cert: Cert="{pem}"\r\n\r\n').encode()
    response = raw_https(server, request, client_context(test_pki.ca_pem,
                                                         test_pki.clients[proxy]))
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def test_forwarded_certificate_from_the_proxy_identity(identity_checked, test_pki) -> None:
    env = _forwarding(identity_checked, test_pki, "bob", "alice")
    assert env["SSL_CLIENT_S_DN"] == "CN=alice"
    assert env["securewsgi.peer.source"] == "proxy"


def test_forwarded_certificate_from_another_client_at_a_trusted_address(identity_checked,
                                                                        test_pki) -> None:
    """Right address, wrong certificate: the header is dropped, the caller is itself."""
    env = _forwarding(identity_checked, test_pki, "alice", "bob")
    assert env["SSL_CLIENT_S_DN"] == "CN=alice"
    assert env["securewsgi.peer.source"] == "tls"
    assert "HTTP_X_FORWARDED_CLIENT_CERT" not in env
