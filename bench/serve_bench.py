"""HTTP gateway overhead: `k2trt serve` against its backend alone, in one run.

    python bench/serve_bench.py [--seconds 3] [--quick] [--workers 2 [--only-workers]]

The backends cost nothing: `ScriptedBackend` replays pre-made chunks (one 4-character token
each) and `PacedBackend` sleeps between tokens. The gateway runs under uvicorn in a child
process (h11 on asyncio, exactly what `k2trt serve` runs, request log on); the load
generator is this process: asyncio clients on raw sockets, one keep-alive connection per
concurrent stream, every request streamed (SSE) and read to its end. "Backend alone" is the
same backend iterated in this process by as many concurrent tasks, without HTTP.

1. Cost at 64 concurrent streams (zero delay): the server process's CPU seconds per request
   (1-token answers) and per streamed token (the slope between 1- and 128-token answers),
   minus the backend alone's CPU for the same work. Targets: < 1 ms per request and
   < 50 us per token.
2. Sweep, 1 to 256 streams, 32-token answers, zero delay, closed loop (each stream sends its
   next request when the last ends, so the machine saturates and latency is mostly queueing):
   throughput and p50/p99 request latency, gateway vs backend alone, and the difference.
3. Paced, 64 and 256 streams: a token every 20 ms (50 tokens/s a stream, a plausible decode
   rate; the machine is not saturated; the streams start spread over one answer's length,
   as independent users would, not in lock step), each token carrying its emission time
   (CLOCK_MONOTONIC, one clock for both processes). Added per request: p50/p99 request
   latency minus the backend alone's at the same percentile; added per token: arrival at the
   client minus emission in the server. Targets at 64 streams: p50 < 1 ms per request,
   p50 < 50 us per token. Beside them, the floor: the same tokens as chunked SSE from a
   bare asyncio server (no HTTP library), i.e. what the OS, loopback TCP and this client
   cost without any gateway.

Client and server share this machine's cores, so latencies include the client's own work
(the CPU figures of section 1 do not). Figures are from one run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from uvicorn.supervisors import Multiprocess

from _util import doc_summary, print_table
from k2trt.runtime.types import ChatChunk, ChatRequest
from k2trt.serve.app import Gateway, ServeConfig, create_app
from k2trt.serve.scripted import ScriptedBackend
from k2trt.serve.server import bind, make_config, serve_forever, url_of

REPLY = "abcd" * 512  # 512 tokens of 4 characters
COST_CONCURRENCY = 64
COST_LENGTHS = (1, 128)
SWEEP = (1, 4, 16, 64, 256)
SWEEP_TOKENS = 32
PACED = (64, 256)
PACED_TOKENS = 32
PACE_S = 0.020
TARGET_REQUEST_S = 1e-3
TARGET_TOKEN_S = 50e-6
END = b"\r\n0\r\n\r\n"  # the last chunk of a chunked HTTP/1.1 body
STAMP = re.compile(rb'"content":"(\d+)"')
TICK = os.sysconf("SC_CLK_TCK")


class PacedBackend:
    """A token every `pace_s` (asyncio.sleep: no CPU); its text is its emission time in ns
    (CLOCK_MONOTONIC, the clock the client reads too)."""

    model_id = "paced"
    max_context = 1 << 20

    def __init__(self, pace_s: float) -> None:
        self.pace_s = pace_s

    async def ready(self) -> bool:
        return True

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        return self._play(request.max_tokens or PACED_TOKENS)

    async def _play(self, n: int) -> AsyncIterator[ChatChunk]:
        # Token i is due at start + (i + 1) x pace, as an engine on its own clock would make
        # it: time the consumer spends on one token does not delay the next.
        start = time.monotonic()
        for i in range(n):
            wait = start + (i + 1) * self.pace_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            yield ChatChunk(content=str(time.monotonic_ns()))
        yield ChatChunk(finish_reason="length", prompt_tokens=1, completion_tokens=n)

    async def close(self) -> None:
        pass


def backend(kind: str) -> ScriptedBackend | PacedBackend:
    return ScriptedBackend([REPLY]) if kind == "zero" else PacedBackend(PACE_S)


FLOOR_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
LENGTH = re.compile(rb"content-length: *(\d+)", re.I)


async def floor_server() -> None:
    """The transport floor: the paced backend's tokens as chunked SSE over plain asyncio
    streams (TCP_NODELAY, as the gateway), with no HTTP library, routing or checks."""
    pacer = PacedBackend(PACE_S)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                match = LENGTH.search(head)
                body = await reader.readexactly(int(match.group(1)) if match else 0)
                request = ChatRequest([], max_tokens=json.loads(body)["max_tokens"])
                writer.write(FLOOR_HEAD)
                async for chunk in pacer.stream(request):
                    event = b'data: {"content":"%s"}\n\n' % chunk.content.encode()
                    if not chunk.content:
                        event = b"data: [DONE]\n\n"
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                writer.write(b"0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


BENCH_CONFIG = ServeConfig(max_concurrency=1024, max_queue=1024, max_tokens_cap=None)


def zero_app() -> Gateway:
    """The app factory of each worker process (`--workers`): the zero-cost backend."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return create_app(backend("zero"), BENCH_CONFIG)


def serve(kind: str, workers: int = 1) -> None:
    """Child process: the gateway over a `kind` backend (or the floor); prints its URL and
    serves until terminated. With `workers` > 1: that many processes, as `k2trt serve
    --workers` runs them (zero backend only)."""
    if kind == "floor":
        asyncio.run(floor_server())
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if workers > 1:
        uv = make_config("serve_bench:zero_app", "127.0.0.1", 0, 1, workers=workers)
        sock = bind(uv)
        print(url_of(sock), flush=True)
        Multiprocess(uv, sockets=[sock]).run()
        return
    uv = make_config(create_app(backend(kind), BENCH_CONFIG), "127.0.0.1", 0, 1)
    sock = bind(uv)
    print(url_of(sock), flush=True)
    serve_forever(uv, sock)


# ---------------------------------------------------------------------------------------------
# Measurement


@dataclass
class Phase:
    """One measured run: request latencies (s), wall time, CPU (s), token delays (ns)."""

    latencies: list[float] = field(default_factory=list)
    delays: list[int] = field(default_factory=list)
    elapsed: float = 0.0
    cpu: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies)


def pct(values: list[float] | list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else float("nan")


def body(tokens: int) -> dict[str, object]:
    messages = [{"role": "user", "content": "Hello"}]
    return {"model": "m", "messages": messages, "stream": True, "max_tokens": tokens}


def http_request(tokens: int) -> bytes:
    data = json.dumps(body(tokens)).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
    )
    return head + b"content-length: %d\r\n\r\n" % len(data) + data


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


async def one_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes, phase: Phase | None
) -> float:
    """Send one streamed request and read its whole answer; its latency in seconds."""
    start = time.perf_counter()
    writer.write(payload)
    tail = last = b""
    while True:
        data = await reader.read(1 << 16)
        if not data:
            raise ConnectionError("the server closed the connection")
        if phase is not None:  # stamped tokens: complete events only
            now = time.monotonic_ns()
            events = tail + data
            cut = events.rfind(b"\n\n") + 2
            phase.delays += [now - int(m) for m in STAMP.findall(events, 0, cut)]
            tail = events[cut:]
        last = (last + data)[-len(END) :]  # the end marker may span two reads
        if last == END:
            return time.perf_counter() - start


async def over_http(
    url: str, pid: int, streams: int, tokens: int, seconds: float, paced: bool
) -> Phase:
    """`streams` connections, each sending requests back to back for `seconds`."""
    where = urlparse(url)
    conns = [await asyncio.open_connection(where.hostname, where.port) for _ in range(streams)]
    payload = http_request(tokens)
    phase = Phase()
    # Warm every connection once, unmeasured (at once: an idle one is closed after 5 s).
    await asyncio.gather(*(one_request(r, w, payload, None) for r, w in conns))

    async def requests() -> None:
        reader, writer = conns.pop()
        while time.perf_counter() < deadline:
            phase.latencies.append(
                await one_request(reader, writer, payload, phase if paced else None)
            )
        writer.close()

    spread = tokens * PACE_S if paced else 0.0
    cpu, start = cpu_seconds(pid), time.perf_counter()
    deadline = start + spread + seconds
    await staggered(requests, streams, spread)
    phase.elapsed, phase.cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
    return phase


async def staggered(requests: Callable[[], Awaitable[None]], streams: int, spread: float) -> None:
    """Run `streams` copies of `requests`, the k-th starting k/streams x `spread` s late (paced
    users arrive independently, not in lock step)."""

    async def later(k: int) -> None:
        await asyncio.sleep(k * spread / streams)
        await requests()

    await asyncio.gather(*(later(k) for k in range(streams)))


async def alone(kind: str, streams: int, tokens: int, seconds: float, paced: bool) -> Phase:
    """The same backend and load without HTTP: chunks consumed where they are made."""
    source = backend(kind)
    request = ChatRequest([{"role": "user", "content": "Hello"}], max_tokens=tokens)
    phase = Phase()
    spread = tokens * PACE_S if paced else 0.0

    async def requests() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            async for chunk in source.stream(request):
                if paced and chunk.content:
                    phase.delays.append(time.monotonic_ns() - int(chunk.content))
            phase.latencies.append(time.perf_counter() - start)

    cpu, start = time.process_time(), time.perf_counter()
    deadline = start + spread + seconds
    await staggered(requests, streams, spread)
    phase.elapsed, phase.cpu = time.perf_counter() - start, time.process_time() - cpu
    return phase


class Server:
    """The gateway in a child process (its request log goes to a temp file)."""

    def __init__(self, kind: str, workers: int = 1) -> None:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        argv = [sys.executable, __file__, "--serve", kind, "--workers", str(workers)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            raise RuntimeError(f"the gateway did not start (exit {self.proc.poll()})")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


# ---------------------------------------------------------------------------------------------
# Sections


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def cost_section(server: Server, seconds: float) -> tuple[float, float]:
    """Added CPU per request and per token at COST_CONCURRENCY streams."""
    rows, per = [], {}
    for tokens in COST_LENGTHS:
        g = asyncio.run(
            over_http(server.url, server.proc.pid, COST_CONCURRENCY, tokens, seconds, False)
        )
        b = asyncio.run(alone("zero", COST_CONCURRENCY, tokens, seconds, False))
        per[tokens] = (g.cpu / g.requests, b.cpu / b.requests)
        rows.append(
            [f"{tokens}-token answers", f"{g.requests:,}", f"{g.cpu / g.elapsed:.0%}"]
            + [us(x) for x in (*per[tokens], per[tokens][0] - per[tokens][1])]
        )
    short, long = COST_LENGTHS
    slope = [(per[long][i] - per[short][i]) / (long - short) for i in (0, 1)]
    rows.append(
        [
            "per extra token",
            "",
            "",
            f"{slope[0] * 1e6:.1f}",
            f"{slope[1] * 1e6:.2f}",
            f"{(slope[0] - slope[1]) * 1e6:.1f}",
        ]
    )
    headers = [
        "workload",
        "requests",
        "server CPU busy",
        "gateway us CPU",
        "backend alone us CPU",
        "added us",
    ]
    print_table(
        f"1. CPU per request, {COST_CONCURRENCY} concurrent streams, zero-cost backend",
        headers,
        rows,
    )
    return per[short][0] - per[short][1], slope[0] - slope[1]


def sweep_section(server: Server, seconds: float) -> None:
    rows = []
    for streams in SWEEP:
        g = asyncio.run(
            over_http(server.url, server.proc.pid, streams, SWEEP_TOKENS, seconds, False)
        )
        b = asyncio.run(alone("zero", streams, SWEEP_TOKENS, seconds, False))
        tok = [p.requests * SWEEP_TOKENS / p.elapsed for p in (g, b)]
        rows.append(
            [str(streams), f"{g.requests / g.elapsed:,.0f}", f"{tok[0]:,.0f}", f"{tok[1]:,.0f}"]
            + [f"{pct(g.latencies, q) * 1e3:.2f}" for q in (0.5, 0.99)]
            + [f"{(pct(g.latencies, q) - pct(b.latencies, q)) * 1e3:.2f}" for q in (0.5, 0.99)]
        )
    headers = ["streams", "gateway req/s", "gateway tok/s", "alone tok/s", "p50 ms", "p99 ms"]
    headers += ["added p50 ms", "added p99 ms"]
    title = f"2. Sweep: {SWEEP_TOKENS}-token answers, zero delay, closed loop (saturating)"
    print_table(title, headers, rows)


def paced_section(gateway: Server, floor: Server, seconds: float) -> dict[int, list[float]]:
    """Per stream count: added p50 request latency over the backend alone and over the floor,
    token p50 delivery delay, and the floor's, in seconds."""
    rows, out = [], {}
    for streams in PACED:
        g = asyncio.run(
            over_http(gateway.url, gateway.proc.pid, streams, PACED_TOKENS, seconds, True)
        )
        f = asyncio.run(over_http(floor.url, floor.proc.pid, streams, PACED_TOKENS, seconds, True))
        b = asyncio.run(alone("paced", streams, PACED_TOKENS, seconds, True))
        p50 = [pct(x.latencies, 0.5) for x in (b, f, g)]
        added = [p50[2] - p50[0], p50[2] - p50[1], pct(g.latencies, 0.99) - pct(b.latencies, 0.99)]
        token = [pct(x.delays, 0.5) / 1e9 for x in (g, f)]
        out[streams] = [added[0], added[1], *token]
        rows.append(
            [str(streams), f"{g.requests:,}", f"{len(g.delays):,}", f"{g.cpu / g.elapsed:.0%}"]
            + [f"{x * 1e3:.1f}" for x in p50]
            + [f"{a * 1e3:.2f}" for a in added]
            + [us(t) for t in (*token, pct(g.delays, 0.99) / 1e9)]
        )
    headers = ["streams", "requests", "tokens", "gateway CPU busy"]
    headers += ["alone p50 ms", "floor p50 ms", "gateway p50 ms"]
    headers += ["added p50 ms", "over floor p50 ms", "added p99 ms"]
    headers += ["token p50 us", "floor token p50 us", "token p99 us"]
    title = f"3. Paced: {PACED_TOKENS} tokens, one every {PACE_S * 1e3:.0f} ms per stream"
    print_table(title, headers, rows)
    return out


def workers_section(workers: int, seconds: float) -> None:
    """Saturated throughput with 1 and `workers` gateway processes (the client is this one
    process: on a machine with few cores it competes with the workers)."""
    rows, base = [], 0.0
    for n in sorted({1, workers}):
        server = Server("zero", n)
        try:
            time.sleep(3.0 if n > 1 else 0.0)  # workers import and start after the URL
            g = asyncio.run(
                over_http(
                    server.url, server.proc.pid, COST_CONCURRENCY, SWEEP_TOKENS, seconds, False
                )
            )
        finally:
            server.close()
        tokens = g.requests * SWEEP_TOKENS / g.elapsed
        base = base or tokens
        rows.append(
            [str(n), f"{g.requests / g.elapsed:,.0f}", f"{tokens:,.0f}", f"{tokens / base:.2f}x"]
            + [f"{pct(g.latencies, q) * 1e3:.2f}" for q in (0.5, 0.99)]
        )
    headers = ["workers", "req/s", "tok/s", "vs 1 worker", "p50 ms", "p99 ms"]
    title = (
        f"4. Workers: {COST_CONCURRENCY} streams, {SWEEP_TOKENS}-token answers, zero delay, "
        f"closed loop ({os.cpu_count()} CPUs shared with the client; load before: "
        f"{os.getloadavg()[0]:.2f})"
    )
    print_table(title, headers, rows)


def verdict(name: str, value: float, target: float, unit: float, suffix: str) -> None:
    ok = "ok" if value < target else "MISSED"
    print(f"{name}: {value / unit:,.1f} {suffix} (target < {target / unit:,.0f} {suffix}): {ok}")


def main() -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per point")
    parser.add_argument("--quick", action="store_true", help="1 s per point")
    parser.add_argument(
        "--workers", type=int, default=1, help="also compare 1 and N gateway worker processes"
    )
    parser.add_argument("--only-workers", action="store_true", help="just the workers section")
    parser.add_argument("--serve", choices=("zero", "paced", "floor"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.workers)
        return
    if args.only_workers:
        workers_section(args.workers, 1.0 if args.quick else args.seconds)
        return
    seconds = 1.0 if args.quick else args.seconds
    print(f"{os.cpu_count()} CPUs; gateway: uvicorn (h11, asyncio) in a child process")
    print(f"{seconds:g} s measured per point")
    zero = Server("zero")
    try:
        per_request, per_token = cost_section(zero, seconds)
        sweep_section(zero, seconds)
    finally:
        zero.close()
    paced, floor = Server("paced"), Server("floor")
    try:
        at = paced_section(paced, floor, seconds)[COST_CONCURRENCY]
    finally:
        paced.close()
        floor.close()
    n = COST_CONCURRENCY
    print("\nfloor: the same paced tokens as chunked SSE from a bare asyncio server (no HTTP")
    print("library): the OS, loopback TCP and this client without any gateway. Its tokens can")
    print("arrive later than the gateway's: a mostly idle process wakes more slowly on a VM.")
    verdict(f"added CPU per request at {n} streams", per_request, TARGET_REQUEST_S, 1e-6, "us")
    verdict(f"added CPU per streamed token at {n} streams", per_token, TARGET_TOKEN_S, 1e-6, "us")
    verdict(
        f"added p50 latency per request at {n} paced streams", at[0], TARGET_REQUEST_S, 1e-6, "us"
    )
    verdict("  the same over the floor", at[1], TARGET_REQUEST_S, 1e-6, "us")
    verdict(f"p50 delivery delay per token at {n} paced streams", at[2], TARGET_TOKEN_S, 1e-6, "us")
    print(f"  (the floor's: {at[3] * 1e6:,.1f} us)")
    if args.workers > 1:
        workers_section(args.workers, seconds)


if __name__ == "__main__":
    main()
