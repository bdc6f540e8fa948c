"""TLS for Waypost's listeners: a small development CA and certificates
(``waypost tls ca create``, ``waypost tls cert create``, as ``consul tls`` makes them),
and the server's ``ssl.SSLContext``: TLS 1.2 at least, forward-secret AEAD ciphers only,
optionally requiring client certificates from one CA (mutual TLS).

Keys are ECDSA P-256 (every TLS 1.2 and 1.3 client takes them) and are written readable by
their owner only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from waypost.errors import InvalidInput

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
# TLS 1.2 suites: ECDHE key exchange, AEAD ciphers (TLS 1.3's own suites are all of that
# kind). No RSA key exchange, CBC, RC4, 3DES, NULL or EXPORT.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!EXPORT:!DES:!RC4:!3DES:!MD5:!PSK"
CA_DAYS = 5 * 365
CERT_DAYS = 365


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write ``data``; a private key is created 0600 (never readable by others, even for
    a moment)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _refuse_overwrite(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise InvalidInput(f"{path} exists: remove it first (nothing was written)")


def create_ca(folder: Path, *, name: str = "Waypost development CA", days: int = CA_DAYS) -> Path:
    """Write ``folder/ca.pem`` and ``folder/ca-key.pem``; the certificate's path."""
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    _refuse_overwrite(cert_path, key_path)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert_path


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise InvalidInput(
            f"no CA in {folder}: {exc.strerror} ({exc.filename}); run `waypost tls ca create`"
        ) from None
    except ValueError as exc:
        raise InvalidInput(f"the CA in {folder} cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInput(f"{key_path}: not an ECDSA key (made by `waypost tls ca create`?)")
    return cert, key


def create_cert(
    folder: Path, name: str, *, server: bool, days: int = CERT_DAYS
) -> tuple[Path, Path]:
    """Write ``folder/NAME.pem`` and ``folder/NAME-key.pem``, signed by the CA in
    ``folder``. A server certificate names NAME, ``localhost`` and ``127.0.0.1`` (and
    ``::1``); a client certificate carries NAME as its subject (and a
    ``waypost://client/NAME`` URI) for mutual TLS, and may serve on loopback too (it
    names ``localhost``, ``127.0.0.1`` and ``::1``, for both usages)."""
    if not name or "/" in name or name.startswith(".") or len(name) > 64:
        raise InvalidInput(f"name: {name!r} must be a file-name-safe name of 1-64 characters")
    ca_cert, ca_key = _load_ca(folder)
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}-key.pem"
    _refuse_overwrite(cert_path, key_path)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = []
    if server:
        names = [name, "localhost"] if name != "localhost" else [name]
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        # As Consul's client certificates: usable to serve on loopback too (an agent's
        # status port, a proxy, an actor network's links), so both usages and localhost.
        sans.append(x509.UniformResourceIdentifier(f"waypost://client/{name}"))
        sans.append(x509.DNSName("localhost"))
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([usage] if server else [usage, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert_path, key_path


def server_context(
    cert: str, key: str, *, ca: str = "", verify_clients: bool = False
) -> ssl.SSLContext:
    """The TLS context of a listener: TLS 1.2 or newer, the CIPHERS above; with
    ``verify_clients``, a client must present a certificate signed by ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    for what, path in (("tls_cert", cert), ("tls_key", key), ("tls_ca", ca)):
        if path and not Path(path).is_file():
            raise InvalidInput(f"{what}: cannot read {path} (no such file)", field=what)
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise InvalidInput(
            f"tls: {cert} and {key} are not a certificate and its key ({exc})", field="tls_cert"
        ) from None
    if verify_clients:
        if not ca:
            raise InvalidInput("tls_verify_clients: needs --tls-ca", field="tls_ca")
        ctx.verify_mode = ssl.CERT_REQUIRED
    if ca:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise InvalidInput(f"tls_ca: cannot read {ca} ({exc})", field="tls_ca") from None
    return ctx


def client_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """A client's TLS context: the system's trust store plus ``ca``, TLS 1.2 or newer,
    presenting ``cert`` and ``key`` when given (mutual TLS)."""
    for what, path in (("tls_ca", ca), ("tls_cert", cert), ("tls_key", key)):
        if path and not Path(path).is_file():
            raise InvalidInput(f"{what}: cannot read {path} (no such file)", field=what)
    if bool(cert) != bool(key):
        raise InvalidInput(
            "tls: give the client certificate and its key together", field="tls_cert"
        )
    ctx = ssl.create_default_context(cafile=ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise InvalidInput(
                f"tls: {cert} and {key} are not a certificate and its key ({exc})",
                field="tls_cert",
            ) from None
    return ctx


class LiveContext:
    """A listener's TLS context that SIGHUP replaces whole. Loading new files into a live
    context only adds to it (``load_verify_locations`` appends: a CA removed from the
    file stayed trusted), so a reload builds a fresh context and every new handshake is
    moved onto it from the listener's own context, in the ClientHello callback (which
    OpenSSL calls for every hello, with or without a server name). Established
    connections keep the context they began with."""

    def __init__(self, front: ssl.SSLContext) -> None:
        self.front = front
        self.current = front
        front.sni_callback = self._pick

    def _pick(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
              ctx: ssl.SSLContext) -> None:  # fmt: skip
        current = self.current
        if current is not self.front:
            conn.context = current

    def reload(self, cert: str, key: str, *, ca: str = "", verify_clients: bool = False) -> None:
        """Read the files into a fresh context for new connections; InvalidInput (and the
        old context kept) when one cannot be read or the key does not match."""
        self.current = server_context(cert, key, ca=ca, verify_clients=verify_clients)
