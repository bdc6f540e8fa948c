"""The ``waypost`` command: thin parsing over the server and the client SDK.

Tables for people, ``--json`` for scripts. Every failure is one line on stderr and a
non-zero exit (the code comes from the error class, see ``errors.py``), never a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import msgspec
import typer
import yaml
from rich.console import Console
from rich.table import Table

from waypost._version import __version__
from waypost.client import Client
from waypost.durations import parse_duration
from waypost.errors import Conflict, InvalidInput, NotFound, Unavailable, WaypostError
from waypost.model import AclPolicy, AclTokenView, Instance, convert_instance
from waypost.zones import DEFAULT_CUSTOM_ZONES, DEFAULT_FORWARD_CLIENTS

app = typer.Typer(
    name="waypost",
    help="Waypost: service discovery and registration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

P = ParamSpec("P")
R = TypeVar("R")

ServerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--server",
        "-s",
        envvar="WAYPOST_SERVER",
        help="Server URL; repeat to fail over in order (local, regional, global).",
    ),
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="WAYPOST_TOKEN", help="Bearer token for writes.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
JoinOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--join",
        help="A discovery source: a registry or peers file, a URL, HOST:PORT, srv:NAME or "
        "mdns (repeat; env WAYPOST_NODE_REGISTRIES adds more).",
    ),
]
TrustOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--trust-key",
        help="Accept only entries signed by this key (a .pub file or its text; repeat; "
        "env WAYPOST_TRUST_KEYS).",
    ),
]
DnsResolverOpt = Annotated[
    str | None,
    typer.Option(help="IP:PORT of the DNS server for srv: sources (default: the system's)."),
]
CommandChecksOpt = Annotated[
    bool,
    typer.Option(
        "--enable-command-checks",
        help="Run command checks of instances registered through the API (off: 403).",
    ),
]


def _friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn every WaypostError into one line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except WaypostError as exc:
            err.print(f"[red]error:[/red] {exc.message}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper


def _client(server: list[str] | None, token: str | None) -> Client:
    """The client of the commands that talk to a server; for ``https://`` servers it
    trusts ``WAYPOST_TLS_CA`` and presents ``WAYPOST_TLS_CERT``/``WAYPOST_TLS_KEY``."""
    urls = [u for s in (server or ["http://127.0.0.1:8500"]) for u in s.split(",") if u]
    ca, cert, key = (os.environ.get(f"WAYPOST_TLS_{n}", "") for n in ("CA", "CERT", "KEY"))
    tls = None
    if ca or cert or key:
        from waypost.tls import client_context

        tls = client_context(ca, cert, key)
    if token is None:
        token = token_from_file(os.environ.get("WAYPOST_TOKEN_FILE", ""))
    return Client(urls, token=token, tls=tls)


def token_from_file(path: str) -> str | None:
    """The token kept in a file (``WAYPOST_TOKEN_FILE``, ``--token-file``), if one is named."""
    if not path:
        return None
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise InvalidInput(
            f"token file: cannot read {path}: {exc.strerror}", field="token"
        ) from None
    if not text:
        raise InvalidInput(f"token file: {path} is empty", field="token")
    return text


def _print_json(data: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(data), indent=2).decode() + "\n")


# --- servers ------------------------------------------------------------------------------


def _serve(flags: dict[str, Any], config: Path | None) -> None:
    from waypost.server import run
    from waypost.settings import load_settings

    run(load_settings(flags, config_file=config))


@app.command()
@_friendly
def dev(
    http: Annotated[str, typer.Option(help="HOST:PORT of the HTTP API.")] = "127.0.0.1:8500",
    data_dir: Annotated[Path, typer.Option(help="Where the SQLite file lives.")] = Path(".waypost"),
    enable_command_checks: CommandChecksOpt = False,
    dns: Annotated[str, typer.Option(help="DNS HOST:PORT, UDP and TCP.")] = "127.0.0.1:8600",
    no_dns: Annotated[bool, typer.Option("--no-dns", help="Serve no DNS.")] = False,
    dns_domain: Annotated[str, typer.Option(help="The DNS zone.")] = "waypost",
) -> None:
    """All-in-one development server on SQLite in ./.waypost/: API on 127.0.0.1:8500,
    DNS on 127.0.0.1:8600."""
    flags = {"http": http, "data_dir": str(data_dir), "store": "sqlite://"}
    dns_flags = {"dns": "" if no_dns else dns, "dns_domain": dns_domain}
    _serve({**flags, **dns_flags, "enable_command_checks": enable_command_checks}, None)


@app.command()
@_friendly
def server(
    store: Annotated[
        str | None,
        typer.Option(
            help="sqlite:///PATH (default: DATA_DIR/waypost.db), "
            "etcd://HOST:PORT,HOST:PORT (cluster mode; a /prefix/ may follow) or memory://"
        ),
    ] = None,
    http: Annotated[
        str | None, typer.Option(help="HOST:PORT of the HTTP API (port 0: any).")
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help="Data directory.")] = None,
    token: Annotated[
        str | None, typer.Option(help="Bearer token required for writes (env WAYPOST_TOKEN).")
    ] = None,
    node: Annotated[str | None, typer.Option(help="This node's name (default: host name).")] = None,
    event_window: Annotated[
        str | None, typer.Option(help="How long the event log is kept for watches (e.g. 1h).")
    ] = None,
    max_wait: Annotated[
        str | None, typer.Option(help="The longest a blocking query waits (default 10m).")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    enable_command_checks: CommandChecksOpt = False,
    check_any_target: Annotated[
        bool,
        typer.Option(
            "--check-any-target",
            help="Let the checks of API-registered instances target any host (off: only "
            "the instance's own address).",
        ),
    ] = False,
    check_files_dir: Annotated[
        str | None,
        typer.Option(
            help="Directory the checks of API-registered instances may read files from "
            "(an https check's ca_file; default: none)."
        ),
    ] = None,
    dns: Annotated[
        str | None,
        typer.Option(help="DNS HOST:PORT, UDP and TCP (comma list; default 127.0.0.1:8600)."),
    ] = None,
    no_dns: Annotated[bool, typer.Option("--no-dns", help="Serve no DNS.")] = False,
    dns_domain: Annotated[str | None, typer.Option(help="The DNS zone (default waypost).")] = None,
    dns_custom_zones: Annotated[
        str | None,
        typer.Option(
            help="Zones instances' custom domains may be in (comma list; default "
            "local,internal,home.arpa; empty: none)."
        ),
    ] = None,
    dns_ttl: Annotated[str | None, typer.Option(help="TTL of DNS answers (default 5s).")] = None,
    dns_allow_warning: Annotated[
        bool, typer.Option("--dns-allow-warning", help="Answer warning instances too.")
    ] = False,
    recursor: Annotated[
        list[str] | None,
        typer.Option(help="IP:PORT to forward other names to (repeat: tried in order)."),
    ] = None,
    dns_forward_clients: Annotated[
        str | None,
        typer.Option(
            help="Clients whose other names are forwarded (CIDR comma list; *: any; "
            "default loopback and private networks)."
        ),
    ] = None,
    dns_workers: Annotated[
        int | None,
        typer.Option(help="Processes answering DNS, sharing its ports (default 1)."),
    ] = None,
    etcd_prefix: Annotated[
        str | None,
        typer.Option(help="Key prefix on etcd (default /waypost/): servers on one share it."),
    ] = None,
    etcd_ca: Annotated[
        str | None, typer.Option(help="etcd over TLS: the CA of its members' certificates.")
    ] = None,
    etcd_cert: Annotated[
        str | None, typer.Option(help="Client certificate (PEM) for etcd's --client-cert-auth.")
    ] = None,
    etcd_key: Annotated[str | None, typer.Option(help="Its private key (PEM).")] = None,
    etcd_user: Annotated[
        str | None, typer.Option(help="etcd auth: the user (password: WAYPOST_ETCD_PASSWORD).")
    ] = None,
    etcd_password: Annotated[
        str | None,
        typer.Option(help="etcd auth: the password (prefer env WAYPOST_ETCD_PASSWORD)."),
    ] = None,
    http_workers: Annotated[
        int | None,
        typer.Option(
            help="Processes serving the HTTP API on its port (etcd store only; default 1)."
        ),
    ] = None,
    no_plain_reads: Annotated[
        bool,
        typer.Option(
            "--no-plain-reads",
            help="Send every request through aiohttp's request handling (plain reads are "
            "otherwise answered on the connection).",
        ),
    ] = False,
    advertise_mdns: Annotated[
        bool,
        typer.Option("--advertise-mdns", help="Announce this server on mDNS (_waypost._tcp)."),
    ] = False,
    sign_key: Annotated[
        str | None,
        typer.Option(help="Sign node-registry.json with this key (waypost keygen)."),
    ] = None,
    tls_cert: Annotated[
        str | None, typer.Option(help="TLS certificate (PEM) for the HTTP listener.")
    ] = None,
    tls_key: Annotated[str | None, typer.Option(help="Its private key (PEM).")] = None,
    tls_ca: Annotated[
        str | None, typer.Option(help="CA certificate(s) that sign client certificates.")
    ] = None,
    tls_verify_clients: Annotated[
        bool,
        typer.Option(
            "--tls-verify-clients", help="Mutual TLS: refuse clients without a certificate."
        ),
    ] = False,
    acl_default_policy: Annotated[
        str | None,
        typer.Option(
            help="ACLs: allow (default) or deny what no token rule covers "
            "(env WAYPOST_ACL_DEFAULT_POLICY)."
        ),
    ] = None,
    dns_acl: Annotated[
        str | None,
        typer.Option(
            help="DNS answers what the anonymous token may read (anonymous, default) or all."
        ),
    ] = None,
    token_write_rate: Annotated[
        float | None, typer.Option(help="Writes a second per token; over it: 429 (0: no limit).")
    ] = None,
    token_max_watches: Annotated[
        int | None,
        typer.Option(help="Open blocking queries and event streams per token (0: no limit)."),
    ] = None,
    max_conns_per_client: Annotated[
        int | None,
        typer.Option(
            help="HTTP connections one client address may hold open (default 200; 0: no limit)."
        ),
    ] = None,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            help="Host names a loopback server takes writes for besides IP literals and "
            "localhost (comma list; *: any)."
        ),
    ] = None,
    allowed_origins: Annotated[
        str | None,
        typer.Option(help="Web page origins allowed to write (comma list; *: any)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML/JSON settings file (flags and env win).")
    ] = None,
) -> None:
    """Run a registry server."""
    flags = {
        "store": store,
        "http": http,
        "data_dir": data_dir,
        "token": token,
        "node": node,
        "event_window": event_window,
        "max_wait": max_wait,
        "log_level": log_level,
        # Only a given flag overrides the environment and the file.
        "enable_command_checks": True if enable_command_checks else None,
        "check_files_dir": check_files_dir,
        "check_any_target": True if check_any_target else None,
        "dns": "" if no_dns else dns,
        "dns_domain": dns_domain,
        "dns_custom_zones": dns_custom_zones,
        "dns_ttl": dns_ttl,
        "dns_allow_warning": True if dns_allow_warning else None,
        "recursors": ",".join(recursor) if recursor else None,
        "dns_forward_clients": dns_forward_clients,
        "dns_workers": dns_workers,
        "etcd_prefix": etcd_prefix,
        "etcd_ca": etcd_ca,
        "etcd_cert": etcd_cert,
        "etcd_key": etcd_key,
        "etcd_user": etcd_user,
        "etcd_password": etcd_password,
        "http_workers": http_workers,
        "plain_reads": False if no_plain_reads else None,
        "advertise_mdns": True if advertise_mdns else None,
        "sign_key": sign_key,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "tls_ca": tls_ca,
        "tls_verify_clients": True if tls_verify_clients else None,
        "acl_default_policy": acl_default_policy,
        "dns_acl": dns_acl,
        "token_write_rate": token_write_rate,
        "token_max_watches": token_max_watches,
        "max_conns_per_client": max_conns_per_client,
        "allowed_hosts": allowed_hosts,
        "allowed_origins": allowed_origins,
    }
    _serve(flags, config)


# --- writes -------------------------------------------------------------------------------


def _load_definitions(path: Path) -> list[Instance]:
    """Instances from a YAML or JSON file: one object, a list, or {"instances": [...]}."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise InvalidInput(f"file: cannot read {path}: {exc.strerror}", field="file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"file: {path} is neither YAML nor JSON: {exc}", field="file") from None
    if isinstance(data, dict) and "instances" in data:
        data = data["instances"]
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(i, dict) for i in items):
        raise InvalidInput(f"file: {path} holds no instance definitions", field="file")
    out = []
    for n, item in enumerate(items):
        try:
            out.append(convert_instance(item))
        except InvalidInput as exc:
            where = f"instance {n + 1}" + (f" ({item.get('id')})" if item.get("id") else "")
            raise InvalidInput(f"{path}: {where}: {exc.message}", field=exc.field) from None
    return out


@app.command()
@_friendly
def register(
    file: Annotated[Path, typer.Option("--file", "-f", help="YAML or JSON; - for stdin.")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register one or many instances from a definition file (all or nothing)."""
    instances = _load_definitions(file)
    with _client(server, token) as c:
        if len(instances) == 1:
            res = c.register(instances[0])
            result: dict[str, Any] = {"index": res.index, "registered": [res.id]}
        else:
            b = c.batch(register=instances)
            result = {"index": b.index, "registered": b.registered}
    if as_json:
        _print_json(result)
    else:
        out.print(f"registered {', '.join(result['registered'])} (index {result['index']})")


@app.command()
@_friendly
def deregister(
    instance_id: Annotated[str, typer.Argument(metavar="ID", help="Instance id.")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove an instance."""
    with _client(server, token) as c:
        res = c.deregister(instance_id)
    if as_json:
        _print_json(res)
    else:
        out.print(f"deregistered {res.id} (index {res.index})")


# --- reads --------------------------------------------------------------------------------


@app.command()
@_friendly
def services(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List services with instance counts by status."""
    with _client(server, token) as c:
        rows = c.services()
    if as_json:
        _print_json(rows)
        return
    table = Table("SERVICE", "INSTANCES", "PASSING", "WARNING", "CRITICAL", "VERSIONS", "TAGS")
    for s in rows:
        table.add_row(
            s.name,
            str(s.instances),
            str(s.passing),
            str(s.warning),
            str(s.critical),
            ", ".join(s.versions),
            ", ".join(s.tags),
        )
    out.print(table)


def _parse_meta(pairs: list[str] | None) -> dict[str, str]:
    meta = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"meta: {pair!r} is not KEY=VALUE", field="meta")
        meta[key] = value
    return meta


@app.command()
@_friendly
def instances(
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="Service name.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Has this tag (repeat: all).")] = None,
    any_tag: Annotated[list[str] | None, typer.Option(help="Has one of these tags.")] = None,
    status: Annotated[
        str | None, typer.Option(help="passing|warning|critical|unknown, or healthy etc.")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Constraint, e.g. '>=1.2,<2'.")] = None,
    node: Annotated[str | None, typer.Option(help="On this node.")] = None,
    kind: Annotated[str | None, typer.Option(help="service, network or actor.")] = None,
    meta: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeat: all).")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the instances of a service (or all), filtered."""
    with _client(server, token) as c:
        res = c.instances(
            name,
            tags=tag or [],
            any_tags=any_tag or [],
            status=status.split(",") if status else None,
            version=version,
            node=node,
            kind=kind,
            meta=_parse_meta(meta),
        )
    if as_json:
        _print_json(res.instances)
        return
    table = Table("ID", "SERVICE", "ADDRESS", "VERSION", "STATUS", "NODE", "TAGS")
    for i in res.instances:
        shown = i.effective_status.value + (" (maintenance)" if i.maintenance else "")
        table.add_row(
            i.id,
            i.service,
            f"{i.address}:{i.port}",
            i.version or "",
            shown,
            i.node or "",
            ", ".join(i.tags),
        )
    out.print(table)


@app.command()
@_friendly
def watch(
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="Only this service.")] = None,
    index: Annotated[int | None, typer.Option(help="Start after this revision.")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Follow changes live (Ctrl-C to stop); resumes across server restarts."""
    with _client(server, token) as c:
        for ev in c.watch(name, index=index):
            if as_json:
                line = {"revision": ev.revision, "type": ev.type, "instance": ev.instance}
                sys.stdout.write(msgspec.json.encode(line).decode() + "\n")
                sys.stdout.flush()
            else:
                i = ev.instance
                out.print(
                    f"{ev.revision:>8} {ev.type:<6} {i.service}/{i.id} "
                    f"{i.address}:{i.port} {i.effective_status.value}"
                )


@app.command()
@_friendly
def status(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Show the server's version, revision, counts and store."""
    with _client(server, token) as c:
        st = c.status()
    if as_json:
        _print_json(st)
        return
    for key, value in msgspec.structs.asdict(st).items():
        if key != "config":
            out.print(f"{key:<20} {value}")
    for key, value in st.config.items():
        out.print(f"{'config.' + key:<20} {value}")


def _age(ts: float | None) -> str:
    if not ts:
        return "-"
    ago = max(time.time() - ts, 0.0)
    return f"{ago:.1f}s ago" if ago < 60 else f"{ago / 60:.0f}m ago"


@app.command()
@_friendly
def checks(
    name: Annotated[
        str | None, typer.Argument(metavar="SERVICE", help="Only this service.")
    ] = None,
    node: Annotated[str | None, typer.Option(help="Only instances on this node.")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List every check: status, last output, last run and consecutive counts."""
    with _client(server, token) as c:
        rows = c.checks(name, node)
    if as_json:
        _print_json(rows)
        return
    table = Table()
    for column in ("INSTANCE", "CHECK", "KIND", "STATUS", "OK", "FAIL", "LAST RUN", "RUNS ON"):
        table.add_column(column, no_wrap=True)
    table.add_column("OUTPUT", overflow="fold", min_width=12)
    for r in rows:
        shown = r.status.value + (" (flapping)" if r.flapping else "")
        table.add_row(
            r.instance,
            r.name,
            r.kind,
            shown,
            str(r.successes),
            str(r.failures),
            _age(r.last_run),
            r.runs_on,
            r.output[:80],
        )
    out.print(table)


@app.command()
@_friendly
def nodes(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List nodes: registered by agents (with status) and named by instances."""
    with _client(server, token) as c:
        rows = c.nodes()
    if as_json:
        _print_json(rows)
        return
    table = Table("NODE", "ADDRESS", "STATUS", "INSTANCES", "REGISTERED", "LEASE")
    for n in rows:
        table.add_row(
            n.id,
            n.address or "",
            n.status.value,
            str(n.instances),
            "yes" if n.registered else "no",
            str(n.lease or ""),
        )
    out.print(table)


# --- the node agent -----------------------------------------------------------------------

# --- traffic policies ----------------------------------------------------------------------

config_app = typer.Typer(
    help="A service's config: traffic policies, check template, DNS TTL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(config_app, name="config")


def _read_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML or JSON object from ``path`` (``-``: stdin)."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise InvalidInput(f"file: cannot read {path}: {exc.strerror}", field="file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"file: {path} is not YAML or JSON: {exc}", field="file") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"file: {path} must hold one {what} (a mapping)", field="file")
    return data


@config_app.command("get")
@_friendly
def config_get(
    service: Annotated[str, typer.Argument(help="The service.")],
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Print a service's config as JSON (exit 4 when it has none)."""
    with _client(server, token) as c:
        cfg = c.service_config(service)
    if cfg is None:
        raise NotFound(f"service {service!r} has no config", field="service")
    _print_json(cfg)


@config_app.command("set")
@_friendly
def config_set(
    service: Annotated[str, typer.Argument(help="The service.")],
    file: Annotated[Path, typer.Argument(help="YAML or JSON file with the config; - for stdin.")],
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Write a service's config (replacing the one it had); clients follow it live."""
    data = _read_mapping(file, "service config")
    with _client(server, token) as c:
        res = c.set_service_config(service, data)
    out.print(f"config of {service} written at revision {res.index}")


@config_app.command("delete")
@_friendly
def config_delete(
    service: Annotated[str, typer.Argument(help="The service.")],
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Remove a service's config (its clients go back to the defaults)."""
    with _client(server, token) as c:
        res = c.delete_service_config(service)
    out.print(f"config of {service} deleted at revision {res.index}")


@app.command()
@_friendly
def routes(
    set_file: Annotated[
        Path | None, typer.Option("--set", help="Write the route in this YAML/JSON file.")
    ] = None,
    delete: Annotated[str | None, typer.Option("--delete", help="Delete this route.")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List routing rules (or write one with --set FILE, delete one with --delete NAME)."""
    with _client(server, token) as c:
        if set_file is not None:
            res = c.set_route(_read_mapping(set_file, "route"))
            out.print(f"route {res.id} written at revision {res.index}")
            return
        if delete is not None:
            res = c.delete_route(delete)
            out.print(f"route {delete} deleted at revision {res.index}")
            return
        rows = c.routes()
    if as_json:
        _print_json(rows)
        return
    table = Table("ROUTE", "PRIORITY", "HOSTS", "PATH PREFIX", "METHODS", "HEADERS", "SERVICE")
    for r in rows:
        heads = [f"{k}={v}" for k, v in sorted(r.match.headers.items())]
        heads += [f"{k}~{v}" for k, v in sorted(r.match.headers_regex.items())]
        target = r.service + "".join(f" {k}={v}" for k, v in sorted(r.subset.items()))
        table.add_row(
            r.name,
            str(r.priority),
            ",".join(r.match.hosts),
            (r.match.path_prefix or "") + (" (stripped)" if r.strip_prefix else ""),
            ",".join(r.match.methods),
            ", ".join(heads),
            target,
        )
    out.print(table)


@app.command()
@_friendly
def proxy(
    listen: Annotated[
        str, typer.Option(help="HOST:PORT to serve HTTP on (port 0: any; printed at start).")
    ] = "127.0.0.1:8080",
    server: ServerOpt = None,
    token: TokenOpt = None,
    zone: Annotated[str, typer.Option(help="This proxy's zone (meta.zone preferred).")] = "",
    snapshot: Annotated[
        Path | None,
        typer.Option(help="Keep the endpoints known in this file, to start without the registry."),
    ] = None,
    upstream_timeout: Annotated[
        str, typer.Option(help="An upstream's answer deadline when its policy sets none.")
    ] = "15s",
    admin: Annotated[
        str | None,
        typer.Option(help="HOST:PORT to serve /status (endpoint counters) and /health on."),
    ] = None,
    join: JoinOpt = None,
    trust_key: TrustOpt = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    tls_cert: Annotated[
        str | None,
        typer.Option(help="TLS certificate (PEM) of the listener (also shown to upstreams)."),
    ] = None,
    tls_key: Annotated[str | None, typer.Option(help="Its private key (PEM).")] = None,
    tls_ca: Annotated[
        str | None,
        typer.Option(help="CA that signs client certificates and the registry's certificate."),
    ] = None,
    tls_verify_clients: Annotated[
        bool, typer.Option("--tls-verify-clients", help="Mutual TLS on the listener.")
    ] = False,
    upstream_tls_ca: Annotated[
        str | None,
        typer.Option(help="CA of upstreams dialed over TLS (their meta scheme: https)."),
    ] = None,
    no_host_routing: Annotated[
        bool,
        typer.Option(
            "--no-host-routing",
            help="Serve only the registry's routes (a Host naming a service gets 404).",
        ),
    ] = False,
) -> None:
    """Reverse-proxy HTTP to services by Host or route, with their traffic policies."""

    from waypost.proxy import ProxySettings, run_proxy
    from waypost.settings import host_port

    default = [] if join or os.environ.get("WAYPOST_NODE_REGISTRIES") else ["http://127.0.0.1:8500"]
    urls = [u for s in (server or default) for u in s.split(",") if u]
    for flag, value in (("listen", listen), ("admin", admin)):
        if value is None:
            continue
        try:
            host_port(value, flag)
        except InvalidInput as exc:
            raise InvalidInput(f"--{exc.message}", field=flag) from None
    try:
        parse_duration(upstream_timeout, field="upstream-timeout")
    except InvalidInput as exc:
        raise InvalidInput(f"--{exc.message}", field="upstream_timeout") from None
    settings = ProxySettings(
        servers=urls,
        listen=listen,
        token=token or "",
        zone=zone,
        snapshot=str(snapshot) if snapshot is not None else "",
        upstream_timeout=upstream_timeout,
        admin=admin or "",
        join=list(join or []),
        trust_keys=_trust(trust_key),
        tls_cert=tls_cert or "",
        tls_key=tls_key or "",
        tls_ca=tls_ca or "",
        tls_verify_clients=tls_verify_clients,
        upstream_tls_ca=upstream_tls_ca or "",
        host_routing=not no_host_routing,
    )
    _run_loop(run_proxy(settings), log_level)


# --- node discovery -------------------------------------------------------------------------


def _trust(keys: list[str] | None) -> list[str]:
    from waypost.peers.entry import EntryError
    from waypost.peers.signing import trusted_key

    given = list(keys or [])
    given += [k for k in os.environ.get("WAYPOST_TRUST_KEYS", "").split(",") if k.strip()]
    try:
        return [trusted_key(k) for k in given]
    except EntryError as exc:
        raise InvalidInput(f"--trust-key: {exc}", field="trust_key") from None


def _resolver(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    from waypost.settings import host_port

    try:
        return host_port(text, "dns-resolver")
    except InvalidInput as exc:
        raise InvalidInput(f"--{exc.message}", field="dns_resolver") from None


@app.command("node-registry")
@_friendly
def node_registry(
    data_dir: Annotated[
        Path, typer.Option(help="The server's (or agent's) data directory.")
    ] = Path(".waypost"),
) -> None:
    """Print this node's registry entry (DATA_DIR/node-registry.json)."""
    from waypost.peers.entry import REGISTRY_FILE

    path = data_dir / REGISTRY_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NotFound(
            f"{path}: {exc.strerror or exc} (a server writes it when it starts)"
        ) from None
    sys.stdout.write(data.decode())


@app.command()
@_friendly
def keygen(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for node.key and node.pub.")],
) -> None:
    """Write an Ed25519 key pair for signing registry files: node.key (0600), node.pub."""
    from waypost.peers.entry import EntryError
    from waypost.peers.signing import keygen as make

    try:
        key, pub = make(out_dir)
    except EntryError as exc:
        raise Conflict(str(exc)) from None
    except OSError as exc:
        raise InvalidInput(f"--out: {exc.strerror or exc}", field="out") from None
    out.print(f"wrote {key} and {pub}")


@app.command()
@_friendly
def sign(
    file: Annotated[Path, typer.Argument(help="A node-registry.json or a peers file.")],
    key: Annotated[Path, typer.Option("--key", help="The private key (waypost keygen).")],
) -> None:
    """Sign a registry or peers file in place (every entry of a peers file)."""
    from waypost.peers.entry import EntryError
    from waypost.peers.signing import load_private, sign_file

    try:
        n = sign_file(file, load_private(key))
    except EntryError as exc:
        raise InvalidInput(str(exc), field="file") from None
    out.print(f"signed {n} entr{'y' if n == 1 else 'ies'} in {file}")


@app.command()
@_friendly
def peers(
    join: JoinOpt = None,
    trust_key: TrustOpt = None,
    dns_resolver: DnsResolverOpt = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Also read DATA_DIR/discovery-peers.json.")
    ] = None,
    no_probe: Annotated[
        bool, typer.Option("--no-probe", help="List what the sources say; probe nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run node discovery once and list every peer: node, API, source, state, error."""
    import asyncio

    from waypost.peers import Discovery, gather_sources

    sources = gather_sources(
        join or [],
        env=os.environ.get("WAYPOST_NODE_REGISTRIES"),
        data_dir=str(data_dir) if data_dir else None,
    )
    if not sources:
        raise InvalidInput(
            "give a source: --join SOURCE, WAYPOST_NODE_REGISTRIES or --data-dir", field="join"
        )
    try:
        d = Discovery(
            sources,
            trust=_trust(trust_key),
            auto_connect=not no_probe,
            dns_resolver=_resolver(dns_resolver),
        )
    except ValueError as exc:
        raise InvalidInput(f"--join: {exc}", field="join") from None
    asyncio.run(d.refresh())
    status = d.status()
    if as_json:
        _print_json(status)
    else:
        table = Table("NODE", "API", "SOURCE", "STATE", "LATENCY", "LAST ERROR")
        for p in status["peers"]:
            lat = f"{p['latency_ms']:.1f} ms" if p["latency_ms"] is not None else ""
            table.add_row(
                p["node_id"], p["api"], p["source"], p["state"], lat, p["last_error"] or ""
            )
        out.print(table)
        for name, error in status["source_errors"].items():
            err.print(f"source {name}: {error}", soft_wrap=True)
    if not any(p["state"] == "reachable" for p in status["peers"]) and not no_probe:
        raise typer.Exit(8)


@app.command()
@_friendly
def network(
    mode: Annotated[str, typer.Option(help="discovery (a registry) or worker (a network).")],
    port: Annotated[int, typer.Option(help="The port to serve on (0: any).")] = 0,
    bind: Annotated[str, typer.Option(help="The address to serve on.")] = "127.0.0.1",
    discovery: Annotated[
        list[str] | None, typer.Option(help="Registry URL (repeat: tried in order).")
    ] = None,
    network_id: Annotated[str | None, typer.Option(help="The network's id (worker).")] = None,
    instance_id: Annotated[str | None, typer.Option(help="This instance's id.")] = None,
    actors: Annotated[
        str | None, typer.Option(help="Actors to run: package.module:Class[,...] (worker).")
    ] = None,
    capabilities: Annotated[str, typer.Option(help="Comma list of capabilities.")] = "",
    tags: Annotated[str, typer.Option(help="Comma list of tags.")] = "",
    auth_token: Annotated[
        str | None, typer.Option(envvar="WAYPOST_NETWORK_TOKEN", help="The links' token.")
    ] = None,
    heartbeat_interval: Annotated[str, typer.Option(help="Registry heartbeats.")] = "15s",
    data_dir: Annotated[str, typer.Option(help="Data directory (discovery mode).")] = ".waypost",
    token: Annotated[
        str | None,
        typer.Option(envvar="WAYPOST_TOKEN", help="The registry's ACL token (worker mode)."),
    ] = None,
    tls_cert: Annotated[
        str, typer.Option(help="Serve links as wss:// with this certificate (worker).")
    ] = "",
    tls_key: Annotated[str, typer.Option(help="Its private key.")] = "",
    tls_ca: Annotated[
        str, typer.Option(help="CA of peers and the registry; peers must show a certificate.")
    ] = "",
) -> None:
    """Run an actor network worker, or a discovery registry for networks."""
    if mode == "discovery":
        _serve({"http": f"{bind}:{port}", "data_dir": data_dir, "dns": ""}, None)
        return
    if mode != "worker":
        raise InvalidInput("--mode: discovery or worker", field="mode")
    if not network_id:
        raise InvalidInput("--network-id: required in worker mode", field="network_id")
    if not actors:
        raise InvalidInput("--actors: give package.module:Class[,...]", field="actors")
    import asyncio

    from waypost.actors.worker import load_actors, run_worker

    loaded = load_actors(actors)
    asyncio.run(
        run_worker(
            network_id,
            loaded,
            instance_id=instance_id,
            bind=f"{bind}:{port}",
            discovery=discovery or ["http://127.0.0.1:8500"],
            auth_token=auth_token,
            registry_token=token or token_from_file(os.environ.get("WAYPOST_TOKEN_FILE", "")),
            tls=(tls_cert, tls_key, tls_ca),
            capabilities=[c for c in capabilities.split(",") if c],
            tags=[t for t in tags.split(",") if t],
            heartbeat_interval=heartbeat_interval,
        )
    )


tls_app = typer.Typer(
    help="A development CA and certificates for TLS and mutual TLS.", no_args_is_help=True
)
app.add_typer(tls_app, name="tls")
tls_ca_app = typer.Typer(help="The certificate authority.", no_args_is_help=True)
tls_cert_app = typer.Typer(help="Server and client certificates.", no_args_is_help=True)
tls_app.add_typer(tls_ca_app, name="ca")
tls_app.add_typer(tls_cert_app, name="cert")
TlsDir = Annotated[Path, typer.Option("--dir", help="Folder of ca.pem and ca-key.pem.")]


@tls_ca_app.command("create")
@_friendly
def tls_ca_create(
    folder: TlsDir,
    days: Annotated[int, typer.Option(help="Validity in days.", min=1, max=36500)] = 1825,
) -> None:
    """Write DIR/ca.pem and DIR/ca-key.pem (0600): a CA for development and tests."""
    from waypost.tls import create_ca

    try:
        path = create_ca(folder, days=days)
    except OSError as exc:
        raise InvalidInput(f"--dir: {exc.strerror or exc}", field="dir") from None
    out.print(f"wrote {path} and {path.with_name('ca-key.pem')}")


@tls_cert_app.command("create")
@_friendly
def tls_cert_create(
    folder: TlsDir,
    name: Annotated[str, typer.Option(help="The certificate's name (a server's host name).")],
    server: Annotated[bool, typer.Option("--server", help="A server certificate.")] = False,
    client: Annotated[bool, typer.Option("--client", help="A client certificate.")] = False,
    days: Annotated[int, typer.Option(help="Validity in days.", min=1, max=3650)] = 365,
) -> None:
    """Write DIR/NAME.pem and DIR/NAME-key.pem (0600), signed by DIR's CA. A server
    certificate also names localhost, 127.0.0.1 and ::1."""
    from waypost.tls import create_cert

    if server == client:
        raise InvalidInput("give one of --server and --client", field="server")
    try:
        cert, key = create_cert(folder, name, server=server, days=days)
    except OSError as exc:
        raise InvalidInput(f"--dir: {exc.strerror or exc}", field="dir") from None
    out.print(f"wrote {cert} and {key}")


acl_app = typer.Typer(help="ACL policies and tokens (docs/security.md).", no_args_is_help=True)
app.add_typer(acl_app, name="acl")
acl_policy_app = typer.Typer(help="Policies: named sets of rules.", no_args_is_help=True)
acl_token_app = typer.Typer(help="Tokens: secrets that hold policies.", no_args_is_help=True)
acl_app.add_typer(acl_policy_app, name="policy")
acl_app.add_typer(acl_token_app, name="token")
RuleOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--rule",
        help="RESOURCE:NAME:ACCESS, e.g. service_prefix:web-:write or operator::read (repeat).",
    ),
]
RulesFileOpt = Annotated[
    Path | None, typer.Option("--rules-file", help="YAML/JSON list of {resource, name, access}.")
]


def _rules(rule: list[str] | None, rules_file: Path | None) -> list[dict[str, str]]:
    """Rules from ``--rule`` (RESOURCE:NAME:ACCESS) and a rules file."""
    out: list[dict[str, str]] = []
    if rules_file is not None:
        try:
            data = yaml.safe_load(rules_file.read_text())
        except OSError as exc:
            raise InvalidInput(
                f"--rules-file: cannot read {rules_file}: {exc.strerror}", field="rules"
            ) from None
        except yaml.YAMLError as exc:
            raise InvalidInput(f"--rules-file: not YAML or JSON: {exc}", field="rules") from None
        if isinstance(data, dict) and "rules" in data:
            data = data["rules"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InvalidInput("--rules-file: expected a list of rules", field="rules")
        out += [{str(k): str(v) for k, v in r.items()} for r in data]
    for text in rule or []:
        resource, sep, rest = text.partition(":")
        name, sep2, access = rest.rpartition(":")
        if not sep or not sep2:
            raise InvalidInput(
                f"--rule: {text!r} is not RESOURCE:NAME:ACCESS (e.g. service:web:read)",
                field="rule",
            )
        out.append({"resource": resource, "name": name, "access": access})
    return out


def _show_token(view: AclTokenView, as_json: bool) -> None:
    if as_json:
        _print_json(view)
        return
    out.print(f"accessor:    {view.accessor}")
    if view.secret:
        out.print(f"secret:      {view.secret}")
    out.print(f"description: {view.description}")
    out.print(f"policies:    {', '.join(view.policies) or '-'}")
    if view.identity:
        out.print(f"identity:    {view.identity}")
    if view.expires_at:
        out.print(
            f"expires:     {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(view.expires_at))}"
        )


def _show_policy(policy: AclPolicy, as_json: bool) -> None:
    if as_json:
        _print_json(policy)
        return
    out.print(f"{policy.name}: {policy.description}")
    for r in policy.rules:
        out.print(
            f"  {r.resource} {r.name!r} {r.access}" if r.name else f"  {r.resource} {r.access}"
        )


@acl_app.command("bootstrap")
@_friendly
def acl_bootstrap(server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """Create the first management token (once per registry) and print its secret."""
    with _client(server, None) as c:
        _show_token(c.acl_bootstrap(), as_json)


@acl_policy_app.command("create")
@_friendly
def acl_policy_create(
    name: Annotated[str, typer.Option(help="The policy's name.")],
    rule: RuleOpt = None,
    rules_file: RulesFileOpt = None,
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a policy from --rule flags and/or a rules file."""
    with _client(server, token) as c:
        _show_policy(c.acl_create_policy(name, _rules(rule, rules_file), description), as_json)


@acl_policy_app.command("update")
@_friendly
def acl_policy_update(
    name: Annotated[str, typer.Argument(help="The policy's name.")],
    rule: RuleOpt = None,
    rules_file: RulesFileOpt = None,
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replace a policy's rules (tokens holding it follow at once)."""
    with _client(server, token) as c:
        _show_policy(c.acl_update_policy(name, _rules(rule, rules_file), description), as_json)


@acl_policy_app.command("list")
@_friendly
def acl_policy_list(
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Every policy."""
    with _client(server, token) as c:
        policies = c.acl_policies()
    if as_json:
        _print_json(policies)
        return
    for p in policies:
        out.print(f"{p.name}\t{len(p.rules)} rules\t{p.description}")


@acl_policy_app.command("read")
@_friendly
def acl_policy_read(
    name: Annotated[str, typer.Argument(help="The policy's name.")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One policy and its rules."""
    with _client(server, token) as c:
        _show_policy(c.acl_policy(name), as_json)


@acl_policy_app.command("delete")
@_friendly
def acl_policy_delete(
    name: Annotated[str, typer.Argument(help="The policy's name.")],
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Delete a policy (tokens holding it lose its rules)."""
    with _client(server, token) as c:
        c.acl_delete_policy(name)
    out.print(f"deleted policy {name}")


PolicyOpt = Annotated[list[str] | None, typer.Option("--policy", help="A policy (repeat).")]


@acl_token_app.command("create")
@_friendly
def acl_token_create(
    policy: PolicyOpt = None,
    description: Annotated[str, typer.Option(help="Who or what holds it.")] = "",
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime, e.g. 24h (default: until deleted).")
    ] = None,
    identity: Annotated[
        str, typer.Option(help="A client certificate CN or SAN URI that stands for it (mTLS).")
    ] = "",
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token; its secret is printed this once."""
    with _client(server, token) as c:
        view = c.acl_create_token(
            policy or [], description=description, expires_in=expires_in, identity=identity
        )
    _show_token(view, as_json)


@acl_token_app.command("update")
@_friendly
def acl_token_update(
    accessor: Annotated[str, typer.Argument(help="The token's accessor (or anonymous).")],
    policy: PolicyOpt = None,
    description: Annotated[str, typer.Option(help="Who or what holds it.")] = "",
    identity: Annotated[str, typer.Option(help="A client certificate CN or SAN URI.")] = "",
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a token's policies (the secret stays); 'anonymous' sets what requests
    without a token may do."""
    with _client(server, token) as c:
        view = c.acl_update_token(
            accessor, policy or [], description=description, identity=identity
        )
    _show_token(view, as_json)


@acl_token_app.command("list")
@_friendly
def acl_token_list(
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Every token: accessors and policies, never secrets."""
    with _client(server, token) as c:
        tokens = c.acl_tokens()
    if as_json:
        _print_json(tokens)
        return
    for t in tokens:
        out.print(f"{t.accessor}\t{','.join(t.policies) or '-'}\t{t.description}")


@acl_token_app.command("read")
@_friendly
def acl_token_read(
    accessor: Annotated[str, typer.Argument(help="The token's accessor.")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One token (never its secret)."""
    with _client(server, token) as c:
        _show_token(c.acl_token(accessor), as_json)


@acl_token_app.command("delete")
@_friendly
def acl_token_delete(
    accessor: Annotated[str, typer.Argument(help="The token's accessor.")],
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Revoke a token: refused from the next request on, its event streams closed."""
    with _client(server, token) as c:
        c.acl_delete_token(accessor)
    out.print(f"deleted token {accessor}")


agent_app = typer.Typer(
    help="Run the node agent (or: waypost agent status).",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(agent_app, name="agent")


@agent_app.callback()
@_friendly
def agent(
    ctx: typer.Context,
    server: ServerOpt = None,
    node: Annotated[str | None, typer.Option(help="This node's name (a DNS-safe label).")] = None,
    config_dir: Annotated[
        Path | None, typer.Option(help="Directory of service definitions (YAML, JSON, TOML).")
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="Where the agent keeps its state.")] = Path(
        ".waypost-agent"
    ),
    node_ttl: Annotated[str, typer.Option(help="The node lease's TTL.")] = "30s",
    sync_interval: Annotated[str, typer.Option(help="How often anti-entropy runs.")] = "60s",
    drain: Annotated[str, typer.Option(help="Wait in maintenance before deregistering.")] = "5s",
    address: Annotated[
        str, typer.Option(help="This node's address (the default of its services).")
    ] = "127.0.0.1",
    http: Annotated[
        str, typer.Option(help="HOST:PORT of the agent's /status (port 0: any).")
    ] = "127.0.0.1:0",
    meta: Annotated[list[str] | None, typer.Option(help="Node meta KEY=VALUE (repeat).")] = None,
    token: TokenOpt = None,
    token_file: Annotated[
        Path | None,
        typer.Option(envvar="WAYPOST_TOKEN_FILE", help="Read the token from this file."),
    ] = None,
    join: JoinOpt = None,
    trust_key: TrustOpt = None,
    refresh_interval: Annotated[
        str, typer.Option(help="How often discovery sources are read again.")
    ] = "60s",
    dns_resolver: DnsResolverOpt = None,
    tls_ca: Annotated[
        str | None, typer.Option(help="CA to trust for https:// servers (PEM).")
    ] = None,
    tls_cert: Annotated[
        str | None, typer.Option(help="Client certificate for mutual TLS (PEM).")
    ] = None,
    tls_key: Annotated[str | None, typer.Option(help="Its private key (PEM).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Register this node's services from definition files, run their checks, keep the
    node alive, repair what the registry lost; SIGTERM drains, SIGHUP reloads."""
    if ctx.invoked_subcommand is not None:
        return
    from waypost.agent.agent import AgentSettings
    from waypost.model import is_address, is_label
    from waypost.peers.entry import PEERS_FILE

    urls = [u for s in (server or []) for u in s.split(",") if u]
    discovering = bool(
        join or os.environ.get("WAYPOST_NODE_REGISTRIES") or (data_dir / PEERS_FILE).exists()
    )
    if not urls and not discovering:
        raise InvalidInput(
            "--server: give the registry's URL (URL[,URL...]), or --join SOURCE",
            field="server",
        )
    if node is None or not is_label(node):
        raise InvalidInput("--node: give this node's name (a DNS-safe label)", field="node")
    if config_dir is None:
        raise InvalidInput("--config-dir: give the directory of service definitions")
    if not config_dir.is_dir():
        raise InvalidInput(f"--config-dir: {config_dir} is not a directory", field="config_dir")
    if not is_address(address):
        raise InvalidInput(f"--address: {address!r} is not an address", field="address")
    durations = (
        ("node-ttl", node_ttl),
        ("sync-interval", sync_interval),
        ("drain", drain),
        ("refresh-interval", refresh_interval),
    )
    for flag, value in durations:
        try:
            parse_duration(value, field=flag)
        except InvalidInput as exc:
            raise InvalidInput(f"--{exc.message}", field=flag) from None
    settings = AgentSettings(
        servers=urls,
        node=node,
        config_dir=str(config_dir),
        data_dir=str(data_dir),
        node_ttl=node_ttl,
        sync_interval=sync_interval,
        drain=drain,
        address=address,
        http=http,
        token=token or token_from_file(str(token_file or "")) or "",
        meta=_parse_meta(meta),
        join=list(join or []),
        trust_keys=_trust(trust_key),
        refresh_interval=refresh_interval,
        dns_resolver=f"{r[0]}:{r[1]}" if (r := _resolver(dns_resolver)) else "",
        tls_ca=tls_ca or "",
        tls_cert=tls_cert or "",
        tls_key=tls_key or "",
    )
    if tls_ca or tls_cert or tls_key:
        from waypost.tls import client_context

        client_context(tls_ca or "", tls_cert or "", tls_key or "")  # bad files: one line now
    _run_agent(settings, log_level)


def _run_agent(settings: Any, log_level: str) -> None:
    from waypost.agent.agent import run_agent

    _run_loop(run_agent(settings), log_level)


def _run_loop(main: Coroutine[Any, Any, int], log_level: str) -> None:
    """Log to stderr at ``log_level`` and run ``main`` on uvloop; exit with its code."""
    import asyncio
    import logging

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        code = asyncio.run(main)
    else:
        code = uvloop.run(main)
    raise typer.Exit(code)


@agent_app.command("status")
@_friendly
def agent_status(
    data_dir: Annotated[Path, typer.Option(help="The agent's data directory.")] = Path(
        ".waypost-agent"
    ),
    url: Annotated[str | None, typer.Option(help="The agent's status URL instead.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a running agent's sync state, last error, definitions and checks."""
    import httpx

    from waypost.agent.agent import read_status, status_lines

    base = url or read_status(data_dir)
    try:
        resp = httpx.get(f"{base.rstrip('/')}/status", timeout=5)
    except httpx.HTTPError as exc:
        raise Unavailable(f"agent at {base} did not answer: {exc}") from None
    data = resp.json()
    if as_json:
        _print_json(data)
        return
    for line in status_lines(data):
        out.print(line)


@app.command("dns-worker", hidden=True)
@_friendly
def dns_worker(
    server: Annotated[str, typer.Option(help="The server to follow.")],
    dns: Annotated[str, typer.Option(help="HOST:PORT to share (comma list).")],
    dns_domain: Annotated[str, typer.Option()] = "waypost",
    dns_custom_zones: Annotated[str, typer.Option()] = DEFAULT_CUSTOM_ZONES,
    dns_forward_clients: Annotated[str, typer.Option()] = DEFAULT_FORWARD_CLIENTS,
    dns_ttl: Annotated[str, typer.Option()] = "5s",
    dns_allow_warning: Annotated[bool, typer.Option("--dns-allow-warning")] = False,
    recursor: Annotated[list[str] | None, typer.Option()] = None,
) -> None:
    """A DNS worker process (started by a server run with --dns-workers)."""
    import logging

    from waypost.dns.workers import run_worker
    from waypost.settings import Settings

    logging.basicConfig(level="WARNING", stream=sys.stderr)
    settings = Settings(dns=dns, recursors=",".join(recursor or []), dns_ttl=dns_ttl)
    coro = run_worker(
        server,
        settings.dns_listeners(),
        domain=dns_domain,
        custom_zones=dns_custom_zones,
        forward_clients=dns_forward_clients,
        ttl_s=settings.dns_ttl_s(),
        allow_warning=dns_allow_warning,
        recursors=settings.recursor_list(),
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        import asyncio

        asyncio.run(coro)
    else:
        uvloop.run(coro)


@app.command()
def version() -> None:
    """Print the Waypost version."""
    out.print(__version__)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
