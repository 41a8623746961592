"""A minimal MLLP receiver for benches and the docs: acknowledge (AA) and print each message."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any, TextIO

from hl7.mllp import InvalidBlockError, start_hl7_server

from pumpctl.hl7 import codec


def summary(msg: Any) -> str:
    """One line: type, control id, and what matters in it."""
    msh = msg.segment("MSH")
    kind = f"{codec.val(msh, 9, 1)}^{codec.val(msh, 9, 2)}"
    parts = [codec.val(msh, 7), kind, codec.val(msh, 10)]
    msa = codec.first(msg, "MSA")
    if msa is not None:
        parts.append(f"MSA {codec.val(msa, 1)} {codec.val(msa, 2)}")
        err = codec.first(msg, "ERR")
        if err is not None:
            parts.append(f"ERR {codec.val(err, 5, 1)} {codec.val(err, 8)}")
    values = {codec.val(o, 3, 2): codec.val(o, 5, 1) or codec.val(o, 5, 2)
              for o in codec.segments(msg, "OBX")}  # fmt: skip
    for name in ("MDC_ATTR_EVT_COND", "MDC_EVT_ALARM", "MDC_ATTR_EVENT_PHASE"):
        if values.get(name):
            parts.append(f"{name.removeprefix('MDC_ATTR_')}={values[name]}")
    for name, unit in (("MDC_FLOW_FLUID_PUMP", "mL/h"), ("MDC_VOL_FLUID_DELIV", "mL")):
        if values.get(name):
            parts.append(f"{name.removeprefix('MDC_')}={values[name]} {unit}")
    return "  ".join(p for p in parts if p)


async def listen(
    host: str,
    port: int,
    *,
    say: Callable[[str], None],
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Receive until ``stop`` is set: answer AA to every message (CR to junk)."""
    stop = stop or asyncio.Event()

    async def client(reader: Any, writer: Any) -> None:
        try:
            while True:
                try:
                    block = await reader.readblock()
                except asyncio.IncompleteReadError:
                    return
                except (InvalidBlockError, ValueError):
                    continue
                try:
                    msg = codec.parse_er7(block.decode("utf-8", errors="replace"))
                except codec.Hl7FormatError as exc:
                    say(f"not HL7: {exc}")
                    ack = "MSH|^~\\&|LISTENER|PUMPCTL|||||ACK|0|P|2.6\rMSA|CR|"
                else:
                    say(summary(msg))
                    if out is not None:
                        out.write("\n".join(str(msg).rstrip("\r").split("\r")) + "\n\n")
                        out.flush()
                    cid = codec.val(msg.segment("MSH"), 10)
                    ack = codec.message(
                        [
                            codec.seg("MSH", None, None, "LISTENER", "PUMPCTL", None, None,
                                      None, None, ["ACK"], f"A{cid}", "P", "2.6"),
                            codec.seg("MSA", "AA", cid),
                        ]
                    )  # fmt: skip
                writer.writeblock(ack.encode("utf-8"))
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()

    server = await start_hl7_server(client, host, port)
    bound = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    say(f"listening on {host}:{bound}")
    try:
        await stop.wait()
    finally:
        server.close()
