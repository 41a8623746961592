"""``pumpctl keys generate|trust|list``: signing keys for drug settings."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``keys`` sub-command group."""
    p = sub.add_parser(
        "keys",
        help="make signing keys; trust public keys in a database",
        description="Generate Ed25519 key pairs for signing drug settings, and trust public "
        "keys (as author or approver) in a run's database, as a biomed administrator.",
    )
    ksub = p.add_subparsers(dest="keys_command", required=True, parser_class=type(p))
    g = ksub.add_parser("generate", help="a new Ed25519 key pair: OUT (private, 0600), OUT.pub")
    g.add_argument("out", metavar="OUT", help="path of the private key (OUT.pub gets the public)")
    g.set_defaults(func=generate)
    t = ksub.add_parser(
        "trust",
        help="trust a public key to sign settings in a role (biomed administrator)",
    )
    t.add_argument("public_key", metavar="PUBKEY", help="'ed25519:BASE64' or a .pub file")
    t.add_argument(
        "--role", required=True, choices=("author", "approver"), help="what this key may sign"
    )
    t.add_argument("--db", required=True, metavar="PATH", help="the run's event log (SQLite)")
    t.add_argument("--operator", required=True, metavar="ID", help="biomed operator")
    t.set_defaults(func=trust)
    ls = ksub.add_parser("list", help="the public keys a database trusts")
    ls.add_argument("--db", required=True, metavar="PATH", help="the run's event log (SQLite)")
    ls.set_defaults(func=list_keys)


def generate(args: argparse.Namespace) -> int:
    """Write a key pair."""
    from pumpctl import signing

    priv, pub = signing.generate(args.out)
    print(f"private key {priv} (keep it secret), public key {pub}: {pub.read_text().strip()}")
    return 0


def trust(args: argparse.Namespace) -> int:
    """Authenticate a biomed operator and trust the key."""
    from pumpctl import library, roster
    from pumpctl.clock import SystemClock
    from pumpctl.errors import InputError
    from pumpctl.eventlog import EventLog
    from pumpctl.signing import parse_public

    parse_public(args.public_key)  # a bad key is refused before anything is opened
    if not Path(args.db).is_file():
        raise InputError(f"{args.db}: no such event log; allowed: a database with a roster")
    clock = SystemClock()
    with EventLog(args.db, wall_epoch_s=clock.wall_epoch()) as log:
        secret = roster.read_secret(f"secret for {args.operator}: ")
        roster.authenticate(log, args.operator, secret, "trust_key")
        key = library.trust_key(log, args.public_key, args.role, args.operator, clock.now())
    print(f"trusted {key} as {args.role} in {args.db} by {args.operator}")
    return 0


def list_keys(args: argparse.Namespace) -> int:
    """Print each trusted key and its roles."""
    from pumpctl import library
    from pumpctl.eventlog import EventLog

    with EventLog(args.db, readonly=True) as log:
        for key, roles in sorted(library.trusted_keys(log).items()):
            print(f"{key}  {', '.join(sorted(roles))}")
    return 0
