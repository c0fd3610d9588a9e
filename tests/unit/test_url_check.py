"""A job reaches only the API (promise 8, SPEC "Security of a job"): the allow-list and the URL check.

Every accepted URL is followed to where requests would really connect: the request is prepared with requests and
the connection pool key is taken from requests' own HTTPAdapter (the host and port it opens a socket to), and
checked against urllib3's reading of the prepared URL.
"""

from __future__ import annotations

import re

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter
from urllib3.util import parse_url

from throttler.core.errors import ConfigError, InvalidJob
from throttler.tasks.url import AllowedHost, AllowList, check_url, connect_target, endpoint_target, url_target

DEFAULT_PORTS = {"http": 80, "https": 443}
PROD = AllowList.parse(["api.example.com", "partner.example:8443"], "prod")
LOCAL = AllowList.parse(["http://127.0.0.1:*", "http://localhost:*"], "local")


def where_requests_connects(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of the socket requests would open for this URL."""
    prepared = requests.Request("GET", url).prepare()
    host_params, _ = HTTPAdapter().build_connection_pool_key_attributes(prepared, verify=True)
    scheme, host, port = host_params["scheme"], host_params["host"], host_params["port"] or DEFAULT_PORTS[host_params["scheme"]]
    seen_by_urllib3 = parse_url(prepared.url or "")
    assert (seen_by_urllib3.scheme, (seen_by_urllib3.host or "").strip("[]"), seen_by_urllib3.port or DEFAULT_PORTS[scheme]) == (
        scheme, host, port)
    return scheme, f"[{host}]" if ":" in host else host, port


# ------------------------------------------------------------------------------------------ the allow-list
@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("api.example.com", AllowedHost("api.example.com")),
        ("API.Example.COM", AllowedHost("api.example.com")),
        ("api.example.com:8443", AllowedHost("api.example.com", port=8443)),
        ("api.example.com:*", AllowedHost("api.example.com", any_port=True)),
        ("https://api.example.com", AllowedHost("api.example.com")),
        ("http://127.0.0.1", AllowedHost("127.0.0.1", plain_http=True)),
        ("http://127.0.0.1:8080", AllowedHost("127.0.0.1", plain_http=True, port=8080)),
        ("http://localhost:*", AllowedHost("localhost", plain_http=True, any_port=True)),
        ("[::1]:8443", AllowedHost("[::1]", port=8443)),
        ("[0:0::1]", AllowedHost("[::1]")),
        ("bücher.example", AllowedHost("xn--bcher-kva.example")),
        ("  api.example.com  ", AllowedHost("api.example.com")),
    ],
)
def test_allow_list_entries_parse_to_exact_hosts(entry: str, expected: AllowedHost) -> None:
    assert AllowList.parse([entry], "dev").hosts == (expected,)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("*", "local stage only"),
        ("*.example.com", "no wildcards"),
        ("api.example.com.", "trailing dot"),
        ("127.1", "four decimal numbers"),
        ("0x7f000001", "four decimal numbers"),
        ("2130706433", "four decimal numbers"),
        ("0177.0.0.1", "four decimal numbers"),
        ("ftp://api.example.com", "http:// or https://"),
        ("api.example.com:0", "port"),
        ("api.example.com:65536", "port"),
        ("api.example.com:http", "port"),
        ("user@api.example.com", "expected host"),
        ("api.example.com/v1", "expected host"),
        ("api example.com", "expected host"),
        ("api.example.com\\x", "expected host"),
        ("[::1", "expected host"),
        ("[fe80::1%eth0]", "zone"),
        ("[not-v6]", "IPv6"),
        ("-api.example.com", "not a valid host name"),
        ("http://", "no host"),
        ("a:1:2", "expected host"),
    ],
)
def test_a_malformed_allow_list_entry_is_a_config_error_with_a_reason(entry: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        AllowList.parse(["api.example.com", entry], "prod")
    assert "ALLOWED_HOSTS" in str(info.value) and "\n" not in str(info.value)


def test_any_host_only_on_the_local_stage() -> None:
    assert AllowList.parse(["*"], "local").permits("http", "anything.example", 8080)
    for stage in ("dev", "staging", "prod", ""):
        with pytest.raises(ConfigError, match="local stage only"):
            AllowList.parse(["*"], stage)


def test_default_port_always_other_ports_only_when_named_plain_http_only_when_said() -> None:
    allow = AllowList.parse(["api.example.com:8443", "http://plain.example", "any.example:*"], "prod")
    assert allow.permits("https", "api.example.com", 443) and allow.permits("https", "api.example.com", 8443)
    assert not allow.permits("https", "api.example.com", 8444) and not allow.permits("http", "api.example.com", 80)
    assert allow.permits("http", "plain.example", 80) and allow.permits("https", "plain.example", 443)
    assert not allow.permits("http", "plain.example", 8080)
    assert allow.permits("https", "any.example", 1) and not allow.permits("http", "any.example", 80)
    assert not allow.permits("https", "sub.api.example.com", 443)


# ------------------------------------------------------------------------------------------ hostile URLs
# Parser-differential payloads, from published lists:
# - [PATT] swisskyrepo/PayloadsAllTheThings, "Server Side Request Forgery/README.md": decimal, octal and hex IPs,
#   IPv6/IPv4 embedding, "rare address" shorthand, enclosed alphanumerics, "tricks combination", and
#   "Bypass against a weak parser" taken from Orange Tsai, "A New Era of SSRF - Exploiting URL Parser in Trending
#   Programming Languages" (Black Hat USA 2017).
# - [CLAROTY] Claroty Team82 and Snyk, "Exploiting URL Parsing Confusion" (2022): scheme confusion, slashes
#   confusion, backslash confusion, URL-encoded data confusion.
# - [PORTSWIGGER] PortSwigger Web Security Academy, "SSRF with whitelist-based input filter" (`%2523@`, `#@`).
# - [CVE-2023-24329] urllib.parse.urlsplit and leading blanks.
# - [ISSUE] issue 9's own reproduction (`\@` reaching 127.0.0.1 and the Lambda runtime API on :9001).
# Each row: the URL and either the reason's key words (refused) or, for an accepted URL, the (scheme, host,
# port) that requests then connects to.
API = ("https", "api.example.com", 443)
REFUSED_OR_CONNECTS: list[tuple[AllowList, str, str | tuple[str, str, int]]] = [
    # backslash confusion [ISSUE] [PATT weak parser] [CLAROTY]
    (PROD, "http://127.0.0.1:9001\\@api.example.com/steal", "backslash"),
    (PROD, "https://127.1.1.1:80\\@api.example.com/", "backslash"),
    (PROD, "https://127.1.1.1:80\\@@api.example.com/", "backslash"),
    (PROD, "https://127.1.1.1:80:\\@@api.example.com/", "backslash"),
    (PROD, "https://127.1.1.1:80#\\@api.example.com/", "backslash"),
    (PROD, "https://evil.example\\.api.example.com/", "backslash"),
    (PROD, "https://api.example.com\\@evil.example/", "backslash"),
    (LOCAL, "http://127.0.0.1:9001\\@localhost/2018-06-01/runtime/invocation/next", "backslash"),
    # userinfo and `@` in odd places [PATT] [PORTSWIGGER]
    (PROD, "https://api.example.com@evil.example/", "userinfo"),
    (PROD, "https://evil.example@api.example.com/", "userinfo"),
    (PROD, "https://api.example.com:443@evil.example/", "userinfo"),
    (PROD, "https://user:pass@api.example.com/", "userinfo"),
    (PROD, "https://@api.example.com/", "userinfo"),
    (PROD, "https://foo@evil.example:80@api.example.com/", "userinfo"),
    (PROD, "https://localhost:80%2523@api.example.com/admin", "userinfo"),
    (PROD, "https://api.example.com%2f@evil.example/", "userinfo"),
    # fragments and queries that hide an `@` [PATT tricks combination] [PORTSWIGGER]
    (PROD, "https://1.1.1.1 &@2.2.2.2# @3.3.3.3/", "whitespace"),
    (PROD, "https://evil.example#@api.example.com/", "not in ALLOWED_HOSTS"),
    (PROD, "https://evil.example?@api.example.com/", "not in ALLOWED_HOSTS"),
    (PROD, "https://api.example.com#@evil.example/", API),
    (PROD, "https://api.example.com?@evil.example/", API),
    (PROD, "https://api.example.com/@evil.example/", API),
    (LOCAL, "http://localhost:8080#@evil.example/", ("http", "localhost", 8080)),
    # whitespace and control characters [CVE-2023-24329] [CLAROTY]
    (PROD, " https://api.example.com/", "whitespace"),
    (PROD, "https://api.example.com/\t", "whitespace"),
    (PROD, "https://api.exa\nmple.com/", "whitespace"),
    (PROD, "https://api.example.com\x00.evil.example/", "control character"),
    (PROD, "https://api.example.com\r\nHost: evil.example/", "control character"),
    (PROD, "https://api.example.com/\u200b", "control character"),
    (PROD, "https://api.example.com\u3000/", "whitespace"),
    (PROD, "https://api.example.com/x\u202e", "control character"),
    # percent-encoded hosts [CLAROTY URL-encoded data confusion]
    (PROD, "https://%61pi.example.com/", "percent-encoded"),
    (PROD, "https://api%2eexample%2ecom/", "percent-encoded"),
    (PROD, "https://api.example.com%00.evil.example/", "percent-encoded"),
    (PROD, "https://api.example.com%40evil.example/", "percent-encoded"),
    (PROD, "https://[fe80::1%25eth0]/", "percent-encoded"),
    # IDNA and look-alikes [PATT enclosed alphanumerics]
    (PROD, "https://\u24d0\u24df\u24d8.example.com/", "invalid host"),
    (PROD, "https://api\u3002example\u3002com/", "invalid host"),
    (PROD, "https://\uff41\uff50\uff49.example.com/", "invalid host"),
    (PROD, "https://\u0430pi.example.com/", "not in ALLOWED_HOSTS"),  # Cyrillic a
    (PROD, "https://API.EXAMPLE.COM/", API),
    # trailing dots and suffix tricks
    (PROD, "https://api.example.com./", "not in ALLOWED_HOSTS"),
    (PROD, "https://api.example.com../", "not in ALLOWED_HOSTS"),
    (PROD, "https://api.example.com.evil.example/", "not in ALLOWED_HOSTS"),
    (PROD, "https://evilapi.example.com/", "not in ALLOWED_HOSTS"),
    (LOCAL, "http://localhost.:8080/", "not in ALLOWED_HOSTS"),
    # decimal, hex, octal, shorthand IPv4 [PATT]
    (PROD, "https://2130706433/", "not in ALLOWED_HOSTS"),
    (PROD, "https://0x7f000001/", "not in ALLOWED_HOSTS"),
    (PROD, "https://0177.0.0.1/", "not in ALLOWED_HOSTS"),
    (PROD, "https://127.1/", "not in ALLOWED_HOSTS"),
    (PROD, "https://0/", "not in ALLOWED_HOSTS"),
    (PROD, "https://169.254.169.254/latest/meta-data/", "not in ALLOWED_HOSTS"),
    (LOCAL, "http://127.1:8080/", "not in ALLOWED_HOSTS"),
    (LOCAL, "http://0x7f.0.0.1/", "not in ALLOWED_HOSTS"),
    (LOCAL, "http://2130706433:8080/", "not in ALLOWED_HOSTS"),
    (LOCAL, "http://127.000.000.001/", "not in ALLOWED_HOSTS"),
    (LOCAL, "http://127.0.0.2/", "not in ALLOWED_HOSTS"),
    (LOCAL, "http://0.0.0.0:8080/", "not in ALLOWED_HOSTS"),
    # IPv6 and IPv4-mapped forms [PATT]
    (PROD, "https://[::1]/", "not in ALLOWED_HOSTS"),
    (PROD, "https://[::]/", "not in ALLOWED_HOSTS"),
    (PROD, "https://[::ffff:127.0.0.1]/", "not in ALLOWED_HOSTS"),
    (PROD, "https://[0:0:0:0:0:ffff:127.0.0.1]/", "not in ALLOWED_HOSTS"),
    (LOCAL, "http://[::1]:8080/", "not in ALLOWED_HOSTS"),
    (LOCAL, "http://[::ffff:127.0.0.1]:8080/", "not in ALLOWED_HOSTS"),
    # ports
    (PROD, "https://api.example.com:8443/", "port 8443"),
    (PROD, "https://api.example.com:0/", "port 0"),
    (PROD, "https://api.example.com:65536/", "invalid host or port"),
    (PROD, "https://api.example.com:+443/", "invalid host or port"),
    (PROD, "https://api.example.com:443:80/", "invalid host or port"),
    (PROD, "https://partner.example:8444/", "port 8444"),
    (PROD, "https://api.example.com:443/", API),
    (PROD, "https://api.example.com:0443/", API),
    (PROD, "https://api.example.com:/", API),
    (PROD, "https://partner.example:8443/v1", ("https", "partner.example", 8443)),
    (LOCAL, "http://127.0.0.1:8080/x", ("http", "127.0.0.1", 8080)),
    (LOCAL, "https://127.0.0.1:8443/", ("https", "127.0.0.1", 8443)),
    # schemes and slashes [CLAROTY scheme and slashes confusion] [PATT filter_var, jar]
    (PROD, "http://api.example.com/", "plain http"),
    (PROD, "hTTp://api.example.com/", "plain http"),
    (PROD, "ftp://api.example.com/", "scheme 'ftp'"),
    (PROD, "file:///etc/passwd", "scheme 'file'"),
    (PROD, "gopher://api.example.com:25/_x", "scheme 'gopher'"),
    (PROD, "httpss://api.example.com/", "scheme 'httpss'"),
    (PROD, "//api.example.com/", "absolute URL"),
    (PROD, "https:/api.example.com/", "absolute URL"),
    (PROD, "https:api.example.com/", "absolute URL"),
    (PROD, "https:///api.example.com/", "no host"),
    (PROD, "jar:https://api.example.com!/", "absolute URL"),
    (PROD, "0://evil.example:80;http://api.example.com:80/", "absolute URL"),
    (PROD, "api.example.com/x", "absolute URL"),
    (PROD, "HTTPS://api.example.com/", API),
    (PROD, "https://api.example.com/a/../../x?q=1#f", API),
]


@pytest.mark.parametrize(("allow", "url", "expected"), REFUSED_OR_CONNECTS, ids=[repr(r[1])[:60] for r in REFUSED_OR_CONNECTS])
def test_hostile_url_is_refused_with_a_reason_or_connects_only_to_the_allowed_host(
    allow: AllowList, url: str, expected: str | tuple[str, str, int]
) -> None:
    if isinstance(expected, str):
        with pytest.raises(InvalidJob) as info:
            check_url(url, allow)
        reason = str(info.value)
        assert expected in reason and "\n" not in reason and len(reason) < 200
        return
    checked = check_url(url, allow)
    assert where_requests_connects(checked.url) == expected == (checked.scheme, checked.host, checked.port)
    # The rebuilt URL carries nothing the checked parts do not: no userinfo, no fragment.
    assert "#" not in checked.url and parse_url(checked.url).auth is None


def test_the_table_is_large_enough() -> None:
    assert len(REFUSED_OR_CONNECTS) >= 40


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://api.example.com/a b\\c", "whitespace or a control character (U+0020) at position 25"),
        ("https://api.example.com/a\\b c", "backslash at position 25"),
        ("https://api.example.com/\u00e4\x7f\\", "whitespace or a control character (U+007F) at position 25"),
        ("https://api.example.com/\u00e4\\\x7f", "backslash at position 25"),
    ],
)
def test_the_first_unfit_character_is_named_with_its_position(url: str, reason: str) -> None:
    with pytest.raises(InvalidJob, match=re.escape(reason)):
        check_url(url, PROD)


def test_the_url_sent_is_rebuilt_from_the_checked_parts() -> None:
    checked = check_url("HTTPS://API.example.com:443/a/./b/../c?x=1&y=@z#frag", PROD)
    assert checked.url == "https://api.example.com/a/c?x=1&y=@z"
    assert check_url("https://b\u00fccher.example/\u00e4", AllowList.parse(["b\u00fccher.example"], "prod")).url == (
        "https://xn--bcher-kva.example/%C3%A4")


# ------------------------------------------------------------------------------------------ the property
# Entries the property test allows, as an oracle independent of AllowList: (scheme, host) -> allowed ports
# (None: any port).
ORACLE_ALLOW = AllowList.parse(
    ["api.example.com", "partner.example:8443", "http://127.0.0.1:*", "http://localhost:8080", "[::1]:*", "b\u00fccher.example"],
    "dev")
ORACLE: dict[tuple[str, str], set[int] | None] = {
    ("https", "api.example.com"): {443},
    ("https", "partner.example"): {443, 8443},
    ("http", "127.0.0.1"): None,
    ("https", "127.0.0.1"): None,
    ("http", "localhost"): {80, 8080},
    ("https", "localhost"): {443, 8080},
    ("https", "[::1]"): None,
    ("https", "xn--bcher-kva.example"): {443},
}

ALLOWED_HOSTS_SPELLED = ["api.example.com", "API.Example.Com", "partner.example", "127.0.0.1", "localhost", "[::1]",
                         "b\u00fccher.example", "xn--bcher-kva.example"]
HOSTILE_HOSTS = [
    "evil.example", "api.example.com.", "api.example.com.evil.example", "127.1", "127.0.0.2", "0x7f000001", "2130706433",
    "0177.0.0.1", "[::ffff:127.0.0.1]", "[0:0::1]", "%61pi.example.com", "\u24d0pi.example.com", "\u0430pi.example.com",
    "169.254.169.254", "0", "[::]", "localhost.", "api\u3002example.com",
]
SAFE_PIECES = ["/", "/v1", "/a/../b", "/@evil.example", "?q=1", "?@evil.example", "#@evil.example", "&x=%40", "/%2f", "/\u00e4",
               "//x"]
HOSTILE_PIECES = ["\\", "%", "%5c", "%00", " ", "\t", "\n", "\r", "\x00", "\u200b", ":80", ":8443", "[", "]", ";", ".", "a", "@",
                  "@evil.example", "\\@evil.example", ":443@127.0.0.1", "%2523@evil.example", ".evil.example", "\u3002evil"]


@st.composite
def urls(draw: st.DrawFn) -> str:
    """Mostly well-formed URLs to allowed hosts, with each part swapped for a hostile one now and then, so that
    the property holds on many accepted URLs, not only on refusals."""

    def part(safe: list[str], hostile: list[str]) -> str:
        return draw(st.sampled_from(hostile if draw(st.integers(0, 9)) == 0 else safe))

    scheme = part(["https", "http"], ["HTTPS", "hTtP", "ftp", "", "https:", "jar:https", "gopher"])
    sep = part(["://"], [":/", ":///", "://\\", ":\\\\", "//", "", ":"])
    userinfo = part([""], ["user@", "@", "api.example.com@", "127.0.0.1:80@", "a:b@", "%40@", "x\\@", "evil.example#@"])
    host = part(ALLOWED_HOSTS_SPELLED, HOSTILE_HOSTS)
    odd_port = f":{draw(st.integers(0, 70000))}"
    port = part(["", "", ":443", ":80", ":8080", ":8443"], [":", ":0443", ":0", ":+1", ":*", ":65536", odd_port])
    tail = "".join(part(SAFE_PIECES, HOSTILE_PIECES) for _ in range(draw(st.integers(0, 4))))
    return f"{scheme}{sep}{userinfo}{host}{port}{tail}"


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None)
@given(url=st.one_of(urls(), urls(), st.text(max_size=60).map(lambda t: "https://api.example.com" + t),
                     st.text(max_size=60).map(lambda t: "http://127.0.0.1" + t)))
@example(url="http://127.0.0.1:9001\\@api.example.com/steal")
@example(url="https://api.example.com:443@127.0.0.1/")
@example(url="https://api.example.com#@127.0.0.1/")
def test_any_accepted_url_connects_to_an_allowed_host_port_and_scheme(url: str) -> None:
    try:
        checked = check_url(url, ORACLE_ALLOW)
    except InvalidJob as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    scheme, host, port = where_requests_connects(checked.url)
    assert (scheme, host, port) == (checked.scheme, checked.host, checked.port)
    # The check reads a target's authority once for all its jobs: the whole rebuilt URL reads the same.
    assert connect_target(checked.url) == (scheme, host, port)
    allowed_ports = ORACLE[(scheme, host)]  # KeyError: a host or scheme that no entry allows
    assert allowed_ports is None or port in allowed_ports
    # And requests, given the job's own URL, would have gone to the same place: the check does not "repair" a
    # URL into an allowed one.
    assert where_requests_connects(url) == (scheme, host, port)


# Producers and the throttler check a job's URL with `url_target`, whose verdict on an origin (scheme and authority)
# the allow-list keeps for every later job of that origin; the worker sends what `check_url` rebuilds.
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None)
@given(url=st.one_of(urls(), st.text(max_size=60).map(lambda t: "https://api.example.com" + t)))
def test_the_validation_and_the_worker_accept_and_refuse_the_same_urls_for_the_same_reason(url: str) -> None:
    fresh = AllowList.parse(["api.example.com", "partner.example:8443", "http://127.0.0.1:*", "http://localhost:8080",
                             "[::1]:*", "b\u00fccher.example"], "dev")
    try:
        target = url_target(url, ORACLE_ALLOW)  # a shared allow-list: most origins were judged before
    except InvalidJob as exc:
        with pytest.raises(InvalidJob) as info:
            check_url(url, fresh)
        assert str(info.value) == str(exc)
        return
    checked = check_url(url, fresh)
    assert (checked.scheme, checked.host, checked.port) == target


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://api.example.com/a b", "whitespace"),
        ("https://api.example.com/a\\@evil.example", "backslash"),
        ("https://api.example.com/\u200b", "control character"),
        ("https://api.example.com:8443/ok", "port 8443"),
        ("http://api.example.com/ok", "plain http"),
        ("https://api.example.com@evil.example/ok", "userinfo"),
    ],
)
def test_a_target_judged_before_does_not_let_an_unfit_url_of_it_pass(url: str, reason: str) -> None:
    allow = AllowList.parse(["api.example.com"], "prod")
    assert url_target("https://api.example.com/ok", allow) == API
    with pytest.raises(InvalidJob, match=reason):
        url_target(url, allow)
    with pytest.raises(InvalidJob, match=reason):
        check_url(url, allow)


# Found by the security review: the local allow-list `http://127.0.0.1:*` also covered the emulator itself (a job
# paused the stage through it), and a stage deployed with loopback entries let a job reach the Lambda runtime API.
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:4566/moto-api/reset",  # the stage's own AWS endpoint (AWS_ENDPOINT_URL)
        "http://localhost:4566/",
        "http://127.0.0.1:9001/2018-06-01/runtime/invocation/next",  # the Lambda runtime API
    ],
)
def test_the_stages_own_endpoint_and_the_lambda_runtime_are_never_called(url: str) -> None:
    allow = AllowList.parse(["http://127.0.0.1:*", "http://localhost:*"], "local", endpoint_target("http://127.0.0.1:4566"))
    with pytest.raises(InvalidJob, match="never called"):
        check_url(url, allow)
    assert check_url("http://127.0.0.1:8080/ok", allow).port == 8080


def test_the_metadata_service_is_never_called_even_with_any_host_allowed() -> None:
    allow = AllowList.parse(["*"], "local")
    with pytest.raises(InvalidJob, match="never called"):
        check_url("http://169.254.169.254/latest/meta-data/", allow)


@pytest.mark.parametrize("entry", ["localhost", "127.0.0.1", "http://127.0.0.1:*", "[::1]:*", "http://169.254.169.254", "*"])
def test_loopback_link_local_and_any_host_are_configuration_errors_inside_a_lambda_function(entry: str) -> None:
    with pytest.raises(ConfigError):
        AllowList.parse([entry], "local", in_lambda=True)
