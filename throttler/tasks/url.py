"""The http task's URL check: the stage's allow-list, urllib3's own parser, and a URL rebuilt from what was checked.

requests parses a URL with urllib3's `parse_url` and connects to the host of the URL it prepares. So the check
parses with that same function, refuses what parsers are known to read differently (userinfo, backslashes,
whitespace and control characters, percent-encoded hosts), compares the host to the allow-list as a string
(exact match: no DNS, no suffixes, no IP arithmetic) and hands back a URL rebuilt from the checked parts only,
which is the URL the request is sent to: what was checked is what is connected to.

Once a URL's characters have passed, whether it is refused depends only on its origin (scheme and authority, as
written): the allow-list keeps its verdict per origin, so the jobs of one API cost one parse, not one each.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from throttler.core.errors import ConfigError, InvalidJob

DEFAULT_PORTS = {"http": 80, "https": 443}
# Never called, whatever the allow-list says: the Lambda runtime API and the cloud's credential and metadata
# endpoints. (The composition adds the stage's own AWS endpoint and AWS_LAMBDA_RUNTIME_API.)
ALWAYS_DENIED = frozenset({
    ("127.0.0.1", 9001), ("localhost", 9001),
    ("169.254.169.254", 80), ("169.254.170.2", 80), ("[fd00:ec2::254]", 80),
})
_LOOPBACK_NAMES = frozenset({"localhost"})
MAX_URL_CHARS = 8192
LOCAL_STAGE = "local"

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_ENTRY = re.compile(r"(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?(?P<host>\[[^\]]*\]|[^:\[\]/@?#%\\\s]*)(?::(?P<port>[^:]*))?")
_DNS_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# What urllib3 (and inet_aton) read as an IPv4 address: 1 to 4 parts, decimal, octal or hex.
_IPV4_ISH = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}")
# Characters refused anywhere in a URL besides ASCII controls and space: other whitespace, format characters
# (zero-width, bidi overrides), surrogates, private-use and unassigned code points.
_UNFIT_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
# In ASCII text the characters `unfit_char` refuses, and the backslash: one scan in C instead of one call per character.
_UNFIT_ASCII = re.compile(r"[\x00-\x20\x7f\\]")
_AUTHORITY_END = re.compile(r"[/?#]")
VERDICTS_KEPT = 4096  # verdicts on origins (scheme and authority, as written) an allow-list remembers
Target = tuple[str, str, int]  # (scheme, host, port): where a request is connected to


@dataclass(frozen=True)
class AllowedHost:
    """One ALLOWED_HOSTS entry: an exact host, whether plain http is allowed, and which ports besides the default."""

    host: str  # lowercase ASCII: a DNS name, a dotted-quad IPv4 address, or a bracketed IPv6 address
    plain_http: bool = False  # the entry said `http://host`: http is allowed as well as https
    port: int | None = None  # a port allowed besides the scheme's default (`host:8443`)
    any_port: bool = False  # `host:*`

    def permits_scheme(self, scheme: str) -> bool:
        return scheme == "https" or (scheme == "http" and self.plain_http)

    def permits_port(self, scheme: str, port: int) -> bool:
        return port == DEFAULT_PORTS[scheme] or self.any_port or port == self.port


@dataclass(frozen=True)
class AllowList:
    """The hosts a job may call, parsed once from the stage's ALLOWED_HOSTS entries.

    Entries: `host`, `host:port`, `host:*` (https only), `http://host`, `http://host:port`, `http://host:*`
    (plain http too). The scheme's default port is always allowed for a listed host; another port only if an
    entry names it or says `*`. Hosts match exactly (after lowercasing and IDNA), never by suffix. A bare `*`
    (any host, either scheme, any port) is accepted on the local stage only.
    """

    hosts: tuple[AllowedHost, ...] = ()
    any_host: bool = False
    denied: frozenset[tuple[str, int]] = ALWAYS_DENIED
    # A verdict is a pure function of the (immutable) entries and the origin: each job of a target asks the same.
    _verdicts: dict[str, Target | str] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def parse(
        cls, entries: Iterable[str], stage: str, denied: Iterable[tuple[str, int]] = (), in_lambda: bool = False
    ) -> AllowList:
        """Raises ConfigError with a one-line reason for a malformed entry, `*` outside the local stage, or (in a
        Lambda function) a loopback or link-local host: there it is the runtime API or the metadata service.
        `denied`: (host, port) pairs refused whatever the entries say, besides ALWAYS_DENIED."""
        hosts: list[AllowedHost] = []
        any_host = False
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            if entry == "*":
                if stage != LOCAL_STAGE or in_lambda:
                    raise ConfigError(
                        f"ALLOWED_HOSTS entry '*' (any host) is allowed on the {LOCAL_STAGE} stage only, not in a Lambda"
                    )
                any_host = True
                continue
            allowed = _parse_entry(entry)
            if in_lambda and _inside_the_machine(allowed.host):
                raise ConfigError(f"ALLOWED_HOSTS entry {entry!r}: a loopback or link-local host inside a Lambda function")
            hosts.append(allowed)
        return cls(tuple(hosts), any_host, ALWAYS_DENIED | {(h.lower(), p) for h, p in denied})

    def permits(self, scheme: str, host: str, port: int) -> bool:
        if (host, port) in self.denied:
            return False
        if self.any_host:
            return scheme in DEFAULT_PORTS
        return any(e.host == host and e.permits_scheme(scheme) and e.permits_port(scheme, port) for e in self.hosts)

    def verdict(self, origin: str) -> Target | str:
        """Where a URL with this origin connects, or a one-line reason why it is refused (see `_read_origin`)."""
        verdicts = self._verdicts
        found = verdicts.get(origin)
        if found is None:
            if len(verdicts) >= VERDICTS_KEPT:
                verdicts.clear()
            found = verdicts[origin] = _read_origin(origin, self)
        return found

    def why_not(self, scheme: str, host: str, port: int) -> str:
        """A one-line reason why this target is refused ('' when it is allowed)."""
        if self.permits(scheme, host, port):
            return ""
        if (host, port) in self.denied:
            return f"{host}:{port} is the Lambda runtime, the metadata service or the stage's AWS endpoint: never called"
        same_host = [e for e in self.hosts if e.host == host]
        if not same_host:
            return f"host {host!r} is not in ALLOWED_HOSTS"
        if not any(e.permits_scheme(scheme) for e in same_host):
            return f"plain http to {host!r} is not allowed: ALLOWED_HOSTS lists it for https only"
        return f"port {port} of {host!r} is not in ALLOWED_HOSTS"


def _parse_entry(entry: str) -> AllowedHost:
    try:
        match = _ENTRY.fullmatch(entry)
        if match is None:
            raise ValueError("expected host, host:port, host:* or http://host[:port|:*]")
        scheme = (match["scheme"] or "https").lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError("the scheme must be http:// or https://")
        host = _entry_host(match["host"])
        port_text = match["port"]
        port: int | None = None
        if port_text is not None and port_text != "*":
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                raise ValueError("the port must be a number from 1 to 65535, or *")
            port = int(port_text)
    except ValueError as exc:
        raise ConfigError(f"ALLOWED_HOSTS entry {entry!r}: {exc}") from None
    return AllowedHost(host, plain_http=scheme == "http", port=port, any_port=port_text == "*")


def _entry_host(text: str) -> str:
    """The entry's host as urllib3 normalises a URL's host; ValueError says why it cannot be one."""
    if text.startswith("["):
        inner = text[1:-1]
        if "%" in inner:
            raise ValueError("an IPv6 zone id cannot be allowed")
        try:
            return f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            raise ValueError("not a valid IPv6 address") from None
    if not text:
        raise ValueError("no host")
    if "*" in text:
        raise ValueError("hosts match exactly: no wildcards (list each host)")
    if text.endswith("."):
        raise ValueError("no trailing dot: hosts match exactly")
    try:  # the same lowercasing and IDNA encoding that urllib3 applies to a URL's host
        host = parse_url(f"https://{text}/").host or ""
    except LocationParseError:
        raise ValueError("not a valid host name") from None
    if _IPV4_ISH.fullmatch(host):
        try:
            canonical = str(ipaddress.IPv4Address(host))
        except ValueError:
            canonical = ""
        if canonical != host:
            raise ValueError("write an IPv4 address as four decimal numbers (e.g. 127.0.0.1)")
        return host
    if not all(_DNS_LABEL.fullmatch(label) for label in host.split(".")):
        raise ValueError("not a valid host name")
    return host


def _inside_the_machine(host: str) -> bool:
    """A loopback or link-local host: the Lambda's runtime API, the metadata service, the container itself."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_loopback or address.is_link_local or address.is_unspecified


def endpoint_target(url: str | None) -> list[tuple[str, int]]:
    """(host, port) pairs of an endpoint URL or a `host:port` (AWS_ENDPOINT_URL, AWS_LAMBDA_RUNTIME_API), to deny;
    a loopback host is denied under each of its names."""
    if not url:
        return []
    try:
        parsed = parse_url(url if "://" in url else f"http://{url}")
    except LocationParseError:
        return []
    if not parsed.host:
        return []
    port = parsed.port or DEFAULT_PORTS.get(parsed.scheme or "http", 80)
    host = parsed.host.lower()
    if _inside_the_machine(host):
        return [(name, port) for name in ("127.0.0.1", "localhost", "[::1]", host)]
    return [(host, port)]


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed `check_url`: its parts as urllib3 read them, and `url` rebuilt from those parts alone
    (no userinfo, no fragment; the port only when it is not the scheme's default)."""

    scheme: str
    host: str  # lowercase ASCII, IPv6 in brackets: the host that is connected to
    port: int  # the port that is connected to
    path: str
    query: str | None = None

    @property
    def url(self) -> str:
        port = "" if self.port == DEFAULT_PORTS[self.scheme] else f":{self.port}"
        query = "" if self.query is None else f"?{self.query}"
        return f"{self.scheme}://{self.host}{port}{self.path}{query}"


def unfit_char(ch: str) -> bool:
    """Whitespace or a control, format, surrogate, private-use or unassigned character."""
    code = ord(ch)
    if code < 0x80:
        return code <= 0x20 or code == 0x7F
    return ch.isspace() or unicodedata.category(ch) in _UNFIT_CATEGORIES


def check_url(url: object, allow_list: AllowList) -> CheckedUrl:
    """Check a job's URL against the allow-list (see `url_target`) and rebuild it from the checked parts: what the
    request is sent to. Raises InvalidJob with a one-line reason."""
    scheme, host, port = url_target(url, allow_list)
    text = str(url)
    try:  # the origin parsed as it did in `url_target` (the same parser): this adds the path and the query
        parsed = parse_url(text)
    except LocationParseError:
        raise InvalidJob("url has an invalid host or port") from None
    checked = CheckedUrl(scheme, host, port, parsed.path or "/", parsed.query)
    # parse_url's path of a checked URL starts with "/", which ends the authority for every parser: the rebuilt URL
    # then reads as its origin did. Anything else is read whole, to be sure.
    if not checked.path.startswith("/") and connect_target(checked.url) != (scheme, host, port):
        raise InvalidJob("url is ambiguous: refused")
    return checked


def url_target(url: object, allow_list: AllowList) -> Target:
    """Where a job's URL connects, (scheme, host, port), if the allow-list permits it; raises InvalidJob with a
    one-line reason (what a job's validation needs; `check_url` adds the URL that is sent).

    Refused: anything but an absolute http(s) URL with a host, backslashes, whitespace or control characters
    anywhere, userinfo or any `@` before the host, percent-encoded or otherwise unparsable hosts, a host, scheme
    or port that the allow-list does not permit. IP literals, shorthand IPv4 (`127.1`, `0x7f000001`), trailing
    dots and IDNA names are compared as urllib3 normalises them, so they pass only when they equal an entry.
    """
    if not isinstance(url, str):
        raise InvalidJob("url must be a string")
    if len(url) > MAX_URL_CHARS:
        raise InvalidJob(f"url is longer than {MAX_URL_CHARS} characters")
    if url.isascii():
        bad = _UNFIT_ASCII.search(url)
        if bad is not None:
            _refuse_char(bad.start(), bad[0])
    else:
        for position, ch in enumerate(url):
            if ch == "\\" or unfit_char(ch):
                _refuse_char(position, ch)
    scheme_match = _SCHEME.match(url)
    if scheme_match is None:
        raise InvalidJob("url must be an absolute URL starting with https://")
    # Every parser ends the authority at the first "/", "?" or "#" (a backslash was refused above): the origin is
    # all that decides where the URL connects.
    end = _AUTHORITY_END.search(url, scheme_match.end())
    found = allow_list.verdict(url if end is None else url[: end.start()])
    if isinstance(found, str):
        raise InvalidJob(found)
    return found


def _read_origin(origin: str, allow_list: AllowList) -> Target | str:
    """The verdict on a URL's origin (`scheme://authority` as written, its characters checked already): where it
    connects, or why it is refused."""
    scheme_match = _SCHEME.match(origin)
    if scheme_match is None:
        return "url must be an absolute URL starting with https://"
    scheme = scheme_match[1].lower()
    if scheme not in DEFAULT_PORTS:
        return f"url scheme {scheme!r} is not allowed: https only (http where ALLOWED_HOSTS says http://host)"
    authority = origin[scheme_match.end() :]
    if not authority:
        return "url has no host"
    if "@" in authority:
        return "url holds userinfo ('@' before the host): refused"
    if "%" in authority:
        return "url holds a percent-encoded host or port: refused"
    try:
        parsed = parse_url(origin)
    except LocationParseError:
        return "url has an invalid host or port"
    host = parsed.host or ""
    if parsed.scheme != scheme or parsed.auth is not None or not host or not host.isascii():
        return "url has an invalid host"
    if parsed.port == 0:
        return "url port 0 is not allowed"
    port = parsed.port if parsed.port is not None else DEFAULT_PORTS[scheme]
    why = allow_list.why_not(scheme, host, port)
    if why:
        return why
    # Defence in depth: the URL rebuilt from these parts must read the same to urllib3 and to the standard library
    # (which requests' adapter uses to pick the connection pool).
    if connect_target(CheckedUrl(scheme, host, port, "/").url) != (scheme, host, port):
        return "url is ambiguous: refused"
    return scheme, host, port


def _refuse_char(position: int, ch: str) -> None:
    if ch == "\\":
        raise InvalidJob(f"url holds a backslash at position {position}")
    raise InvalidJob(f"url holds whitespace or a control character (U+{ord(ch):04X}) at position {position}")


def connect_target(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL as urllib3 and urllib.parse both read it; None when they disagree."""
    try:
        ours = parse_url(url)
        theirs = urlsplit(url)
        their_port = theirs.port
    except (LocationParseError, ValueError):
        return None
    if ours.scheme not in DEFAULT_PORTS or not ours.host or ours.auth is not None:
        return None
    port = ours.port if ours.port is not None else DEFAULT_PORTS[ours.scheme]
    bare = ours.host[1:-1] if ours.host.startswith("[") else ours.host
    if theirs.scheme != ours.scheme or theirs.hostname != bare or (their_port or DEFAULT_PORTS[ours.scheme]) != port:
        return None
    return ours.scheme, ours.host, port
