"""Ed25519 signatures on drug settings: an author and an approver sign each library version.

A signature covers the setting's *version* (the full SHA-256 of its normalised content,
see ``pumpctl.setting.content_version``) and the signer's role, so comments and layout do
not matter, an author's signature cannot be reused as an approval, and the content stored
in the database can be checked again at every load. Signatures live beside the file in
``FILE.sig.toml`` (see ``docs/trust.md``).
"""

from __future__ import annotations

import base64
import binascii
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pumpctl.errors import InputError

SIGN_ROLES = ("author", "approver")
_PKG_DIR = Path(__file__).resolve().parent
#: The shipped demo key pairs (for benches and tests only; their private keys are public).
DEMO_KEY_DIR = _PKG_DIR / "demo_keys"


def message(version: str, role: str) -> bytes:
    """The bytes a signer signs: a fixed prefix, the role and the setting version."""
    return f"pumpctl drug setting signature v1\nrole={role}\nversion={version}\n".encode()


def sig_path(setting_path: str | Path) -> Path:
    """Where the signatures of ``setting_path`` live: ``FILE.sig.toml``."""
    p = Path(setting_path)
    return p.with_name(p.name + ".sig.toml")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, what: str, size: int) -> bytes:
    try:
        raw = base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise InputError(f"{what} is not base64; allowed: {size} bytes in base64") from None
    if len(raw) != size:
        raise InputError(f"{what} has {len(raw)} bytes; allowed: {size} bytes in base64")
    return raw


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------
def public_text(pub: Ed25519PublicKey) -> str:
    """A public key as one line: ``ed25519:BASE64`` (32 raw bytes)."""
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + _b64(raw)


def parse_public(text_or_path: str) -> str:
    """A public key given as ``ed25519:BASE64`` or as a file holding that line; canonical text."""
    text = text_or_path.strip()
    if not text.startswith("ed25519:"):
        p = Path(text_or_path)
        try:
            text = p.read_text().strip().split()[0] if p.is_file() else text
        except (OSError, UnicodeDecodeError, IndexError):
            raise InputError(f"{text_or_path}: cannot read a public key from it") from None
    if not text.startswith("ed25519:"):
        raise InputError(
            f"{text_or_path!r} is not a public key; allowed: 'ed25519:BASE64' or a .pub file "
            "made by 'pumpctl keys generate'"
        )
    raw = _unb64(text[len("ed25519:") :], "public key", 32)
    return "ed25519:" + _b64(raw)


def load_public(text: str) -> Ed25519PublicKey:
    """The key object for a canonical ``ed25519:BASE64`` text."""
    return Ed25519PublicKey.from_public_bytes(_unb64(text[len("ed25519:") :], "public key", 32))


def load_private(path: str | Path) -> Ed25519PrivateKey:
    """An unencrypted PKCS#8 PEM Ed25519 private key."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot read the key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InputError(
            f"{p}: not an unencrypted Ed25519 private key (PEM); allowed: a key made by "
            "'pumpctl keys generate'"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{p}: is not an Ed25519 key; allowed: Ed25519 (pumpctl keys generate)")
    return key


def generate(out: str | Path) -> tuple[Path, Path]:
    """Write a new private key to ``out`` (mode 0600) and its public key to ``out.pub``."""
    p = Path(out)
    if not p.name or p.name in (".", ".."):
        raise InputError(f"{str(out)!r} is not a file name; allowed: a path for the new key")
    pub_p = p.with_name(p.name + ".pub")
    for q in (p, pub_p):
        if q.exists():
            raise InputError(f"{q}: already exists; allowed: a new file name")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        pub_p.write_text(public_text(key.public_key()) + "\n")
    except OSError as exc:
        raise InputError(f"{p}: cannot write the key: {exc.strerror}") from None
    return p, pub_p


def demo_public(role: str) -> str:
    """The shipped demo public key for ``role`` (author or approver)."""
    return parse_public(str(DEMO_KEY_DIR / f"demo_{role}.key.pub"))


# ---------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Signature:
    """One role's signature over a setting version."""

    role: str
    public_key: str  # ed25519:BASE64
    signature: str  # BASE64 of 64 bytes

    def valid_for(self, version: str) -> bool:
        """Does the signature verify over ``version`` and this role?"""
        try:
            sig = _unb64(self.signature, "signature", 64)
            load_public(self.public_key).verify(sig, message(version, self.role))
        except (InvalidSignature, InputError, ValueError):
            return False
        return True

    def to_json(self) -> dict[str, str]:
        """Plain dict (TOML and database)."""
        return {"role": self.role, "public_key": self.public_key, "signature": self.signature}


def sign(version: str, role: str, key: Ed25519PrivateKey) -> Signature:
    """Sign ``version`` in ``role``."""
    if role not in SIGN_ROLES:
        raise InputError(f"--role {role!r}; allowed: {' or '.join(SIGN_ROLES)}")
    return Signature(role, public_text(key.public_key()), _b64(key.sign(message(version, role))))


def read_signatures(setting_path: str | Path) -> tuple[str | None, list[Signature]]:
    """The version the sidecar says and its signatures ([] when there is no sidecar)."""
    sp = sig_path(setting_path)
    if not sp.exists():
        return None, []
    try:
        raw: dict[str, Any] = tomllib.loads(sp.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise InputError(f"{sp}: cannot read the signatures: {exc}") from None
    if raw.get("kind") != "setting_signatures" or not isinstance(raw.get("signature", []), list):
        raise InputError(
            f"{sp}: not a signature file; allowed: kind = 'setting_signatures' with "
            "[[signature]] tables"
        )
    sigs = []
    for i, s in enumerate(raw.get("signature", [])):
        if not isinstance(s, dict) or not all(
            isinstance(s.get(k), str) for k in ("role", "public_key", "signature")
        ):
            raise InputError(f"{sp}: signature[{i}] needs role, public_key and signature strings")
        if s["role"] not in SIGN_ROLES:
            raise InputError(
                f"{sp}: signature[{i}].role = {s['role']!r}; allowed: {' or '.join(SIGN_ROLES)}"
            )
        sigs.append(Signature(s["role"], s["public_key"], s["signature"]))
    version = raw.get("version")
    return (version if isinstance(version, str) else None), sigs


def write_signatures(setting_path: str | Path, version: str, sigs: list[Signature]) -> Path:
    """Write the sidecar: one signature per role, newest wins."""
    sp = sig_path(setting_path)
    lines = [
        "# pumpctl drug-setting signatures (Ed25519); written by 'pumpctl setting sign'.",
        "# Each signature covers the role and the setting version (SHA-256 of its content).",
        'kind = "setting_signatures"',
        f'version = "{version}"',
    ]
    for s in sorted(sigs, key=lambda s: SIGN_ROLES.index(s.role)):
        lines += [
            "",
            "[[signature]]",
            f'role = "{s.role}"',
            f'public_key = "{s.public_key}"',
            f'signature = "{s.signature}"',
        ]
    tmp = sp.with_name(sp.name + ".tmp")
    try:
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(sp)
    except OSError as exc:
        raise InputError(f"{sp}: cannot write the signatures: {exc.strerror}") from None
    return sp


def add_signature(setting_path: str | Path, version: str, new: Signature) -> Path:
    """Add (or replace) one role's signature; signatures of an older version are dropped."""
    old_version, sigs = read_signatures(setting_path)
    keep = [s for s in sigs if old_version == version and s.role != new.role]
    return write_signatures(setting_path, version, [*keep, new])


def check_signatures(version: str, sigs: list[Signature], trusted: dict[str, set[str]]) -> str:
    """Why ``sigs`` do not approve ``version`` (``""`` when they do).

    ``trusted`` maps a public key to the roles it is trusted for. Both an author's and an
    approver's valid signature are needed, from two different keys.
    """
    good: dict[str, set[str]] = {r: set() for r in SIGN_ROLES}
    problems = []
    for s in sigs:
        if s.role not in trusted.get(s.public_key, set()):
            problems.append(f"the {s.role} key {s.public_key[:20]}... is not trusted as {s.role}")
        elif not s.valid_for(version):
            problems.append(f"the {s.role} signature does not match this content")
        else:
            good[s.role].add(s.public_key)
    for role in SIGN_ROLES:
        if not good[role]:
            why = "; ".join(problems) or "no signature"
            return f"no valid {role} signature ({why})"
    if not any(a != b for a in good["author"] for b in good["approver"]):
        return "the author and the approver signed with the same key; allowed: two different keys"
    return ""
