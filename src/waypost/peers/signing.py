"""Signed registry entries: Ed25519 (``cryptography``), key and signature in the entry.

An entry is signed over its canonical JSON (every field but ``signature``, keys sorted,
no spaces), so any change after signing (an address, a port, an added field) breaks
it. ``public_key`` and ``signature`` are base64 of the raw 32- and 64-byte values. A key
pair on disk: ``node.key`` (PKCS#8 PEM, mode 0600) and ``node.pub`` (the base64 public
key on one line). With trust keys set, a consumer takes only entries signed by one of
them; without, it still refuses an entry whose signature does not verify.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .entry import EntryError, decode

KEY_FILE = "node.key"
PUB_FILE = "node.pub"


def canonical(raw: Mapping[str, Any]) -> bytes:
    """What a signature covers: the entry without ``signature``, keys sorted."""
    body = {k: v for k, v in raw.items() if k != "signature"}
    return msgspec.json.encode(body, order="sorted")


def public_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def keygen(directory: Path) -> tuple[Path, Path]:
    """Write a new key pair to ``directory``; refuses to overwrite a key."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / KEY_FILE, directory / PUB_FILE
    if key_path.exists():
        raise EntryError(f"{key_path} exists: not overwriting a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_text(public_text(key.public_key()) + "\n")
    return key_path, pub_path


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise EntryError(f"{path}: not a readable Ed25519 private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise EntryError(f"{path}: not an Ed25519 key")
    return key


def trusted_key(text_or_path: str) -> str:
    """A trust key given as its base64 text or as the path of a ``.pub`` file: the
    base64 text, checked."""
    text = text_or_path.strip()
    path = Path(text)
    if not _is_key(text) and path.exists():
        text = path.read_text().strip()
    if not _is_key(text):
        raise EntryError(
            f"trust key {text_or_path!r}: not an Ed25519 public key (base64 of 32 bytes)"
        )
    return text


def _is_key(text: str) -> bool:
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def sign(raw: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The entry with ``public_key`` and ``signature`` set (replacing older ones)."""
    body = {k: v for k, v in raw.items() if k not in ("signature", "public_key")}
    body["public_key"] = public_text(key.public_key())
    body["signature"] = base64.b64encode(key.sign(canonical(body))).decode()
    return body


def verify(raw: Mapping[str, Any], trust: Iterable[str] = ()) -> None:
    """Nothing when the entry may be used; EntryError saying why it may not."""
    trusted = set(trust)
    sig, pub = raw.get("signature"), raw.get("public_key")
    if sig is None:
        if trusted:
            raise EntryError("unsigned, and trust keys are set")
        return
    if not isinstance(sig, str) or not isinstance(pub, str) or not _is_key(pub):
        raise EntryError("signature or public_key malformed")
    if trusted and pub not in trusted:
        raise EntryError("signed by a key that is not trusted")
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(pub)).verify(
            base64.b64decode(sig, validate=True), canonical(raw)
        )
    except (InvalidSignature, binascii.Error, ValueError):
        raise EntryError("the signature does not match: changed after signing") from None


def sign_file(path: Path, key: Ed25519PrivateKey) -> int:
    """Sign a registry file or every entry of a peers file, in place; how many."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EntryError(f"{path}: {exc.strerror or exc}") from None
    doc = msgspec.json.decode(data) if data.strip() else None
    entries = decode(data, str(path))
    signed = [sign(e, key) for e in entries]
    out: Any = signed[0] if isinstance(doc, dict) and "peers" not in doc else signed
    if isinstance(doc, dict) and "peers" in doc:
        out = {**doc, "peers": signed}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(out), indent=2) + b"\n")
    os.replace(tmp, path)
    return len(signed)
