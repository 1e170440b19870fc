"""The Triton serving path's CPU cost: `tensorrt_llm` alone, `chat` over it, the gateway over
`chat`, on the packaged repository and the real CPU tritonserver, in one run.

    python bench/triton_bench.py [--seconds 3] [--repeat 3] [--intervals 1,8] [--quick]

`tensorrt_llm` is the CPU stand-in playing a script (`K2TRT_SCRIPT`): long replies, zero delay
(as fast as asked) or one token every PACE_S (paced). `max_tokens` cuts each reply, so every
answer has exactly the length asked. One server per `stream_interval` (written into
tensorrt_llm/1/model.yaml as `k2trt build` writes it): 1 is one token per response, as before.

Per server, over gRPC from this process (asyncio, one call per request, read to the end):
1. Cost at 64 concurrent streams, closed loop: CPU seconds of the server's processes (the
   tritonserver and every Python stub, by model) per request (1-token answers) and per token
   (the slope between 1- and 128-token answers), for `tensorrt_llm` alone, `chat`, and the
   gateway (`k2trt serve --triton-url`, a child process: its CPU is added) over `chat`.
   "Added" is the figure minus `tensorrt_llm` alone's. Targets: the serving layers add at most
   30 us per token and 300 us per request. Repeated `--repeat` times: min and median.
2. Sweep: 1 to 256 streams, 32-token answers, closed loop: tokens/s of each path.
3. Paced (a token every PACE_S in the stand-in, 64 streams spread over one answer): p50/p99
   request latency; added p50 = chat's (or the gateway's) minus tensorrt_llm alone's.
   Target: < 1 ms.

The load average is printed before every point (other work on the machine skews absolute
figures; ratios within a run hold better). Client and server share the cores: tokens/s is a
floor, the CPU figures are the server's own. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc

from _util import doc_summary, print_table
from k2trt.runtime.types import ChatRequest
from k2trt.serve.triton_backend import EMPTY_FINAL, _tensor, infer_request, is_final
from k2trt.triton_repo import spec
from k2trt.triton_repo.cpu_server import CpuTritonServer, available, free_port

REPLY = "tok " * 160  # more tokens than any answer asks: max_tokens cuts it
REPLIES = 12_000  # one per request (the stand-in plays the next reply per generation)
COST_STREAMS = 64
COST_LENGTHS = (1, 128)
SWEEP = (1, 4, 16, 64, 256)
SWEEP_TOKENS = 32
PACED_STREAMS = 64
PACED_TOKENS = 32
PACE_S = 0.02
TARGET_TOKEN_S = 30e-6
TARGET_REQUEST_S = 300e-6
TARGET_LATENCY_S = 1e-3
TICK = os.sysconf("SC_CLK_TCK")
NAN = float("nan")
# One event loop for every point: grpc.aio binds its poller to the first loop it runs on.
RUNNER = asyncio.Runner()
CLI = "import sys; from k2trt.cli.app import main; sys.exit(main())"
PATHS = ("tensorrt_llm", "chat", "gateway")


# ---- the repository and the servers ----


def make_package(root: Path) -> Path:
    """A tiny synthetic Kimi K2, converted, built (H200x8), packaged, CPU stand-in in place."""
    from k2trt.build.bundle import build_bundle
    from k2trt.build.spec import BuildSpec
    from k2trt.convert.pipeline import ConvertOptions, convert_checkpoint
    from k2trt.synth.checkpoint import write_checkpoint
    from k2trt.synth.presets import SynthOptions
    from k2trt.triton_repo.repository import package, use_cpu_standin

    if not (root / "prepared").is_dir():  # reused from --workdir; the package never is
        write_checkpoint(root / "tiny", SynthOptions(preset="tiny", seed=0))
        convert_checkpoint(root / "tiny", root / "prepared", ConvertOptions())
    spec_ = BuildSpec(gpus="H200x8")
    bundle = build_bundle(root / "prepared", root / "bundle", spec_, force=True)
    out = package(bundle, root / "pkg", force=True).path
    use_cpu_standin(out, root / "prepared")
    return out


def set_interval(package: Path, interval: int) -> None:
    path = package / "model_repository" / spec.LLM_MODEL / spec.VERSION / "model.yaml"
    data = yaml.safe_load(path.read_text())
    data["stream_interval"] = interval
    path.write_text(yaml.safe_dump(data, sort_keys=True))


def write_script(path: Path, delay_s: float) -> Path:
    path.write_text(json.dumps({"replies": [REPLY] * REPLIES, "delay_s": delay_s}))
    return path


def process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def tree_cpu(root: int) -> dict[str, float]:
    """CPU seconds of `root` and its descendants, by what they are (a stub by its model)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out: dict[str, float] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        out[label(pid)] = out.get(label(pid), 0.0) + process_cpu(pid)
    return out


def label(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    for arg in argv:
        text = arg.decode(errors="replace")
        for name in spec.MODELS:
            if f"/{name}/" in text:
                return name
    return "tritonserver" if argv and b"tritonserver" in argv[0] else "other"


class Gateway:
    """`k2trt serve --triton-url` over the server's gRPC port, in a child process."""

    def __init__(self, grpc_url: str) -> None:
        self.port = free_port()
        argv = [sys.executable, "-c", CLI, "serve", "--triton-url", grpc_url]
        argv += ["--port", str(self.port), "--max-concurrency", "1024", "--max-queue", "1024"]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                asyncio.run(_probe(self.port))
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the gateway did not start")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # draining streams of a server that broke
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


async def _probe(port: int) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()


# ---- clients ----


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    elapsed: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def total_cpu(self) -> float:
        return sum(self.cpu.values())


def llm_message(tokens: int) -> Any:
    msg = service_pb2.ModelInferRequest(model_name=spec.LLM_MODEL, id=uuid.uuid4().hex)
    arrays = {
        "input_ids": np.arange(1, 21, dtype=np.int32).reshape(1, -1),
        "max_tokens": np.array([[tokens]], dtype=np.int32),
        "streaming": np.array([[True]]),
    }
    for name, array in arrays.items():
        tensor, raw = _tensor(name, array)
        msg.inputs.append(tensor)
        msg.raw_input_contents.append(raw)
    for name in ("output_ids", "finish_reason"):
        msg.outputs.add(name=name)
    msg.parameters[EMPTY_FINAL].bool_param = True
    return msg


def chat_message(tokens: int) -> Any:
    req = ChatRequest([{"role": "user", "content": "Hello"}], max_tokens=tokens)
    return infer_request(req, uuid.uuid4().hex)


async def grpc_one(stub: Any, msg: Any, count: Callable[[Any], int]) -> int:
    """One streamed request read to its final response; tokens it carried."""
    done = asyncio.Event()

    async def requests() -> Any:
        yield msg
        await done.wait()

    call = stub.ModelStreamInfer(requests())
    tokens = 0
    try:
        async for response in call:
            if response.error_message:
                raise RuntimeError(response.error_message)
            tokens += count(response.infer_response)
            if is_final(response.infer_response):
                return tokens
        raise RuntimeError("stream ended without a final response")
    finally:
        done.set()


def llm_tokens(response: Any) -> int:
    if not response.outputs:
        return 0
    return int(InferResult(response).as_numpy("output_ids").size)


def chat_tokens(response: Any) -> int:
    if not response.outputs:
        return 0
    reason = InferResult(response).as_numpy("finish_reason").reshape(-1)[0]
    done = bool(reason)
    return int(InferResult(response).as_numpy("completion_tokens").reshape(-1)[0]) if done else 0


def http_payload(tokens: int) -> bytes:
    body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "Hello"}], "stream": True,
         "max_tokens": tokens, "stream_options": {"include_usage": True}}
    ).encode()  # fmt: skip
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: b\r\ncontent-type: application/json\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


END = b"\r\n0\r\n\r\n"


async def http_one(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], payload: bytes) -> int:
    reader, writer = conn
    writer.write(payload)
    seen = b""
    while True:
        data = await reader.read(1 << 16)
        if not data:
            raise ConnectionError("the gateway closed the connection")
        seen = (seen + data)[-4096:]
        if seen.endswith(END):
            marker = seen.rfind(b'"completion_tokens":')
            if marker < 0:
                raise RuntimeError(f"no usage in the answer's end: {seen[-300:]!r}")
            digits = seen[marker + 20 :].lstrip().split(b",")[0].split(b"}")[0]
            return int(digits)


class Load:
    """`streams` concurrent clients of one path, each sending requests back to back."""

    def __init__(self, package: Path, script: Path, pythonpath: str | None) -> None:
        self.args = (package, script, pythonpath)
        self.server, self.gateway = serve(*self.args)
        self.crashes = 0

    def close(self) -> None:
        self.gateway.close()
        self.server.stop()

    def measure(
        self, path: str, streams: int, tokens: int, seconds: float, spread: float = 0.0
    ) -> Phase | None:
        """One point, or None when the server broke (then it is started afresh)."""
        try:
            return RUNNER.run(self.run(path, streams, tokens, seconds, spread))
        except (RuntimeError, OSError) as exc:  # a stub died; the gateway then drops streams
            self.crashes += 1
            print(f"    FAILED: {exc}; restarting the server", flush=True)
            self.close()
            self.server, self.gateway = serve(*self.args)
            return None

    def dead(self) -> str:
        """Which of the server's processes died (a stub that crashed stays a zombie)."""
        assert self.server._proc is not None
        if self.server._proc.poll() is not None:
            return "tritonserver exited"
        zombies = []
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if stat[0] == "Z" and int(stat[1]) == self.server._proc.pid:
                zombies.append(entry.name)
        return f"dead stubs: {zombies}" if zombies else "every process alive"

    def cpu(self, path: str) -> dict[str, float]:
        assert self.server._proc is not None
        now = tree_cpu(self.server._proc.pid)
        if path == "gateway" and self.gateway is not None:
            now["gateway"] = process_cpu(self.gateway.proc.pid)
        return now

    async def run(
        self, path: str, streams: int, tokens: int, seconds: float, spread: float = 0.0
    ) -> Phase:
        phase = Phase()
        channel = grpc.aio.insecure_channel(self.server.grpc_url)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        one = await self._client(path, stub, tokens, streams)
        warm = asyncio.gather(*(one(k) for k in range(min(streams, 8))))  # unmeasured
        try:
            await asyncio.wait_for(warm, 60)
        except TimeoutError:
            raise RuntimeError(f"{path}: no answer for 60 s; {self.dead()}") from None
        before, start = self.cpu(path), time.perf_counter()
        deadline = start + spread + seconds

        async def client(k: int) -> None:
            await asyncio.sleep(k * spread / streams)
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                got = await one(k)  # not `+= await`: that reads the total before waiting
                phase.tokens += got
                phase.latencies.append(time.perf_counter() - began)

        try:
            await asyncio.wait_for(
                asyncio.gather(*(client(k) for k in range(streams))), spread + seconds + 60
            )
        except TimeoutError:
            raise RuntimeError(f"{path} x {streams}: no answer for 60 s; {self.dead()}") from None
        phase.elapsed = time.perf_counter() - start
        after = self.cpu(path)
        phase.cpu = {k: after[k] - before.get(k, 0.0) for k in after}
        await channel.close()
        await self._close()
        return phase

    async def _client(
        self, path: str, stub: Any, tokens: int, streams: int
    ) -> Callable[[int], Awaitable[int]]:
        self._conns: list[Any] = []
        if path == "tensorrt_llm":
            return lambda k: grpc_one(stub, llm_message(tokens), llm_tokens)
        if path == "chat":
            return lambda k: grpc_one(stub, chat_message(tokens), chat_tokens)
        assert self.gateway is not None
        port = self.gateway.port
        self._conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(streams)]
        payload = http_payload(tokens)
        return lambda k: http_one(self._conns[k], payload)

    async def _close(self) -> None:
        for _, writer in self._conns:
            writer.close()


# ---- sections ----


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def cost_once(load: Load, seconds: float) -> dict[str, tuple[float, float, dict[str, float]]]:
    """Per path: (CPU s per request, CPU s per token, per-process CPU s per token)."""
    out = {}
    for path in PATHS:
        per: dict[int, Phase] = {}
        for tokens in COST_LENGTHS:
            print(f"  [{load_note()}] {path}, {tokens}-token answers", flush=True)
            got = load.measure(path, COST_STREAMS, tokens, seconds)
            if got is not None:
                per[tokens] = got
        if len(per) < len(COST_LENGTHS):
            out[path] = (NAN, NAN, {})
            continue
        short, long = per[COST_LENGTHS[0]], per[COST_LENGTHS[1]]
        for tokens, p in per.items():
            print(
                f"    {p.requests} requests of {p.tokens / max(p.requests, 1):.1f} tokens "
                f"(asked {tokens}), {p.requests / p.elapsed:,.0f}/s, CPU {p.total_cpu:.2f} s"
            )
        request = short.total_cpu / short.requests
        token = (long.total_cpu / long.requests - request) / (COST_LENGTHS[1] - COST_LENGTHS[0])
        parts = {k: v / long.tokens for k, v in long.cpu.items() if v > 0}
        split = ", ".join(
            f"{k} {v / short.requests * 1e6:.0f}" for k, v in sorted(short.cpu.items())
        )
        print(f"    us CPU per 1-token request by process: {split}")
        out[path] = (request, token, parts)
    return out


def median(values: list[float]) -> float:
    """The median of the points that ran (NaN for a point the server crashed in)."""
    ran = [v for v in values if v == v]
    return statistics.median(ran) if ran else NAN


def least(values: list[float]) -> float:
    ran = [v for v in values if v == v]
    return min(ran) if ran else NAN


def cost_section(load: Load, seconds: float, repeat: int, interval: int) -> dict[str, float]:
    runs = [cost_once(load, seconds) for _ in range(repeat)]
    rows, medians = [], {}
    for path in PATHS:
        req = [r[path][0] for r in runs]
        tok = [r[path][1] for r in runs]
        add_req = [r[path][0] - r["tensorrt_llm"][0] for r in runs]
        add_tok = [r[path][1] - r["tensorrt_llm"][1] for r in runs]
        medians[f"{path} request"] = median(add_req)
        medians[f"{path} token"] = median(add_tok)
        parts = runs[-1][path][2]
        split = ", ".join(f"{k} {v * 1e6:.0f}" for k, v in sorted(parts.items()))
        rows.append(
            [path, f"{us(least(req))} / {us(median(req))}",
             f"{least(tok) * 1e6:.1f} / {median(tok) * 1e6:.1f}",
             f"{us(least(add_req))} / {us(median(add_req))}",
             f"{least(add_tok) * 1e6:.1f} / {median(add_tok) * 1e6:.1f}", split]
        )  # fmt: skip
    headers = ["path", "us CPU/request", "us CPU/token", "added us/request", "added us/token"]
    headers += ["us/token by process (last run, 128-token answers)"]
    title = (
        f"1. CPU cost, {COST_STREAMS} streams, stream_interval {interval} "
        f"(min / median of {repeat}; added = minus tensorrt_llm alone)"
    )
    print_table(title, headers, rows)
    return medians


def sweep_section(load: Load, seconds: float, interval: int) -> None:
    rows = []
    for streams in SWEEP:
        row = [str(streams)]
        for path in PATHS:
            print(f"  [{load_note()}] sweep {path} x {streams}", flush=True)
            p = load.measure(path, streams, SWEEP_TOKENS, seconds)
            if p is None:
                row += ["crashed", "-"]
                continue
            row += [f"{p.tokens / p.elapsed:,.0f}", f"{np.percentile(p.latencies, 50) * 1e3:.1f}"]
        rows.append(row)
    headers = ["streams"]
    for path in PATHS:
        headers += [f"{path} tok/s", "p50 ms"]
    title = f"2. Sweep: {SWEEP_TOKENS}-token answers, closed loop, stream_interval {interval}"
    print_table(title, headers, rows)


def paced_section(load: Load, seconds: float, interval: int) -> dict[str, float]:
    rows, p50 = [], {}
    for path in PATHS:
        print(f"  [{load_note()}] paced {path}", flush=True)
        p = load.measure(path, PACED_STREAMS, PACED_TOKENS, seconds, PACED_TOKENS * PACE_S)
        if p is None:
            p50[path] = NAN
            rows.append([path, "crashed"])
            continue
        p50[path] = float(np.percentile(p.latencies, 50))
        p99 = float(np.percentile(p.latencies, 99))
        added = p50[path] - p50["tensorrt_llm"]
        rows.append(
            [path, str(p.requests), f"{p50[path] * 1e3:.2f}", f"{p99 * 1e3:.2f}",
             f"{added * 1e3:.2f}", f"{p.total_cpu / p.elapsed:.0%}"]
        )  # fmt: skip
    title = (
        f"3. Paced: {PACED_STREAMS} streams, {PACED_TOKENS} tokens, one every "
        f"{PACE_S * 1e3:.0f} ms, stream_interval {interval}"
    )
    headers = ["path", "requests", "p50 ms", "p99 ms", "added p50 ms", "server CPU busy"]
    print_table(title, headers, rows)
    return {k: v - p50["tensorrt_llm"] for k, v in p50.items()}


def baseline_path(src: Path, work: Path) -> str:
    """K2TRT_PYTHONPATH that serves k2trt from `src` (another checkout's src/): this
    environment's site-packages minus the editable install that points at this checkout."""
    from k2trt.triton_repo.cpu_server import python_path

    site = work / "site-without-k2trt"
    if not site.is_dir():
        site.mkdir()
        purelib = Path(python_path().split(os.pathsep)[0])
        for entry in purelib.iterdir():
            if not entry.name.startswith(("__editable__", "k2trt")):
                (site / entry.name).symlink_to(entry)
    return os.pathsep.join([str(src.resolve()), str(site)])


def serve(
    package: Path, script: Path, pythonpath: str | None = None
) -> tuple[CpuTritonServer, Gateway]:
    env = {"K2TRT_SCRIPT": str(script)}
    if pythonpath:
        env["K2TRT_PYTHONPATH"] = pythonpath
    server = CpuTritonServer(package / "model_repository", env=env, timeout=300).start()
    try:
        return server, Gateway(server.grpc_url)
    except BaseException:
        server.stop()
        raise


def verdict(name: str, value: float, target: float, unit: float, suffix: str) -> None:
    ok = "ok" if value <= target else "MISSED"
    print(f"  {name}: {value / unit:,.1f} {suffix} (target <= {target / unit:,.0f}): {ok}")


def run_interval(
    package: Path, work: Path, interval: int, args: argparse.Namespace, baseline: str | None
) -> None:
    set_interval(package, interval)
    what = f"serving code from {args.baseline_src}" if baseline else "this checkout"
    print(f"\n=== stream_interval {interval}, {what} ===", flush=True)
    zero = write_script(work / "zero.json", 0.0)
    load = Load(package, zero, baseline)
    try:
        cost = {} if args.no_cost else cost_section(load, args.seconds, args.repeat, interval)
        if not args.no_sweep:
            sweep_section(load, args.seconds, interval)
    finally:
        load.close()
        print(f"  server restarts after a failure: {load.crashes}")
    if args.no_paced:
        return
    paced = write_script(work / "paced.json", PACE_S)
    load = Load(package, paced, baseline)
    try:
        added = paced_section(load, args.seconds, interval)
    finally:
        load.close()
    print(f"\nTargets, stream_interval {interval} (medians):")
    for path in ("chat", "gateway"):
        if cost:
            token, request = cost[f"{path} token"], cost[f"{path} request"]
            verdict(f"{path}: added CPU per token", token, TARGET_TOKEN_S, 1e-6, "us")
            verdict(f"{path}: added CPU per request", request, TARGET_REQUEST_S, 1e-6, "us")
        verdict(f"{path}: added p50 latency (paced)", added[path], TARGET_LATENCY_S, 1e-3, "ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per point")
    parser.add_argument("--repeat", type=int, default=3, help="cost runs (min and median)")
    parser.add_argument("--intervals", default="1,8", help="stream_interval values (a server each)")
    parser.add_argument("--no-cost", action="store_true", help="skip section 1")
    parser.add_argument("--no-sweep", action="store_true", help="skip section 2")
    parser.add_argument("--no-paced", action="store_true", help="skip section 3 (and the verdict)")
    parser.add_argument("--quick", action="store_true", help="1 s per point, 1 repeat")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also serve with the k2trt in this src/ (e.g. `git archive HEAD src | tar -x`)",
    )
    parser.add_argument("--workdir", type=Path, help="reuse/keep the package here")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeat = 1.0, 1
    reason = available()
    if reason is not None:
        print(f"the CPU tritonserver cannot run here: {reason}")
        return 1
    work = args.workdir or Path(tempfile.mkdtemp(prefix="k2trt-triton-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        package = make_package(work)
        print(f"{os.cpu_count()} CPUs, {load_note()}; {args.seconds:g} s per point")
        if args.baseline_src:
            run_interval(package, work, 1, args, baseline_path(args.baseline_src, work))
        for interval in (int(x) for x in args.intervals.split(",")):
            run_interval(package, work, interval, args, None)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
