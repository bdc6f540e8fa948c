"""One settings object per server process: flags, then ``WAYPOST_*`` env, then a file.

Precedence is flag > environment > file > default, as Consul and etcd read theirs.
The file is YAML or JSON with the same field names.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path

import msgspec
import yaml

from waypost.durations import parse_duration
from waypost.errors import InvalidInput
from waypost.model import LABEL_RE, is_label
from waypost.zones import DEFAULT_CUSTOM_ZONES, DEFAULT_FORWARD_CLIENTS


def default_node_name() -> str:
    """This machine's host name, cut to one DNS-safe label."""
    name = socket.gethostname().split(".")[0].lower()
    name = re.sub(r"[^a-z0-9-]", "-", name).strip("-")[:63] or "local"
    return name if LABEL_RE.match(name) else "local"


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything a server process is configured by."""

    http: str = "127.0.0.1:8500"
    store: str = "sqlite://"
    # The etcd key prefix (cluster mode); a path in the etcd:// URL says the same.
    etcd_prefix: str = "/waypost/"
    # etcd over TLS (also etcds:// in the store URL): the CA of its members' certificates
    # (empty: the system's), a client certificate and key (etcd --client-cert-auth), and
    # etcd's auth: a user and its password (WAYPOST_ETCD_PASSWORD keeps it off the
    # command line).
    etcd_ca: str = ""
    etcd_cert: str = ""
    etcd_key: str = ""
    etcd_user: str = ""
    etcd_password: str = ""
    data_dir: str = ".waypost"
    token: str = ""
    node: str = msgspec.field(default_factory=default_node_name)
    event_window: str = "1h"
    # The longest a blocking query waits (Consul: 10m); lower it behind proxies that cut
    # idle requests sooner.
    max_wait: str = "10m"
    log_level: str = "info"
    # Command checks of instances registered through the API run programs on this
    # server: off unless asked (Consul's enable_script_checks). Agents run the command
    # checks of their own definition files regardless.
    enable_command_checks: bool = False
    # The directory the checks this server runs may read files from (an https check's
    # ca_file, relative to it or under it); empty: none. Agents' checks read any path.
    check_files_dir: str = ""
    # Whether the checks this server runs may connect elsewhere than the instance's own
    # address (off: 403; a request forgery with the answer read back otherwise).
    check_any_target: bool = False
    # DNS: listeners (HOST:PORT, comma list; empty: off), the zone, answer TTL,
    # whether warning instances are answered, and recursors for other names.
    dns: str = "127.0.0.1:8600"
    dns_domain: str = "waypost"
    # Zones an instance's custom "domain" may be inside (comma list; empty: none): by
    # default private-use suffixes only, so no registration can answer a public name.
    dns_custom_zones: str = DEFAULT_CUSTOM_ZONES
    dns_ttl: str = "5s"
    dns_allow_warning: bool = False
    recursors: str = ""
    # Clients whose other names are forwarded to the recursors (CIDR comma list; "*":
    # any): loopback and private networks by default, so no server is an open resolver.
    dns_forward_clients: str = DEFAULT_FORWARD_CLIENTS
    # Processes answering DNS (the server and N-1 workers sharing its ports).
    dns_workers: int = 1
    # Processes serving the HTTP API (the server and N-1 whole servers sharing its port;
    # the etcd store only, where servers keep no state of their own).
    http_workers: int = 1
    # Plain reads answered on the connection, without aiohttp's request handling
    # (api/hot.py): the same answers, three times the reads a process serves.
    plain_reads: bool = True
    # Node discovery: announce this server on mDNS (_waypost._tcp.local.), and sign its
    # node-registry.json with this Ed25519 key (waypost keygen).
    advertise_mdns: bool = False
    sign_key: str = ""
    # TLS on the HTTP listener (API, dashboard, Consul API): certificate and key files;
    # a CA file, and whether clients must present a certificate it signed (mutual TLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_verify_clients: bool = False
    # ACLs: what requests without a token (and tokens' uncovered cases) may do; whether
    # DNS answers only what the anonymous token may read ("anonymous") or everything
    # ("all"); per token, writes a second (0: no limit) and open watches (0: no limit).
    acl_default_policy: str = "allow"
    dns_acl: str = "anonymous"
    token_write_rate: float = 0.0
    token_max_watches: int = 0
    # HTTP connections one client address may hold open (Consul's
    # http_max_conns_per_client); 0: no limit. All clients together may hold three
    # quarters of the process's open-file limit.
    max_conns_per_client: int = 200
    # Writes a web page could make (api/browser.py): host names a loopback server takes
    # writes for besides IP literals and localhost (comma list; "*": any), and page
    # origins allowed to write (comma list; "*": any; the server's own always may).
    allowed_hosts: str = ""
    allowed_origins: str = ""

    def dns_listeners(self) -> list[tuple[str, int]]:
        """``dns`` as (host, port) pairs; InvalidInput when one is not HOST:PORT."""
        return [host_port(part, "dns") for part in self.dns.split(",") if part.strip()]

    def recursor_list(self) -> list[tuple[str, int]]:
        return [host_port(part, "recursor") for part in self.recursors.split(",") if part.strip()]

    def dns_ttl_s(self) -> float:
        return parse_duration(self.dns_ttl, field="dns_ttl")

    def http_host_port(self) -> tuple[str, int]:
        """Split ``http`` into host and port; InvalidInput when it is not HOST:PORT."""
        host, sep, port = self.http.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise InvalidInput(f"http: {self.http!r} is not HOST:PORT", field="http")
        return host.strip("[]") or "127.0.0.1", int(port)

    def event_window_s(self) -> float:
        return parse_duration(self.event_window, field="event_window")

    def max_wait_s(self) -> float:
        return parse_duration(self.max_wait, field="max_wait")

    def as_env(self) -> dict[str, str]:
        """These settings as ``WAYPOST_*`` variables (how a server hands its own to the
        worker processes it starts: the token never appears in a command line)."""
        out = {}
        for name, value in msgspec.structs.asdict(self).items():
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            out[f"WAYPOST_{name.upper()}"] = text
        return out

    def redacted(self) -> dict[str, str]:
        """The settings for display (``waypost status``): the token is never shown."""
        out = {k: str(v) for k, v in msgspec.structs.asdict(self).items()}
        for secret in ("token", "etcd_password"):
            if out[secret]:
                out[secret] = "********"
        return out


def host_port(text: str, field: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidInput(f"{field}: {text.strip()!r} is not HOST:PORT", field=field)
    return host, int(port)


_FIELDS = Settings.__struct_fields__


def load_settings(
    flags: Mapping[str, object | None],
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Merge flags (None means not given), ``WAYPOST_<FIELD>`` variables and the file."""
    env = os.environ if env is None else env
    merged: dict[str, object] = {}
    if config_file:
        path = Path(config_file)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise InvalidInput(
                f"config: cannot read {path}: {exc.strerror}", field="config"
            ) from None
        except yaml.YAMLError as exc:
            raise InvalidInput(
                f"config: {path} is not YAML or JSON: {exc}", field="config"
            ) from None
        if data is not None and not isinstance(data, dict):
            raise InvalidInput(f"config: {path} must hold a mapping", field="config")
        merged.update(data or {})
    for name in _FIELDS:
        value = env.get(f"WAYPOST_{name.upper()}")
        if value is not None:
            merged[name] = value
    merged.update({k: v for k, v in flags.items() if v is not None})
    try:
        # Not strict: the environment spells booleans as text (true, false, 1, 0).
        settings = msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"settings: {exc}", field="settings") from None
    settings.http_host_port()
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise InvalidInput("tls: give --tls-cert and --tls-key together", field="tls_cert")
    if settings.tls_verify_clients and not (settings.tls_cert and settings.tls_ca):
        raise InvalidInput(
            "tls_verify_clients: needs --tls-cert, --tls-key and --tls-ca", field="tls_ca"
        )
    if settings.acl_default_policy not in ("allow", "deny"):
        raise InvalidInput(
            f"acl_default_policy: {settings.acl_default_policy!r} is not allow or deny",
            field="acl_default_policy",
        )
    if settings.dns_acl not in ("anonymous", "all"):
        raise InvalidInput(
            f"dns_acl: {settings.dns_acl!r} is not anonymous or all", field="dns_acl"
        )
    if not 0 <= settings.token_write_rate <= 1_000_000:
        raise InvalidInput("token_write_rate: between 0 and 1000000", field="token_write_rate")
    if not 0 <= settings.token_max_watches <= 1_000_000:
        raise InvalidInput("token_max_watches: between 0 and 1000000", field="token_max_watches")
    settings.event_window_s()
    settings.max_wait_s()
    settings.dns_listeners()
    settings.recursor_list()
    settings.dns_ttl_s()
    if not 1 <= settings.dns_workers <= 64:
        raise InvalidInput("dns_workers: between 1 and 64", field="dns_workers")
    if not 1 <= settings.http_workers <= 64:
        raise InvalidInput("http_workers: between 1 and 64", field="http_workers")
    if settings.http_workers > 1 and not settings.store.startswith("etcd://"):
        raise InvalidInput(
            "http_workers: more than one process serves HTTP only on the etcd store "
            "(each worker is a whole server, and servers share state only through etcd)",
            field="http_workers",
        )
    if not all(is_label(part) for part in settings.dns_domain.strip(".").split(".")):
        raise InvalidInput(
            f"dns_domain: {settings.dns_domain!r} is not a DNS name", field="dns_domain"
        )
    if not LABEL_RE.match(settings.node):
        raise InvalidInput(f"node: {settings.node!r} is not a DNS-safe label", field="node")
    return settings
