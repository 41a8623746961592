"""``pumpctl hl7 serve``: the controller behind an MLLP server, with a reliable forwarder.

One asyncio loop runs everything: the MLLP server (python-hl7 streams) that takes PCD-03
orders, the controller's clock (``SystemClock.run_pending``), and the sender that drains
the outbox to the ``--forward`` receiver. The controller is only ever touched from this
loop, so it needs no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hl7
from hl7.mllp import InvalidBlockError, open_hl7_connection, start_hl7_server

from pumpctl.hl7 import codec, pcd03
from pumpctl.hl7.outbound import OrderContext, Outbound, PumpReporter
from pumpctl.hl7.outbox import Outbox
from pumpctl.session import Session, open_session

APP = "PUMPCTL"


@dataclass
class ServeConfig:
    """Everything ``pumpctl hl7 serve`` was asked to do."""

    db: str
    listen: tuple[str, int]
    forward: tuple[str, int] | None = None
    port: str | None = None  # a real pump; None = the simulated pump
    pump: str | None = None
    speed: float = 1.0
    device_id: str | None = None
    status_period_s: float | None = 60.0
    staff: bool = True
    retry_s: float = 2.0
    ack_timeout_s: float = 10.0
    tick_s: float = 0.01


class Hl7Server:
    """The running service; ``run()`` until ``stop()`` (callable from any thread)."""

    def __init__(self, cfg: ServeConfig, say: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.say = say or (lambda line: print(line, flush=True))
        self.bound: tuple[str, int] | None = None
        self.ready = threading.Event()
        self.sess: Session | None = None
        self.outbox: Outbox | None = None
        self.reporter: PumpReporter | None = None
        self.device_id = cfg.device_id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._down = False
        self.error: BaseException | None = None

    # ----------------------------------------------------------------- life cycle
    def stop(self) -> None:
        """Ask the service to stop (thread-safe)."""
        loop, ev = self._loop, self._stop
        if loop is not None and ev is not None:
            loop.call_soon_threadsafe(ev.set)

    async def run(self, *, signals: bool = False) -> None:
        """Open the session, serve, forward, and run the controller's clock until stopped."""
        self._loop = asyncio.get_running_loop()
        self._stop, self._wake = asyncio.Event(), asyncio.Event()
        try:
            await self._run(signals)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.ready.set()

    async def _run(self, signals: bool) -> None:
        cfg = self.cfg
        assert self._stop is not None
        sess = open_session(cfg.db, port=cfg.port, pump=cfg.pump, speed=cfg.speed, staff=cfg.staff)
        self.sess = sess
        outbox = Outbox(cfg.db)
        self.outbox = outbox
        outbox.epoch_tag = f"{int(sess.clock.wall_epoch()):x}."
        ctx = OrderContext()
        last = outbox.accepted_order()
        if last is not None:
            dev, pid, placer, app = last
            ctx = OrderContext(pid, placer, app)
            self.device_id = self.device_id or dev
        self.reporter = PumpReporter(
            sess.controller,
            sess.clock,
            self._enqueue,
            device_id=self.device_id or "PUMPCTL",
            new_id=outbox.new_id,
            status_period_s=cfg.status_period_s,
            context=ctx,
        ).attach()
        tasks: list[asyncio.Task[Any]] = []
        server = None
        try:
            host, port = cfg.listen
            server = await start_hl7_server(self._client, host, port, encoding="utf-8")
            sock = server.sockets[0].getsockname()
            self.bound = (host, int(sock[1]))
            if signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._loop_add_signal(sig)
            fwd = f"{cfg.forward[0]}:{cfg.forward[1]}" if cfg.forward else "nowhere (no --forward)"
            self.say(
                f"listening on {host}:{self.bound[1]} as device "
                f"{self.device_id or 'any'}; forwarding to {fwd}; "
                f"{outbox.counts().get('pending', 0)} message(s) pending"
            )
            self.ready.set()
            tasks.append(asyncio.create_task(self._clock_loop()))
            if cfg.forward is not None:
                tasks.append(asyncio.create_task(self._send_loop(cfg.forward)))
            await self._stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            if tasks:  # each loop also watches the stop flag
                await asyncio.wait(tasks, timeout=5.0)
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await server.wait_closed()
            self.reporter.close()
            sess.close()
            counts = outbox.counts()
            outbox.close()
            self.say(
                f"stopped: {counts.get('delivered', 0)} delivered, "
                f"{counts.get('pending', 0)} pending, {counts.get('refused', 0)} refused"
            )

    def _loop_add_signal(self, sig: int) -> None:
        assert self._loop is not None and self._stop is not None
        with contextlib.suppress(NotImplementedError, RuntimeError):
            self._loop.add_signal_handler(sig, self._stop.set)

    # ----------------------------------------------------------------- clock
    async def _clock_loop(self) -> None:
        assert self.sess is not None
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                self.sess.clock.run_pending()
            except Exception as exc:  # a failing timer must not stop the service
                print(f"pumpctl hl7 serve: timer failed: {exc}", file=sys.stderr, flush=True)
            await asyncio.sleep(self.cfg.tick_s)

    # ----------------------------------------------------------------- outbound
    def _enqueue(self, out: Outbound) -> None:
        assert self.outbox is not None
        if self.cfg.forward is None:  # nobody to send to: answers go on the connection only
            return
        self.outbox.add(out)
        if self._wake is not None:
            self._wake.set()

    async def _send_loop(self, forward: tuple[str, int]) -> None:
        assert self.outbox is not None and self._wake is not None and self._stop is not None
        outbox, cfg = self.outbox, self.cfg
        reader: Any = None
        writer: Any = None
        while not self._stop.is_set():
            item = outbox.next_pending()
            if item is None:
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({waiter}, timeout=0.5)
                waiter.cancel()
                continue
            row_id, cid, er7 = item
            try:
                async with asyncio.timeout(cfg.ack_timeout_s):
                    if writer is None:
                        reader, writer = await open_hl7_connection(*forward, encoding="utf-8")
                    writer.writeblock(er7.encode("utf-8"))
                    await writer.drain()
                    block = await reader.readblock()
                code, ref, text = codec.ack_code(codec.parse_er7(block.decode("utf-8", "replace")))
                if ref and ref != cid:
                    raise ValueError(f"acknowledgement is for {ref!r}, not {cid!r}")
            except (
                OSError,
                TimeoutError,
                asyncio.IncompleteReadError,
                InvalidBlockError,
                ValueError,
            ) as exc:
                outbox.failed_attempt(row_id, f"{type(exc).__name__}: {exc}")
                if writer is not None:
                    writer.close()
                reader = writer = None
                if not self._down:
                    self._down = True
                    self.say(
                        f"receiver {forward[0]}:{forward[1]} not answering "
                        f"({type(exc).__name__}); keeping messages, retrying every "
                        f"{cfg.retry_s:g} s"
                    )
                await asyncio.sleep(cfg.retry_s)
                continue
            if self._down:
                self._down = False
                self.say(f"receiver {forward[0]}:{forward[1]} is back; sending in order")
            if code in ("AA", "CA"):
                outbox.delivered(row_id, code)
            elif code in ("AR", "AE", "CR", "CE"):
                outbox.refused(row_id, code, text)
                self.say(f"receiver refused message {cid}: {code} {text}".rstrip())
            else:
                outbox.failed_attempt(row_id, f"no MSA-1 in the answer: {code!r}")
                writer.close()
                reader = writer = None
                await asyncio.sleep(cfg.retry_s)

    # ----------------------------------------------------------------- inbound
    async def _client(self, reader: Any, writer: Any) -> None:
        try:
            while True:
                try:
                    block = await reader.readblock()
                except asyncio.IncompleteReadError:
                    break
                except (InvalidBlockError, ValueError) as exc:
                    text = f"not an MLLP block: {exc}"
                    rej = pcd03.Rejected("malformed", text)
                    reply = pcd03.accept_ack(None, "CR", self._new_id(), self._now(), APP, rej)
                    writer.writeblock(reply.encode("utf-8"))
                    await writer.drain()
                    continue
                reply, after = self.handle(block.decode("utf-8", errors="replace"))
                writer.writeblock(reply.encode("utf-8"))
                await writer.drain()
                if after is not None:
                    after()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _now(self) -> float:
        assert self.sess is not None
        return float(self.sess.clock.wall_epoch()) + self.sess.clock.now()

    def _new_id(self) -> str:
        assert self.outbox is not None
        return self.outbox.new_id()

    def handle(self, text: str) -> tuple[str, Callable[[], None] | None]:
        """The ACK^O15 for one inbound message, and the work to do once it is sent.

        Never raises: whatever arrives gets an answer (``CR`` when it cannot be read).
        """
        try:
            return self._handle(text)
        except Exception as exc:  # a bug must cost one message, not the server
            print(f"pumpctl hl7 serve: cannot read a message: {exc!r}", file=sys.stderr)
            rej = pcd03.Rejected("malformed", f"cannot read the message: {exc}")
            return pcd03.accept_ack(None, "CR", self._new_id(), self._now(), APP, rej), None

    def _handle(self, text: str) -> tuple[str, Callable[[], None] | None]:
        try:
            msg = codec.parse_er7(text)
        except codec.Hl7FormatError as exc:
            rej = pcd03.Rejected("malformed", str(exc))
            self.say(f"order refused (CR): {exc}")
            return pcd03.accept_ack(None, "CR", self._new_id(), self._now(), APP, rej), None
        try:
            order = pcd03.parse_rgv(msg, self.cfg.device_id)
        except pcd03.Rejected as rej:
            return self._commit_reject(msg, rej, text)
        ack = pcd03.accept_ack(msg, "CA", self._new_id(), self._now(), APP)
        return ack, lambda: self._process(msg, order, text)

    def _commit_reject(
        self, msg: hl7.Message, rej: pcd03.Rejected, text: str
    ) -> tuple[str, Callable[[], None] | None]:
        """CR on the connection; a malformed order for this pump also gets RRG AE."""
        assert self.outbox is not None
        cid = codec.val(codec.first(msg, "MSH"), 10)
        self.say(f"order {cid or '?'} refused (CR): {rej.text}")
        self.outbox.record_order(cid, self.device_id or "", "CR", rej.text, "", "", "", text)
        ack = pcd03.accept_ack(msg, "CR", self._new_id(), self._now(), APP, rej)
        after = None
        if pcd03.message_type(msg) == "RGV^O15" and rej.rule.name in ("malformed", "bad_value"):
            after = lambda: self._answer(msg, rej.rule.ack, rej)  # noqa: E731
        return ack, after

    def _answer(
        self, msg: hl7.Message, code: str, rej: pcd03.Rejected | None, b: Any = None
    ) -> None:
        assert self.outbox is not None and self.sess is not None
        cid = self._new_id()
        er7 = pcd03.app_ack(msg, code, cid, self._now(), APP, rej, b)
        self._enqueue(Outbound("RRG", cid, self.sess.clock.now(), er7))

    def _process(self, msg: hl7.Message, order: pcd03.InfusionOrder, text: str) -> None:
        """Check the order as the console does, program it, and queue the RRG^O16."""
        try:
            self._program(msg, order, text)
        except Exception as exc:  # never leave an accepted order without an answer
            print(f"pumpctl hl7 serve: order {order.control_id} failed: {exc!r}", file=sys.stderr)
            self._answer(msg, "AE", pcd03.Rejected("internal", f"internal error: {exc}"))

    def _program(self, msg: hl7.Message, order: pcd03.InfusionOrder, text: str) -> None:
        assert self.sess is not None and self.outbox is not None and self.reporter is not None
        ctl = self.sess.controller
        operator = f"hl7:{order.sending_app or 'ehr'}"
        b = None
        try:
            console, b = pcd03.check_order(order, ctl.setting, operator)
            reason = ctl.program(console, operator)
            if reason is not None:
                raise pcd03.Rejected("pump_refused", reason, "ORC")
        except pcd03.Rejected as rej:
            self.outbox.record_order(
                order.control_id,
                order.device_id,
                rej.rule.ack,
                rej.text,
                order.patient,
                order.placer_order,
                order.sending_app,
                text,
            )
            self.say(f"order {order.control_id}: {rej.rule.ack} {rej.rule.app_text}: {rej.text}")
            self._answer(msg, rej.rule.ack, rej)
            return
        self.outbox.record_order(
            order.control_id,
            order.device_id,
            "AA",
            "programmed",
            order.patient,
            order.placer_order,
            order.sending_app,
            text,
        )
        if self.cfg.device_id is None:
            self.device_id = order.device_id
            self.reporter.device_id = order.device_id
        self.reporter.context = OrderContext(order.patient, order.placer_order, order.sending_app)
        self.say(
            f"order {order.control_id}: AA programmed {codec.fmt_num(float(b.mg_per_bag))} mg "
            f"in {b.bag_ml} mL at {codec.fmt_num(float(b.rate_ml_per_h))} mL/h, "
            f"q{b.interval_h}h; waiting for the bag to be hung and started at the pump"
        )
        self._answer(msg, "AA", None, b)


def run_in_thread(cfg: ServeConfig, say: Callable[[str], None] | None = None) -> Hl7Server:
    """Start a server on a background thread (tests, benches); wait until it listens."""
    srv = Hl7Server(cfg, say or (lambda _line: None))
    t = threading.Thread(target=lambda: asyncio.run(srv.run()), daemon=True)
    srv.thread = t  # type: ignore[attr-defined]
    t.start()
    srv.ready.wait(30.0)
    if srv.error is not None:
        raise srv.error
    return srv
