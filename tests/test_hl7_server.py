"""``pumpctl hl7 serve`` over real sockets on 127.0.0.1: orders, answers, reliable delivery."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pumpctl.cli import main
from pumpctl.eventlog import EventLog
from pumpctl.hl7 import codec
from pumpctl.hl7.server import Hl7Server, ServeConfig, run_in_thread
from pumpctl.setting import load_setting
from tests.hl7_support import Receiver, frame, obx_values, read_block, send_plain

ROOT = Path(__file__).resolve().parent.parent
ORDER = (ROOT / "examples" / "hl7" / "anakinra_rgv_o15.hl7").read_text()
RATE_ML_H = "|12.5|3122^mL/h^UCUM^265266^MDC_DIM_MILLI_L_PER_HR^MDC|"
SPEED = 3000.0  # 27 simulated minutes from order to start take about half a second


def order(control_id: str, *changes: tuple[str, str]) -> str:
    """The example order with its own control id and some substrings replaced."""
    text = ORDER.replace("|ORD0001|", f"|{control_id}|")
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new)
    return codec.strip_comments(text)


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "run.db"
    with EventLog(path) as log:
        log.install_setting(load_setting("anakinra_continuous"), "biomed")
    return str(path)


@pytest.fixture
def receiver():
    rcv = Receiver().up()
    yield rcv
    rcv.close()


@pytest.fixture
def servers():
    started: list[Hl7Server] = []

    def start(db: str, forward_port: int | None, **kw: object) -> Hl7Server:
        cfg = ServeConfig(
            db=db,
            listen=("127.0.0.1", 0),
            forward=None if forward_port is None else ("127.0.0.1", forward_port),
            speed=SPEED,
            retry_s=0.05,
            ack_timeout_s=5.0,
            **kw,  # type: ignore[arg-type]
        )
        srv = run_in_thread(cfg)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        stop(srv)


def stop(srv: Hl7Server) -> None:
    if not srv.thread.is_alive():  # type: ignore[attr-defined]
        return
    srv.stop()
    srv.thread.join(10.0)  # type: ignore[attr-defined]
    assert not srv.thread.is_alive()  # type: ignore[attr-defined]


def msa(msg) -> tuple[str, str]:
    return codec.ack_code(msg)[:2]


def rrg_for(rcv: Receiver, control_id: str):
    return rcv.wait_for(
        lambda: [m for m in rcv.of_type("RRG^O16") if msa(m)[1] == control_id],
        what=f"RRG^O16 for {control_id}",
    )[0]


def err5(msg) -> str:
    return codec.val(codec.first(msg, "ERR"), 5, 1)


def test_accepted_order_is_programmed_started_and_reported(db, receiver, servers) -> None:
    srv = servers(db, receiver.port, device_id="PUMP01", status_period_s=600.0)
    ack = send_plain(srv.bound[1], order("OK1"))
    assert msa(ack) == ("CA", "OK1")
    assert codec.val(ack.segment("MSH"), 9, 2) == "O15"
    rrg = rrg_for(receiver, "OK1")
    assert msa(rrg) == ("AA", "OK1") and codec.first(rrg, "ERR") is None
    start = receiver.wait_for(
        lambda: [m for m in receiver.of_type("ORU^R42") if "DELIV_START" in str(m)],
        what="PCD-10 delivery start",
    )[0]
    assert obx_values(start)["157784"] == "12.5"
    i_start = next(i for i, m in enumerate(receiver.messages) if m is start)
    status = receiver.wait_for(
        lambda: [m for m in receiver.messages[i_start + 1 :] if "ORU^R01" in str(m)],
        what="PCD-01 status after the start",
    )[0]
    v = obx_values(status)
    assert v["157784"] == "12.5" and v["184508"] == "^pump-status-infusing"
    # VTBI of the first bag: its content less the line prime, at the pump's worst flow
    assert float(v["157884"]) == pytest.approx(89.8) and v["184514"] == "anakinra"
    # the order's patient is echoed on what the pump reports
    assert "MRN0001" in str(status.segment("PID"))
    # a second order for a pump already programmed is refused by the controller
    assert msa(send_plain(srv.bound[1], order("OK2"))) == ("CA", "OK2")
    again = rrg_for(receiver, "OK2")
    assert msa(again)[0] == "AR" and err5(again) == "9015"


def test_refused_and_malformed_orders(db, receiver, servers) -> None:
    srv = servers(db, receiver.port, device_id="PUMP01", status_period_s=None)
    port = srv.bound[1]
    # not in the drug library: accepted for processing, then refused with 9010
    assert msa(send_plain(port, order("D1", ("ANAK^anakinra^LOCAL", "5678^Dopamine"))))[0] == "CA"
    rrg = rrg_for(receiver, "D1")
    assert msa(rrg)[0] == "AR" and err5(rrg) == "9010"
    # over the 2 mg/kg/h hard limit (4200 mg/day at 70 kg = 2.5 mg/kg/h)
    hard = order("H1", (RATE_ML_H, "|4200|mg/d^mg/d^UCUM|"), ("|200|", "|1400|"))
    assert msa(send_plain(port, hard))[0] == "CA"
    rrg = rrg_for(receiver, "H1")
    assert msa(rrg)[0] == "AR" and err5(rrg) == "9011"
    assert "hard limit" in codec.val(codec.first(rrg, "ERR"), 8)
    # malformed: commit reject on the connection, application error to the receiver
    ack = send_plain(port, order("M1", ("|12.5|", "|twelve|")))
    assert msa(ack) == ("CR", "M1")
    assert "RXG-15" in codec.val(ack.segment("ERR"), 8)
    rrg = rrg_for(receiver, "M1")
    assert msa(rrg)[0] == "AE"
    # not for this device: commit reject, and nothing to the receiver
    ack = send_plain(port, order("W1", ("^^PUMP01^", "^^PUMP77^")))
    assert msa(ack) == ("CR", "W1") and codec.val(ack.segment("ERR"), 3) == "204"
    # junk in an MLLP block, and a block without its start byte: CR, and the server lives on
    assert msa(send_plain(port, "hello"))[0] == "CR"
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"no start block\x1c\r" + frame(order("OK9")))
        buf = bytearray()
        first, second = read_block(s, buf), read_block(s, buf)
    assert first is not None and "MSA|CR" in first.decode()
    assert second is not None and "MSA|CA|OK9" in second.decode()
    rrg = rrg_for(receiver, "OK9")
    assert msa(rrg)[0] == "AA"
    rrgs = [msa(m) for m in receiver.of_type("RRG^O16")]
    assert rrgs == [("AR", "D1"), ("AR", "H1"), ("AE", "M1"), ("AA", "OK9")]


def outbox_rows(db: str) -> list[tuple[int, str, str]]:
    with sqlite3.connect(db) as con:
        return list(con.execute("SELECT id, control_id, status FROM hl7_outbox ORDER BY id"))


def received_ids(rcv: Receiver) -> list[str]:
    return [codec.val(m.segment("MSH"), 10) for m in list(rcv.messages)]


def test_receiver_down_then_up_gets_every_message_in_order(db, servers) -> None:
    rcv = Receiver().up()
    rcv.down()  # a known port with nobody listening
    srv = servers(db, rcv.port, device_id="PUMP01", status_period_s=300.0)
    assert msa(send_plain(srv.bound[1], order("R1")))[0] == "CA"

    # down long enough for the order's answer, the delivery start and several status reports
    def kinds_queued() -> set[str]:
        with sqlite3.connect(db) as con:
            return {k for (k,) in con.execute("SELECT kind FROM hl7_outbox")}

    rcv.wait_for(
        lambda: (
            sum(1 for r in outbox_rows(db) if r[2] == "pending") >= 8 and "PCD-10" in kinds_queued()
        ),
        what="messages queued while the receiver is down",
    )
    kinds = kinds_queued()
    assert {"RRG", "PCD-10", "PCD-01"} <= kinds
    assert all(r[2] == "pending" for r in outbox_rows(db))
    try:
        rcv.up()
        queued = len(outbox_rows(db))
        rcv.wait_for(lambda: len(rcv.messages) >= queued + 2, what="the backlog and new ones")
        rcv.down()  # a second outage
        n_before = len(rcv.messages)
        rcv.wait_for(
            lambda: sum(1 for r in outbox_rows(db) if r[2] == "pending") >= 3,
            what="messages queued in the second outage",
        )
        rcv.up()
        rcv.wait_for(lambda: len(rcv.messages) >= n_before + 3, what="the second backlog")
        stop(srv)
    finally:
        rcv.close()
    rows = outbox_rows(db)
    got = received_ids(rcv)
    # A message whose ACK is cut off by the outage is sent again with the same control id
    # (MLLP is at-least-once): at most one repeat per outage, right where it happened.
    unique = [cid for i, cid in enumerate(got) if i == 0 or got[i - 1] != cid]
    assert len(got) - len(unique) <= 2 and len(unique) == len(set(unique))
    assert [cid for _id, cid, _s in rows][: len(unique)] == unique  # in order, none skipped
    delivered = [cid for _id, cid, status in rows if status == "delivered"]
    # acknowledged ones are marked delivered; at most the one in flight at the stop is not
    assert unique[: len(delivered)] == delivered and len(unique) - len(delivered) <= 1
    assert msa(rcv.of_type("RRG^O16")[0]) == ("AA", "R1")


def test_pending_messages_survive_a_restart(db, servers) -> None:
    rcv = Receiver().up()
    rcv.down()
    srv = servers(db, rcv.port, device_id="PUMP01", status_period_s=300.0)
    assert msa(send_plain(srv.bound[1], order("S1")))[0] == "CA"
    rcv.wait_for(lambda: len(outbox_rows(db)) >= 4, what="queued messages")
    stop(srv)
    queued = [cid for _id, cid, _s in outbox_rows(db)]
    try:
        rcv.up()
        servers(db, rcv.port, device_id="PUMP01", status_period_s=300.0)
        rcv.wait_for(lambda: len(rcv.messages) >= len(queued), what="the backlog after restart")
    finally:
        rcv.close()
    assert received_ids(rcv)[: len(queued)] == queued


# ----------------------------------------------------------------------------- CLI
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_cli_serve_and_send(db, receiver, tmp_path, capsys) -> None:
    cmd = [sys.executable, "-m", "pumpctl.cli", "hl7", "serve", "--listen", "127.0.0.1:0"]
    cmd += ["--db", db, "--sim", "--speed", str(SPEED), "--device-id", "PUMP01"]
    cmd += ["--forward", f"127.0.0.1:{receiver.port}", "--status-period-s", "600"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("listening on 127.0.0.1:"), line + proc.stderr.read()  # type: ignore[union-attr]
        port = line.split()[2].split(":")[1]
        to = f"127.0.0.1:{port}"
        ok = tmp_path / "ok.hl7"
        ok.write_text(ORDER)  # segments on lines, with '#' comment lines
        assert main(["hl7", "send", str(ok), "--to", to]) == 0
        out = capsys.readouterr().out
        assert "MSA|CA|ORD0001" in out.splitlines()
        bad = tmp_path / "bad.hl7"
        bad.write_text("\r".join(order("B1", ("|12.5|", "|x|")).split("\r")))  # CR-joined
        assert main(["hl7", "send", str(bad), "--to", to]) == 3
        captured = capsys.readouterr()
        assert "MSA|CR|B1" in captured.out and "answered CR" in captured.err
        rrg_for(receiver, "ORD0001")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stopped:" in out and "Traceback" not in err


def test_cli_send_bad_input_is_one_line(tmp_path, capsys) -> None:
    junk = tmp_path / "junk.hl7"
    junk.write_text("this is not HL7\n")
    assert main(["hl7", "send", str(junk), "--to", "127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not an HL7 v2 message" in err
    assert main(["hl7", "send", str(tmp_path / "missing.hl7"), "--to", "127.0.0.1:9"]) == 2
    two = tmp_path / "two.hl7"
    two.write_text(ORDER + "\n" + ORDER)
    assert main(["hl7", "send", str(two), "--to", "127.0.0.1:9"]) == 2
    assert "exactly one" in capsys.readouterr().err
    ok = tmp_path / "ok.hl7"
    ok.write_text(ORDER)
    assert main(["hl7", "send", str(ok), "--to", "localhost"]) == 2
    assert "--to 'localhost' is not HOST:PORT" in capsys.readouterr().err
    rcv = Receiver().up()
    rcv.down()  # nobody listens there
    try:
        code = main(["hl7", "send", str(ok), "--to", f"127.0.0.1:{rcv.port}", "--timeout-s", "2"])
    finally:
        rcv.close()
    assert code == 5
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no acknowledgement: connection refused" in err


def test_cli_serve_bad_options_are_one_line(db, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["hl7", "serve", "--listen", "127.0.0.1:1", "--db", db])
    assert exc.value.code == 2
    assert main(["hl7", "serve", "--listen", "nowhere", "--db", db, "--sim"]) == 2
    assert "--listen 'nowhere' is not HOST:PORT" in capsys.readouterr().err
    args = ["hl7", "serve", "--listen", "127.0.0.1:0", "--db", db, "--sim"]
    assert main([*args, "--status-period-s", "0"]) == 2
    assert main([*args, "--speed", "-1"]) == 2
    assert main([*args, "--device-id", " "]) == 2


def test_listen_acknowledges_and_keeps_every_message(tmp_path) -> None:
    import asyncio
    import threading

    from pumpctl.hl7.listener import listen

    lines: list[str] = []
    out = (tmp_path / "got.hl7").open("w", encoding="utf-8")
    loop = asyncio.new_event_loop()
    stop_ev = asyncio.Event()
    t = threading.Thread(
        target=loop.run_until_complete,
        args=(listen("127.0.0.1", 0, say=lines.append, out=out, stop=stop_ev),),
        daemon=True,
    )
    t.start()
    try:
        first = Receiver().wait_for(lambda: lines[:1], what="the listener")[0]
        port = int(first.rsplit(":", 1)[1])
        ack = send_plain(port, order("L1"))
        assert msa(ack) == ("AA", "L1")
        assert msa(send_plain(port, "junk"))[0] == "CR"
    finally:
        loop.call_soon_threadsafe(stop_ev.set)
        t.join(5.0)
        out.close()
    assert any("RGV^O15  L1" in ln for ln in lines)
    assert codec.split_messages((tmp_path / "got.hl7").read_text()) == [order("L1")]


def test_a_bug_costs_one_message_not_the_server(db, receiver, servers, monkeypatch) -> None:
    from pumpctl.hl7 import pcd03

    srv = servers(db, receiver.port, device_id="PUMP01", status_period_s=None)

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(pcd03, "parse_rgv", broken)
        ack = send_plain(srv.bound[1], order("X1"))
        assert msa(ack)[0] == "CR" and "boom" in codec.val(ack.segment("ERR"), 8)
    with monkeypatch.context() as m:
        m.setattr(pcd03, "check_order", broken)
        assert msa(send_plain(srv.bound[1], order("X2"))) == ("CA", "X2")
        rrg = rrg_for(receiver, "X2")
        assert msa(rrg)[0] == "AE" and err5(rrg) == "9099"
    assert msa(send_plain(srv.bound[1], order("X3"))) == ("CA", "X3")
    assert msa(rrg_for(receiver, "X3"))[0] == "AA"
