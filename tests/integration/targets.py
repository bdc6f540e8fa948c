"""Real things for health checks to look at, run by the test itself: an HTTP(S) server
whose answers the test sets (and which can hold one request while the test looks), a
TCP port that opens and closes, a gRPC server with the standard health service, and a
self-signed certificate."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
from pathlib import Path
from typing import Any


class HttpTarget:
    """An HTTP server on 127.0.0.1 answering ``code`` to every request (a thread).

    ``hold_at = n`` makes the n-th request wait until ``release()`` (a check run the test
    has stopped in its tracks); ``hang = True`` makes every request wait until closed."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.code = 200
        self.body = b"ok"
        self.location = ""  # sent as Location when set (a redirect)
        self.requests = 0
        self.hold_at: int | None = None
        self.hang = False
        self.held = threading.Event()
        self._release = threading.Event()
        self._closed = threading.Event()
        self.seen = threading.Condition()
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with target.seen:  # the answer is decided as the request is counted
                    target.requests += 1
                    n = target.requests
                    code, body, location = target.code, target.body, target.location
                    target.seen.notify_all()
                if target.hold_at == n:
                    target.held.set()
                    target._release.wait(30)
                    # Re-armed for the next hold: one release frees one held request (a
                    # release left set let the next hold through at once, so a test read
                    # the status after the held result had already been judged).
                    target._release.clear()
                if target.hang:
                    target._closed.wait(30)
                    return
                self.send_response(code)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="http-target")
        self.thread.start()

    def wait_requests(self, n: int, timeout_s: float = 20.0) -> None:
        with self.seen:
            if not self.seen.wait_for(lambda: self.requests >= n, timeout_s):
                raise AssertionError(f"the target saw {self.requests} requests, not {n}")

    def release(self) -> None:
        self.hold_at = None
        self._release.set()

    def close(self) -> None:
        self._closed.set()
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class TcpTarget:
    """A listening TCP port on 127.0.0.1 that can be closed and opened again."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.open()

    def open(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.sock = sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class GrpcTarget:
    """A gRPC server with grpc.health.v1; ``set(service, serving)`` flips a status."""

    def __init__(self) -> None:
        from concurrent import futures

        import grpc
        from grpc_health.v1 import health, health_pb2_grpc

        self.health = health.HealthServicer()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def set(self, service: str, serving: bool) -> None:
        from grpc_health.v1 import health_pb2

        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set(service, status)

    def close(self) -> None:
        self.server.stop(0).wait(10)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "waypost-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
