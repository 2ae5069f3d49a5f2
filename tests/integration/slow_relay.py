"""A small asyncio TCP relay that slows down or stalls a backend's answers.

Sits between Portico and a real Dovecot and does to the server->client
direction what Dovecot cannot be asked to do: answer late, or not at all
for a while. Client->server bytes always pass at once, so the backend does
its work immediately; only the delivery of its answers is held back.

    relay = SlowRelay(("127.0.0.1", dovecot.port), delay=0.3).start()
    ... configure the backend address as relay.address ...
    relay.set_delay(0)        # from now on: no delay
    relay.stall()             # hold every answer (greetings included)
    relay.held_bytes()        # what is being held right now
    relay.release()           # deliver what was held, in order; flow again
    relay.stop()

Delay: each chunk read from the backend is delivered `delay` seconds after
it was read, in order (a chunk never overtakes an earlier one). A command
whose answer fits in one chunk therefore takes `delay` longer than it
would directly. Stall: chunks are read from the backend (so its output
buffer never fills and it keeps processing commands) and held until
release().

Bounds: a connection holding more than `max_held` bytes is closed (both
sides); stop() closes everything and joins the loop thread within its
timeout. Loopback only.

The relay runs its own event loop in a daemon thread, so a test can drive
it from synchronous code; every control method is thread-safe. As a script
(for manual experiments):

    python3 slow_relay.py --upstream 127.0.0.1:1143 --listen 127.0.0.1:2143 --delay-ms 300

SIGUSR1 stalls, SIGUSR2 releases.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
import time
from typing import Optional, Tuple


class SlowRelay:
    def __init__(
        self,
        upstream: Tuple[str, int],
        delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        max_held: int = 64 << 20,
    ):
        self.upstream = upstream
        self.host = host
        self._want_port = port
        self.port = 0
        self.max_held = max_held
        self._delay = float(delay)
        self._stalled = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server: Optional[asyncio.base_events.Server] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._start_error: Optional[BaseException] = None
        self._flowing: Optional[asyncio.Event] = None
        self._conns: set = set()
        self._held = 0  # bytes read from upstreams, not yet written to clients
        self.accepted = 0

    # -- public, thread-safe -------------------------------------------------

    @property
    def address(self) -> str:
        return "%s:%d" % (self.host, self.port)

    def start(self, timeout: float = 5.0) -> "SlowRelay":
        self._thread = threading.Thread(target=self._run, name="slow-relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("slow relay did not start within %.0fs" % timeout)
        if self._start_error is not None:
            raise RuntimeError("slow relay failed to start: %s" % self._start_error)
        return self

    def set_delay(self, seconds: float) -> None:
        self._call(self._set_delay, float(seconds))

    def stall(self) -> None:
        """Holds every server->client byte from now on (until release())."""
        self._call(self._set_stalled, True)

    def release(self) -> None:
        """Delivers what was held, in order, and lets answers flow again."""
        self._call(self._set_stalled, False)

    def held_bytes(self) -> int:
        return self._held

    def connections(self) -> int:
        return len(self._conns)

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            try:
                fut.result(timeout)
            except Exception:
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> "SlowRelay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return "SlowRelay(%s -> %s:%d, delay=%.3fs%s)" % (
            self.address, self.upstream[0], self.upstream[1], self._delay,
            ", stalled" if self._stalled else "")

    # -- loop side -----------------------------------------------------------

    def _call(self, fn, *args) -> None:
        assert self._loop is not None, "relay not started"
        done = threading.Event()

        def run():
            try:
                fn(*args)
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(5.0):
            raise RuntimeError("slow relay loop did not answer within 5s")

    def _set_delay(self, seconds: float) -> None:
        self._delay = seconds

    def _set_stalled(self, stalled: bool) -> None:
        self._stalled = stalled
        assert self._flowing is not None
        if stalled:
            self._flowing.clear()
        else:
            self._flowing.set()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._flowing = asyncio.Event()
            if not self._stalled:
                self._flowing.set()
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self._want_port, backlog=512))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as e:  # report to start()
            self._start_error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            try:
                loop.run_until_complete(asyncio.sleep(0))
            except Exception:
                pass
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.close()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            ureader, uwriter = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 5.0)
        except (OSError, asyncio.TimeoutError):
            cwriter.close()
            return
        conn = _Conn(self, creader, cwriter, ureader, uwriter)
        self._conns.add(conn)
        try:
            await conn.run()
        finally:
            self._conns.discard(conn)


class _Conn:
    def __init__(self, relay: SlowRelay, creader, cwriter, ureader, uwriter):
        self.relay = relay
        self.creader, self.cwriter = creader, cwriter
        self.ureader, self.uwriter = ureader, uwriter
        self.queue: asyncio.Queue = asyncio.Queue()
        self.held = 0
        self.tasks: list = []

    def close(self) -> None:
        for w in (self.cwriter, self.uwriter):
            try:
                w.close()
            except Exception:
                pass
        for t in self.tasks:
            t.cancel()

    async def run(self) -> None:
        self.tasks = [
            asyncio.ensure_future(self._guard(self.client_to_upstream())),
            asyncio.ensure_future(self._guard(self.upstream_to_queue())),
            asyncio.ensure_future(self._guard(self.queue_to_client())),
        ]
        try:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Let already-read answers go out (a close right after `BYE`),
            # unless stalled; then close both sides.
            writer = self.tasks[2]
            if not writer.done() and not self.relay._stalled:
                self.queue.put_nowait(None)
                try:
                    await asyncio.wait_for(asyncio.shield(writer), self.relay._delay + 2.0)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    pass
            self.close()
            self.relay._held -= self.held
            self.held = 0

    @staticmethod
    async def _guard(pump) -> None:
        try:
            await pump
        except (OSError, RuntimeError, asyncio.IncompleteReadError):
            pass  # a reset or a write after close ends the connection

    async def client_to_upstream(self) -> None:
        while True:
            data = await self.creader.read(65536)
            if not data:
                try:
                    self.uwriter.write_eof()
                except (OSError, RuntimeError):
                    pass
                # Keep the relay up so the upstream's last answers get out.
                await asyncio.sleep(3600)
                return
            self.uwriter.write(data)
            await self.uwriter.drain()

    async def upstream_to_queue(self) -> None:
        while True:
            data = await self.ureader.read(65536)
            if not data:
                self.queue.put_nowait(None)
                await asyncio.sleep(3600)  # the writer ends the connection
                return
            self.held += len(data)
            self.relay._held += len(data)
            if self.held > self.relay.max_held:
                return  # over the bound: close the connection
            self.queue.put_nowait((time.monotonic() + self.relay._delay, data))

    async def queue_to_client(self) -> None:
        flowing = self.relay._flowing
        while True:
            item = await self.queue.get()
            if item is None:
                return
            due, data = item
            await flowing.wait()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await flowing.wait()
            self.cwriter.write(data)
            self.held -= len(data)
            self.relay._held -= len(data)
            await self.cwriter.drain()


def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="host:port of the real server")
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--stalled", action="store_true", help="start stalled")
    args = ap.parse_args()
    uh, up = args.upstream.rsplit(":", 1)
    lh, lp = args.listen.rsplit(":", 1)
    relay = SlowRelay((uh, int(up)), delay=args.delay_ms / 1000.0, host=lh, port=int(lp))
    relay._stalled = args.stalled
    relay.start()
    signal.signal(signal.SIGUSR1, lambda *_: relay.stall())
    signal.signal(signal.SIGUSR2, lambda *_: relay.release())
    print("relaying %s -> %s" % (relay.address, args.upstream), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        relay.stop()


if __name__ == "__main__":
    _main()
