"""``pumpctl setting check|sign|install``: validate, sign and install drug settings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pumpctl.errors import InputError
from pumpctl.setting import DrugSetting, load_any, load_setting, short_version


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``setting`` sub-command group."""
    p = sub.add_parser(
        "setting",
        help="check, sign or install pump settings and pump profiles",
        description="Check drug settings and pump profiles (TOML; checked together, every bag "
        "must fit each pump's reservoir), sign a drug setting as its author or approver, "
        "install a signed setting in a run's event log, or show what is installed.",
    )
    ssub = p.add_subparsers(dest="setting_command", required=True, parser_class=type(p))
    c = ssub.add_parser(
        "check",
        help="validate files and print each one's version",
        description="Validate each file; print 'OK file kind name version' or one error line.",
    )
    c.add_argument(
        "files", nargs="+", metavar="FILE", help="drug setting or pump profile TOML files"
    )
    c.set_defaults(func=check)
    s = ssub.add_parser(
        "sign",
        help="sign a drug setting as its author or approver (writes FILE.sig.toml)",
        description="Sign the setting's version (the SHA-256 of its content) with an Ed25519 "
        "private key. A setting installs only with an author's and an approver's signature "
        "by two different keys the database trusts.",
    )
    s.add_argument("file", metavar="FILE", help="the drug setting TOML file to sign")
    s.add_argument(
        "--key", required=True, metavar="KEY", help="private key (pumpctl keys generate)"
    )
    s.add_argument(
        "--role",
        required=True,
        choices=("author", "approver"),
        help="sign as the author or as the approver (both are needed to install)",
    )
    s.set_defaults(func=sign)
    i = ssub.add_parser(
        "install",
        help="verify a signed setting and store it in the event database",
        description="Verifies the author's and approver's signatures (FILE.sig.toml) against "
        "the keys the database trusts, shows what changed against the installed version "
        "(limits first) and stores the content: the controller runs from the stored copy. "
        "During a run the new version waits until a nurse accepts it at the pump. Needs a "
        "biomed operator's secret (prompt, or PUMPCTL_OPERATOR_SECRET).",
    )
    i.add_argument("file", metavar="FILE", help="the signed drug setting TOML file")
    i.add_argument(
        "--db", required=True, metavar="PATH", help="the event log (SQLite; created if missing)"
    )
    i.add_argument(
        "--operator", metavar="ID", help="biomed operator (default with --demo: biomed-demo)"
    )
    i.add_argument(
        "--demo",
        action="store_true",
        help="on a new database: trust the shipped DEMO keys and the demo roster "
        "(biomed-demo, pharm-demo, rn-demo, charge-demo; secret 'demo'); the database says DEMO",
    )
    i.set_defaults(func=install)
    sh = ssub.add_parser("show", help="the active (and any pending) setting of a database")
    sh.add_argument("--db", required=True, metavar="PATH", help="the run's event log (SQLite)")
    sh.set_defaults(func=show)


def check(args: argparse.Namespace) -> int:
    """Validate every file; print ``OK kind name version`` or one error line each."""
    from pumpctl.setting import PumpModel, check_fits

    failed = 0
    loaded: list[DrugSetting | PumpModel] = []
    for f in args.files:
        if str(f).endswith(".sig.toml"):
            print(f"--  {f}  signatures (verified by 'pumpctl setting install')")
            continue
        try:
            item = load_any(f)
        except InputError as exc:
            print(f"pumpctl setting check: {exc}", file=sys.stderr)
            failed += 1
            continue
        loaded.append(item)
        kind = "setting" if isinstance(item, DrugSetting) else "pump"
        print(f"OK  {f}  {kind} '{item.name}'  version {item.version}")
    # Settings checked together with pump profiles must fit those pumps' reservoirs.
    for st in (x for x in loaded if isinstance(x, DrugSetting)):
        for pm in (x for x in loaded if isinstance(x, PumpModel)):
            try:
                check_fits(st, pm)
            except InputError as exc:
                print(f"pumpctl setting check: {exc}", file=sys.stderr)
                failed += 1
    return 2 if failed else 0


def _drug_setting(file: str) -> DrugSetting:
    item = load_any(file) if Path(file).exists() else load_setting(file)  # or a shipped name
    if not isinstance(item, DrugSetting):
        raise InputError(f"{file}: is a pump profile; allowed: a drug setting")
    return item


def sign(args: argparse.Namespace) -> int:
    """Add this role's signature to ``FILE.sig.toml``."""
    from pumpctl import signing

    setting = _drug_setting(args.file)
    key = signing.load_private(args.key)
    sp = signing.add_signature(
        setting.path, setting.version, signing.sign(setting.version, args.role, key)
    )
    print(
        f"signed '{setting.name}' version {setting.version} as {args.role} with "
        f"{signing.public_text(key.public_key())}: {sp}"
    )
    return 0


def install(args: argparse.Namespace) -> int:
    """Verify, authenticate, show the changes and store the setting."""
    from pumpctl import library, roster, signing
    from pumpctl.clock import SystemClock
    from pumpctl.eventlog import EventLog, is_demo

    setting = _drug_setting(args.file)
    signed_version, sigs = signing.read_signatures(setting.path)
    if not sigs:
        raise InputError(
            f"{args.file}: not signed ({signing.sig_path(setting.path)} is missing); "
            "allowed: a setting signed by an author and an approver (pumpctl setting sign)"
        )
    if signed_version != setting.version:
        raise InputError(
            f"{args.file}: its content ({short_version(setting.version)}) is not what was "
            f"signed ({short_version(str(signed_version))}); allowed: sign this version again"
        )
    operator = (
        args.operator if args.operator is not None else ("biomed-demo" if args.demo else None)
    )
    if operator is None:
        raise roster.AuthError("--operator is missing; allowed: a biomed operator id")
    clock = SystemClock()
    with EventLog(args.db, wall_epoch_s=clock.wall_epoch()) as log:
        if args.demo:
            library.init_demo(log, clock.now())
        secret = roster.read_secret(f"secret for {operator}: ")
        roster.authenticate(log, operator, secret, "install_setting")
        outcome, lines = library.install_signed(log, setting, sigs, operator, clock.now())
        demo = " [DEMO]" if is_demo(log) else ""
    if outcome == "unchanged":
        print(f"'{setting.name}' version {setting.version} is already the active setting{demo}")
        return 0
    print(f"changes against the installed version ({len(lines)} line(s), limits first):")
    print("\n".join(lines) if lines else "  (none)")
    if outcome == "pending":
        print(
            f"installed '{setting.name}' version {setting.version} in {args.db} by {operator}"
            f"{demo}: a run is under way, so it takes effect when a nurse accepts it at the pump"
        )
    else:
        print(
            f"installed '{setting.name}' version {setting.version} in {args.db} by {operator}{demo}"
        )
    return 0


def show(args: argparse.Namespace) -> int:
    """Print the active and pending versions, who signed them, and DEMO (read-only)."""
    from pumpctl import library
    from pumpctl.eventlog import EventLog, is_demo

    with EventLog(args.db, readonly=True) as log:
        if is_demo(log):
            print("DEMO database: demo keys and roster")
        active = library.installed_setting(log)
        pending = library.pending_setting(log)
        for label, st in (("active", active), ("pending", pending)):
            if st is None:
                continue
            sigs = library.stored_signatures(log, st.version)
            who = ", ".join(f"{s['role']} {s['public_key'][:20]}..." for s in sigs) or "unsigned"
            print(f"{label:8s} '{st.name}' version {st.version} (signed: {who})")
        if pending is not None:
            print("the pending version takes effect when a nurse accepts it at the pump")
    return 0
