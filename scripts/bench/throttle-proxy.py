#!/usr/bin/env python3
"""A CI-like link in front of a local registry, for scripts/bench/images.sh.

A plain TCP proxy on 127.0.0.1 that
  * shares one bandwidth budget (default 100 Mbit/s) among all connections,
    one budget per direction (a full-duplex link): a byte sent by any
    connection delays the next chunk of every other connection in the same
    direction, in FIFO order, up to 64 KiB at a time;
  * adds a fixed delay (default 10 ms) to every new connection before it is
    connected to the upstream (a round trip to a far registry);
  * logs every HTTP request line it forwards (method and path), so a
    benchmark can count how many requests a client made, and every closed
    connection with its byte counts.

Usage:
  throttle-proxy.py --upstream 127.0.0.1:5000 [--listen 127.0.0.1:0]
                    [--mbit 100] [--connect-delay-ms 10]
                    [--log FILE] [--port-file FILE]
The chosen port is written to --port-file (and stdout) once the proxy
listens. It only listens on a loopback address. Stdlib only.

Log lines (one per event, tab-separated, flushed at once):
  req   <conn> <METHOD> <path>
  close <conn> <bytes client->upstream> <bytes upstream->client>
"""

import argparse
import asyncio
import ipaddress
import os
import re
import sys
import time

CHUNK = 64 * 1024
BURST = 64 * 1024
# An HTTP/1.x request line at the start of the stream or after a CRLF.
REQUEST_LINE = re.compile(rb"(?:^|\r\n)(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (\S+) HTTP/1\.[01]\r\n")


class Pacer:
    """One direction of a shared link: hands out send slots in FIFO order so
    that all connections together never exceed `rate` bytes per second
    (averaged over a chunk, 64 KiB)."""

    def __init__(self, bytes_per_s):
        self.rate = bytes_per_s
        self.next_free = 0.0  # monotonic time when the link is free again

    async def send(self, n):
        if self.rate <= 0:
            return
        now = time.monotonic()
        # The chunk occupies the link for n / rate seconds after the chunks
        # before it. A link left idle for a moment may catch up by up to
        # BURST bytes, so our own scheduling delays (a busy 2-CPU machine)
        # do not lower the rate a lone stream gets.
        start = max(now - BURST / self.rate, self.next_free)
        self.next_free = start + n / self.rate
        delay = self.next_free - now
        if delay > 0:
            await asyncio.sleep(delay)


class Proxy:
    def __init__(self, upstream, mbit, delay_ms, log):
        self.up_host, self.up_port = upstream
        rate = mbit * 1_000_000 / 8
        self.to_client = Pacer(rate)
        self.to_upstream = Pacer(rate)
        self.delay = delay_ms / 1000
        self.log = log
        self.conns = 0

    def emit(self, *fields):
        if self.log:
            self.log.write("\t".join(str(f) for f in fields) + "\n")
            self.log.flush()

    async def pipe(self, reader, writer, pacer, conn, count, parse):
        carry = b""
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if parse:
                    # Keep a short tail so a request line split across two
                    # reads is still seen (once: matches must end in the
                    # new data).
                    buf = carry + data
                    for m in REQUEST_LINE.finditer(buf):
                        if m.end() > len(carry):
                            self.emit("req", conn, m.group(1).decode(), m.group(2).decode(errors="replace"))
                    carry = buf[-2048:]
                await pacer.send(len(data))
                writer.write(data)
                await writer.drain()
                count[0] += len(data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except (OSError, RuntimeError):
                pass

    async def handle(self, c_reader, c_writer):
        self.conns += 1
        conn = self.conns
        up = [0]
        down = [0]
        try:
            await asyncio.sleep(self.delay)
            u_reader, u_writer = await asyncio.open_connection(self.up_host, self.up_port)
        except OSError as e:
            self.emit("error", conn, e)
            c_writer.close()
            return
        try:
            await asyncio.gather(
                self.pipe(c_reader, u_writer, self.to_upstream, conn, up, True),
                self.pipe(u_reader, c_writer, self.to_client, conn, down, False),
            )
        finally:
            for w in (c_writer, u_writer):
                w.close()
            self.emit("close", conn, up[0], down[0])


def host_port(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:0", type=host_port)
    ap.add_argument("--upstream", required=True, type=host_port)
    ap.add_argument("--mbit", type=float, default=100.0, help="shared bandwidth per direction, Mbit/s (0: unlimited)")
    ap.add_argument("--connect-delay-ms", type=float, default=10.0)
    ap.add_argument("--log")
    ap.add_argument("--port-file")
    args = ap.parse_args()
    if not ipaddress.ip_address(args.listen[0]).is_loopback:
        sys.exit("throttle-proxy: --listen must be a loopback address")
    log = open(args.log, "a", buffering=1) if args.log else None
    proxy = Proxy(args.upstream, args.mbit, args.connect_delay_ms, log)
    server = await asyncio.start_server(proxy.handle, args.listen[0], args.listen[1])
    port = server.sockets[0].getsockname()[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(f"{port}\n")
        os.replace(args.port_file + ".tmp", args.port_file)
    print(port, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
