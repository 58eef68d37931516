"""``TRUSTED_PROXIES`` (``ironfunctions.http.proxies``, SPEC §9): forwarding headers set
``REQUEST_URL``'s scheme and host and reach the function from a trusted peer only; from
anyone else they are dropped."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from ironfunctions.config_parsers import parse_cidrs
from ironfunctions.http.hosts import peer_host, valid_host
from ironfunctions.http.proxies import TrustedProxies, forwarded, is_forwarding

PROXIES = TrustedProxies(parse_cidrs("TRUSTED_PROXIES", "10.0.0.0/8, 2001:db8::/32, 192.0.2.7"))
SPOOF = {"X-Forwarded-Proto": ["https"], "X-Forwarded-Host": ["fn.example.com"],
         "X-Forwarded-For": ["6.6.6.6"], "Forwarded": ["for=6.6.6.6;proto=https"],
         "X-Forwarded-Port": ["443"], "X-Real-Ip": ["6.6.6.6"], "X-Other": ["kept"]}


@pytest.mark.parametrize("peer", ["10.0.0.1", "10.255.255.254", "192.0.2.7", "2001:db8::1", "2001:DB8:0::9",
                                  "::ffff:10.1.2.3", "::ffff:192.0.2.7"])
def test_peers_inside_the_networks_are_trusted(peer: str) -> None:
    assert PROXIES.trusts(peer)


@pytest.mark.parametrize("peer", ["11.0.0.1", "9.255.255.255", "192.0.2.8", "127.0.0.1", "::1", "2001:db9::1",
                                  "::ffff:11.0.0.1", "::ffff:a00:1:0", "fe80::1%eth0", "", "not an ip", None])
def test_peers_outside_the_networks_or_without_an_address_are_not(peer: str | None) -> None:
    assert not PROXIES.trusts(peer)


def test_with_no_networks_nobody_is_trusted() -> None:
    assert not TrustedProxies().trusts("127.0.0.1")
    assert not TrustedProxies(()).trusts("10.0.0.1")


def test_a_mapped_network_trusts_the_mapped_peer_as_written() -> None:
    mapped = TrustedProxies(parse_cidrs("TRUSTED_PROXIES", "::ffff:10.0.0.0/104"))
    assert mapped.trusts("::ffff:10.9.9.9") and not mapped.trusts("::ffff:11.0.0.1")


def test_verdicts_are_cached_and_the_cache_is_bounded() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    for i in range(30_000):
        proxies.trusts(f"11.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(proxies._verdicts) <= 10_000
    assert proxies.trusts("10.1.1.1") and not proxies.trusts("11.0.0.0")


def test_a_trusted_proxy_sets_scheme_and_host_and_its_headers_reach_the_function() -> None:
    scheme, host, headers = forwarded(PROXIES, "10.1.2.3", dict(SPOOF), valid_host)
    assert (scheme, host) == ("https", "fn.example.com")
    assert headers == SPOOF


def test_from_an_untrusted_peer_every_forwarding_header_is_dropped() -> None:
    scheme, host, headers = forwarded(PROXIES, "11.1.2.3", dict(SPOOF), valid_host)
    assert (scheme, host) == (None, None)
    assert headers == {"X-Other": ["kept"]}


def test_a_unix_socket_peer_is_not_trusted() -> None:
    assert forwarded(PROXIES, None, dict(SPOOF), valid_host) == (None, None, {"X-Other": ["kept"]})


def test_with_no_trusted_proxies_forwarding_headers_are_dropped() -> None:
    assert forwarded(TrustedProxies(), "10.1.2.3", dict(SPOOF), valid_host) == (None, None, {"X-Other": ["kept"]})


def test_without_forwarding_headers_the_headers_are_returned_as_they_are() -> None:
    headers = {"Host": ["h"], "X-Forwarded": ["not a forwarding header"], "Content-Type": ["a/b"]}
    for peer in ("10.1.2.3", "11.1.2.3", None):
        result = forwarded(PROXIES, peer, headers, valid_host)
        assert result[:2] == (None, None)
    assert forwarded(PROXIES, "11.1.2.3", headers, valid_host)[2] == headers  # X-Forwarded is no such header
    plain = {"Host": ["h"], "Content-Type": ["a/b"]}
    assert forwarded(PROXIES, "11.1.2.3", plain, valid_host)[2] is plain  # no copy in the common case


@pytest.mark.parametrize(("values", "scheme"), [
    (["https"], "https"), (["HTTPS"], "https"), (["http"], "http"), ([" https "], "https"),
    (["http, https"], "https"), (["https,http"], "http"), (["https", "http"], "http"), (["http", "https"], "https"),
    (["ftp"], None), (["javascript"], None), (["https, ftp"], None), (["https,"], None), ([""], None),
    (["https://x"], None), ([], None),
])
def test_the_last_proto_counts_and_only_http_or_https(values: list[str], scheme: str | None) -> None:
    assert forwarded(PROXIES, "10.0.0.1", {"X-Forwarded-Proto": values}, valid_host)[0] == scheme


@pytest.mark.parametrize(("values", "host"), [
    (["fn.example.com"], "fn.example.com"), (["fn.example.com:8443"], "fn.example.com:8443"),
    (["[2001:db8::1]:443"], "[2001:db8::1]:443"), (["a.example, b.example"], "b.example"),
    (["a.example", "b.example"], "b.example"), (["evil.example/r/app/admin?"], None),
    (["user@fn.example"], None), (["fn example"], None), (["a.example, "], None), (["x" * 300], None),
])
def test_the_last_host_counts_and_only_a_plain_host_port(values: list[str], host: str | None) -> None:
    assert forwarded(PROXIES, "10.0.0.1", {"X-Forwarded-Host": values}, valid_host)[1] == host


def test_forwarded_is_passed_on_but_not_read_for_the_url() -> None:
    headers = {"Forwarded": ["for=1.2.3.4;proto=https;host=fn.example"]}
    assert forwarded(PROXIES, "10.0.0.1", headers, valid_host) == (None, None, headers)


@pytest.mark.parametrize("name", ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port",
                                  "X-Forwarded-Prefix", "Forwarded", "X-Real-Ip"])
def test_forwarding_header_names(name: str) -> None:
    assert is_forwarding(name)


@pytest.mark.parametrize("name", ["X-Forwarded", "Host", "X-Forwardedfor", "Content-Type", "X-Real"])
def test_other_header_names(name: str) -> None:
    assert not is_forwarding(name)


def test_peer_host_of_each_kind_of_address() -> None:
    assert peer_host(IPv4Address("TCP", "10.1.2.3", 4000)) == "10.1.2.3"
    assert peer_host(IPv6Address("TCP", "::1", 4000)) == "::1"
    assert peer_host(UNIXAddress(b"/tmp/sock")) is None
    assert peer_host(UNIXAddress(None)) is None
    assert peer_host(None) is None
