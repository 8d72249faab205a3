"""``python -m benchmarks`` (``make bench``): start every process, run the loads, report the table.

Processes, each its own: the fake upstream, the gateway (``python -m server``), the minimal relay,
the bare grpc.aio stream, and the load generator(s). Everything listens on 127.0.0.1 only, every
load is bounded in calls and time, and every process started here is stopped here, by its pid.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import functools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks.common import (
    Plan,
    cpu_seconds,
    memory_kib,
    percentile,
    process_tree,
    proportional_memory_kib,
    raise_fd_limit,
)
from benchmarks.loadgen import direct_request, stream_chat_request
from benchmarks.report import evaluate_targets, markdown

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
_LISTENING = re.compile(r"listening on [^ ]+:(\d+)")
_SCENARIOS = ("stream", "unary", "latency", "c5000")


def stream_targets(candidates: list[str]) -> list[str]:
    """Every target of the stream and unary loads, in the order they run (neighbours compare).

    ``candidates`` are further gateways (``--candidate`` trees, and ``workers`` in the stream load).
    """
    targets = ["bare"]
    for path in ("openai", "coze"):
        targets += [f"baseline-{path}", f"gateway-{path}", *(f"{name}-{path}" for name in candidates)]
        targets.append(f"direct-{path}")
    return targets


def latency_targets(candidates: list[str]) -> list[str]:
    """The targets of the one-caller unary latency load."""
    targets = []
    for path in ("coze", "openai"):
        targets += [f"direct-{path}", f"baseline-{path}", f"gateway-{path}", *(f"{name}-{path}" for name in candidates)]
    return targets


@dataclass
class Process:
    """A child process started by the benchmark, and the log its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        """SIGTERM, a few seconds to exit, then SIGKILL; only this pid."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self.log.close()


@dataclass
class Stack:
    """The started processes, stopped together."""

    processes: dict[str, Process] = field(default_factory=dict)
    #: How to start each server process again from scratch, by name.
    starters: dict[str, Callable[[], Process]] = field(default_factory=dict)

    def start(self, name: str, starter: Callable[[], Process]) -> None:
        self.starters[name] = starter
        self.processes[name] = starter()

    def restart(self, name: str) -> None:
        """A fresh process in place of ``name``: nothing left in its memory from earlier loads."""
        self.processes[name].stop()
        self.processes[name] = self.starters[name]()

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("AIP_", "COZE_", "OPENAI_", "BENCH_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra or {})
    return env


def _start_printing_port(name: str, args: list[str], out: Path, timeout: float = 30.0) -> Process:
    """Start a process that prints ``{"port": N}`` on its first line of stdout."""
    log = (out / f"{name}.log").open("wb")
    popen = subprocess.Popen(args, cwd=ROOT, env=_child_env(), stdout=subprocess.PIPE, stderr=log)
    process = Process(name, popen, log)
    assert popen.stdout is not None
    deadline = time.monotonic() + timeout
    line = popen.stdout.readline()
    if not line or time.monotonic() > deadline:
        process.stop()
        raise RuntimeError(f"{name} did not start; see {out / (name + '.log')}")
    process.port = int(json.loads(line)["port"])
    return process


def _start_gateway(
    out: Path, fake_port: int, name: str = "gateway", source_path: str = "", workers: int = 1
) -> Process:
    """Start ``python -m server``; ``source_path`` goes first on its PYTHONPATH (a candidate's tree)."""
    config = out / "services.toml"
    upstream = f"http://127.0.0.1:{fake_port}"
    config.write_text(
        "\n".join(
            [
                "[services.openai]",
                'provider = "openai"',
                f'base_url = "{upstream}/v1"',
                'api_key_env = "BENCH_OPENAI_API_KEY"',
                'default_model = "tokens-50-delay-0"',
                "",
                "[services.coze]",
                'provider = "coze"',
                f'base_url = "{upstream}"',
                'api_key_env = "BENCH_COZE_API_TOKEN"',
                'default_bot_id = "tokens-50-delay-0"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    env = _child_env(
        {
            "AIP_ADDRESS": "127.0.0.1:0",
            "AIP_CONFIG": str(config),
            "AIP_DEMO_SERVICES": "false",
            "AIP_MAX_CONCURRENT_CALLS": "100000",
            "AIP_GRACE_SECONDS": "1",
            "AIP_WORKERS": str(workers),
            "AIP_LOG_LEVEL": "INFO",
            "BENCH_OPENAI_API_KEY": "sk-bench-openai-key",
            "BENCH_COZE_API_TOKEN": "pat_bench_coze_token",
        }
    )
    if source_path:
        env["PYTHONPATH"] = os.pathsep.join([source_path, env["PYTHONPATH"]])
    log_path = out / f"{name}.log"
    log = log_path.open("wb")
    # cwd is out/, so no developer's .env leaks into the measured configuration.
    popen = subprocess.Popen([PYTHON, "-m", "server"], cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT)
    process = Process(name, popen, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_path.read_text(encoding="utf-8", errors="replace"))
        if match:
            process.port = int(match.group(1))
            return process
        if popen.poll() is not None:
            break
        time.sleep(0.1)
    process.stop()
    raise RuntimeError(f"{name} did not start; see {log_path}")


def start_stack(out: Path, candidates: dict[str, str] | None = None, workers: int = 0) -> Stack:
    """Start the fake upstream, the gateway, each candidate gateway, the minimal relay and the bare stream.

    With ``workers`` > 1 also a gateway of that many worker processes (``AIP_WORKERS``), named ``workers``.
    """
    stack = Stack()
    try:
        fake = _start_printing_port("fake_upstream", [PYTHON, "-m", "benchmarks.fake_upstream"], out)
        stack.processes["fake"] = fake
        upstream = f"http://127.0.0.1:{fake.port}"
        stack.start("gateway", lambda: _start_gateway(out, fake.port))
        for name, source_path in (candidates or {}).items():
            stack.start(name, functools.partial(_start_gateway, out, fake.port, name, source_path))
        if workers > 1:
            stack.start("workers", lambda: _start_gateway(out, fake.port, "workers", workers=workers))
        stack.start(
            "baseline",
            lambda: _start_printing_port(
                "baseline", [PYTHON, "-m", "benchmarks.relay", "relay", "--upstream", upstream], out
            ),
        )
        # The same relay with the gateway's start-up measures on its process (benchmarks/relay.py).
        stack.start(
            "baseline-tuned",
            lambda: _start_printing_port(
                "baseline-tuned",
                [PYTHON, "-m", "benchmarks.relay", "relay", "--upstream", upstream, "--process-tuning"],
                out,
            ),
        )
        stack.start("bare", lambda: _start_printing_port("bare", [PYTHON, "-m", "benchmarks.relay", "bare"], out))
    except BaseException:
        stack.stop()
        raise
    return stack


def target_specs(stack: Stack) -> dict[str, dict[str, Any]]:
    p = stack.processes
    fake_url = f"http://127.0.0.1:{p['fake'].port}"

    def grpc_target(process: str, service: str, param: str) -> dict[str, Any]:
        return {
            "kind": "grpc",
            "address": f"127.0.0.1:{p[process].port}",
            "service": service,
            "param": param,
            "pid": p[process].pid,
        }

    specs = {"bare": grpc_target("bare", "bare", "model")}
    for path, param in (("openai", "model"), ("coze", "bot_id")):
        for process in p:
            if process not in ("fake", "bare"):
                specs[f"{process}-{path}"] = grpc_target(process, path, param)
        specs[f"direct-{path}"] = {"kind": "direct", "url": fake_url, "path": path, "pid": p["fake"].pid}
    return specs


def build_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The closed-loop loads, targets interleaved so each ratio compares loads run seconds apart."""
    common = {"duration": args.duration, "warmup": args.warmup, "tokens": args.tokens, "delay_ms": 0}
    runs: list[dict[str, Any]] = []
    if "stream" in args.scenarios:
        # The workers gateway only here: how tokens/s scale with processes.
        with_workers = [*args.candidate, *(["workers"] if args.workers > 1 else [])]
        for concurrency in args.concurrency:
            for target in stream_targets(with_workers):
                runs.append(
                    {**common, "scenario": "stream", "target": target, "mode": "stream", "concurrency": concurrency}
                )
    if "unary" in args.scenarios:
        for target in stream_targets(list(args.candidate)):
            runs.append(
                {
                    **common,
                    "scenario": "unary",
                    "target": target,
                    "mode": "unary",
                    "concurrency": args.unary_concurrency,
                }
            )
    if "latency" in args.scenarios:
        for target in latency_targets(list(args.candidate)):
            # Coze unary through the gateway is a stream joined; the direct call reads the same stream.
            mode = "stream" if target == "direct-coze" else "unary"
            runs.append({**common, "scenario": "latency", "target": target, "mode": mode, "concurrency": 1})
    return runs


def run_loads(stack: Stack, runs: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    document = {"targets": target_specs(stack), "runs": runs, "fake_pid": stack.processes["fake"].pid}
    budget = sum(run["duration"] + run["warmup"] + 35 for run in runs) + 30
    with (out / "loadgen.log").open("wb") as log:
        completed = subprocess.run(
            [PYTHON, "-m", "benchmarks.loadgen", "runs"],
            cwd=ROOT,
            env=_child_env(),
            input=json.dumps(document).encode(),
            stdout=subprocess.PIPE,
            stderr=None if sys.stderr.isatty() else log,
            timeout=budget,
            check=True,
        )
    return [json.loads(line) for line in completed.stdout.decode().splitlines() if line.strip()]


# Debian's golang-google-grpc-dev and golang-google-protobuf-dev (protowire, which the swarm
# imports directly) put grpc-go and protobuf here, for GOPATH builds.
_DEBIAN_GOPATH = "/usr/share/gocode"


def build_go_swarm(out: Path, required: bool) -> Path | None:
    """Build the Go swarm client (benchmarks/swarm) into ``out``; None if Go or grpc-go is missing.

    It holds the c5000 streams for about half the Python client's CPU, which on a small machine
    is CPU the gateway under test gets back. GOPATH mode against Debian's packages: no module
    download, so it builds offline.
    """
    go = shutil.which("go")
    problem = "no `go` on PATH (apt-get install golang-go golang-google-grpc-dev golang-google-protobuf-dev)"
    if go is not None:
        binary = out / "swarm"
        environment = {
            **os.environ,
            "GO111MODULE": "off",
            "GOPATH": os.environ.get("GOPATH") or _DEBIAN_GOPATH,
            "GOCACHE": str(out / "go-cache"),
        }
        built = subprocess.run(
            [go, "build", "-o", str(binary), "./benchmarks/swarm"],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            timeout=300,
        )
        if built.returncode == 0:
            return binary
        problem = "go build failed: " + built.stderr.decode(errors="replace").strip()
    if required:
        raise SystemExit(f"benchmarks: --c5000-client go: {problem}")
    print(f"benchmarks: c5000 streams held by the Python client instead of Go: {problem}", file=sys.stderr)
    return None


def swarm_command(go_swarm: Path | None, spec: dict[str, Any], plan: Plan, address: str) -> list[str]:
    """The client process's command up to its share of the streams: the Go client, else Python's."""
    direct = spec["kind"] == "direct"
    if go_swarm is None:
        return [
            PYTHON,
            "-m",
            "benchmarks.loadgen",
            "swarm",
            f"--address={address}",
            f"--service={spec['path'] if direct else spec['service']}",
            f"--param={spec.get('param', '')}",
            *(["--direct"] if direct else []),
            f"--plan={plan.name}",
        ]
    if direct:
        url, body, marker = direct_request(spec["url"], spec["path"], plan, stream=True)
        return [str(go_swarm), "--direct", f"--url={url}", f"--body={json.dumps(body)}", f"--marker={marker.decode()}"]
    request = stream_chat_request(spec["service"], spec["param"], plan).SerializeToString()
    return [str(go_swarm), f"--address={address}", f"--request={base64.b64encode(request).decode()}"]


def _machine_busy_s() -> float:
    """CPU seconds every core of the machine has spent busy since boot (``/proc/stat``: not idle or iowait)."""
    fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    ticks = [int(value) for value in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def run_swarm(
    stack: Stack, target: str, total: int, args: argparse.Namespace, out: Path, go_swarm: Path | None
) -> dict[str, Any]:
    """The many-streams scenario: ``total`` streams of 10 tokens 1 s apart, all held at once."""
    spec = target_specs(stack)[target]
    server_pid = spec["pid"]
    processes = args.c5000_procs
    plan = Plan(args.c5000_tokens, args.c5000_delay_ms)
    _reset_peak_rss(server_pid)
    rss_before = memory_kib(server_pid)["VmRSS"]
    # Before the clients start, so their start-up is inside the machine's busy time as in theirs.
    machine_before = _machine_busy_s()
    loadavg = Path("/proc/loadavg").read_text(encoding="ascii").split()[0]
    start_at = time.time() + 3.0  # time for the client processes to import grpc and connect
    timeout = args.c5000_timeout
    children = []
    outputs: list[Path] = []
    for index in range(processes):
        count = len(range(index, total, processes))
        log = (out / f"swarm-{target}-{index}.log").open("wb")
        output = out / f"swarm-{target}-{index}.json"
        output.unlink(missing_ok=True)
        outputs.append(output)
        address = spec["url"] if spec["kind"] == "direct" else spec["address"]
        command = [
            *swarm_command(go_swarm, spec, plan, address),
            f"--count={count}",
            f"--offset={index}",
            f"--processes={processes}",
            f"--total={total}",
            f"--ramp={args.c5000_ramp}",
            f"--start-at={start_at}",
            f"--timeout={timeout}",
            f"--output={output}",
        ]
        popen = subprocess.Popen(command, cwd=ROOT, env=_child_env(), stdout=log, stderr=log)
        children.append((popen, log))
    peak_rss = rss_before
    cpu_before = cpu_seconds(server_pid)
    fake_pid = stack.processes["fake"].pid
    fake_before = cpu_seconds(fake_pid)
    deadline = time.time() + 3.0 + args.c5000_ramp + timeout + 30
    peak_pss = 0
    samples = 0
    try:
        while any(popen.poll() is None for popen, _ in children) and time.time() < deadline:
            peak_rss = max(peak_rss, memory_kib(server_pid)["VmRSS"])
            if samples % 5 == 0:  # PSS walks page tables: once a second is enough
                peak_pss = max(peak_pss, proportional_memory_kib(server_pid))
            samples += 1
            time.sleep(0.2)
        for popen, log in children:
            if popen.poll() is None:  # past the deadline: stop it; its streams count as incomplete
                popen.send_signal(signal.SIGTERM)
            popen.wait(timeout=30)
            log.close()
    finally:
        for popen, _log in children:
            if popen.poll() is None:
                popen.kill()
                popen.wait(timeout=5)
    cpu = cpu_seconds(server_pid) - cpu_before
    fake_cpu = cpu_seconds(fake_pid) - fake_before
    machine_cpu = _machine_busy_s() - machine_before
    records: list[list[Any]] = []
    client_cpu = 0.0
    for output in outputs:
        if output.exists():
            report = json.loads(output.read_text(encoding="utf-8"))
            records += report["records"]
            client_cpu += report["client_cpu_s"]
    summary = summarise_swarm(target, records, total, plan, args, peak_rss, rss_before, server_pid, cpu)
    summary["peak_pss_mb"] = round(peak_pss / 1024, 1)
    summary["fake_cpu_s"] = round(fake_cpu, 2)
    summary["client_cpu_s"] = round(client_cpu, 2)
    summary["client"] = "python" if go_swarm is None else "go"
    # What the rest of the machine took meanwhile (other sessions; this harness's own sampling is
    # a few tenths): on a shared machine, the sign of a run that coincided with someone else's load.
    summary["other_cpu_s"] = round(max(0.0, machine_cpu - cpu - fake_cpu - client_cpu), 2)
    summary["loadavg_start"] = loadavg
    return summary


def _reset_peak_rss(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+), so the peak is this scenario's.
    for member in process_tree(pid):
        _reset_one_peak_rss(member)


def _reset_one_peak_rss(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5", encoding="ascii")


def summarise_swarm(
    target: str,
    records: list[list[Any]],
    total: int,
    plan: Plan,
    args: argparse.Namespace,
    peak_rss: int,
    rss_before: int,
    pid: int,
    cpu: float,
) -> dict[str, Any]:
    ttfts = [record[1] for record in records if record[1] is not None]
    complete = sum(1 for record in records if record[4] == "OK" and record[3] == plan.tokens)
    statuses: dict[str, int] = {}
    for record in records:
        statuses[record[4]] = statuses.get(record[4], 0) + 1
    # Most streams open at the same moment, from a sweep over every stream's start and end.
    edges = sorted([(record[0], 1) for record in records] + [(record[2], -1) for record in records])
    open_now = max_open = 0
    for _, step in edges:
        open_now += step
        max_open = max(max_open, open_now)
    memory = memory_kib(pid)
    starts = [record[0] for record in records]
    ends = [record[2] for record in records]
    return {
        "target": target,
        "streams": total,
        "plan": plan.name,
        "ramp_s": args.c5000_ramp,
        "client_processes": args.c5000_procs,
        "records": len(records),
        "complete": complete,
        "statuses": statuses,
        "max_concurrent": max_open,
        "ttft_p50_ms": _ms(percentile(ttfts, 0.5)),
        "ttft_p99_ms": _ms(percentile(ttfts, 0.99)),
        "ttft_max_ms": _ms(max(ttfts) if ttfts else None),
        "wall_s": round(max(ends) - min(starts), 2) if records else None,
        "server_cpu_s": round(cpu, 2),
        "rss_before_mb": round(rss_before / 1024, 1),
        "peak_rss_mb": round(max(peak_rss, memory.get("VmHWM", 0)) / 1024, 1),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def machine_facts() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "server", "providers"], cwd=ROOT, capture_output=True, text=True
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit.stdout.strip(),
        "product_code_modified": bool(dirty.stdout.strip()),
        "loadavg_start": Path("/proc/loadavg").read_text(encoding="ascii").split()[:3],
    }


def parse_candidates(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """``--candidate NAME=PATH`` values as {name: tree}; a bad name is the parser's error."""
    candidates = {}
    for item in items:
        name, _, path = item.partition("=")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in (
            "gateway",
            "baseline",
            "bare",
            "direct",
            "fake",
            "workers",
        ):
            parser.error(f"--candidate {item!r}: NAME is lower-case letters, digits and _, not a built-in target")
        candidates[name] = path
    return candidates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short loads, no c5000 scenario (about a minute)")
    parser.add_argument(
        "--scenarios",
        help=f"comma-separated, of {', '.join(_SCENARIOS)} (default: all; with --quick all but c5000)",
    )
    parser.add_argument("--duration", type=float, help="seconds of each measured load (default 5, quick 1.5)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before each load (default 1, quick 0.5)")
    parser.add_argument("--tokens", type=int, default=50, help="tokens per streamed answer")
    parser.add_argument("--concurrency", default="1,16,64", help="concurrent streams of the stream scenario")
    parser.add_argument("--unary-concurrency", type=int, default=16)
    parser.add_argument(
        "--c5000-streams",
        default="5000,1000",
        help="comma-separated stream counts, each run in turn (5,000: issue 5's targets; 1,000: issue 13's "
        "TTFT p99 within 1.5x the minimal relay's)",
    )
    parser.add_argument("--c5000-tokens", type=int, default=10)
    parser.add_argument("--c5000-delay-ms", type=int, default=1000)
    parser.add_argument(
        "--c5000-ramp",
        type=float,
        default=8.0,
        help="seconds over which the streams start (8: 625 a second; under 9, so all are open at once)",
    )
    parser.add_argument(
        "--c5000-repeats", type=int, default=2, help="runs of each c5000 target; its verdict is its worst run"
    )
    parser.add_argument("--c5000-procs", type=int, default=2, help="client processes holding the streams")
    parser.add_argument("--c5000-timeout", type=float, default=60.0, help="each stream's deadline, seconds")
    parser.add_argument(
        "--c5000-client",
        choices=("auto", "go", "python"),
        default="auto",
        help="what holds the c5000 streams: the Go client (benchmarks/swarm, needs Go), the Python one, "
        "or Go when it builds (default)",
    )
    parser.add_argument(
        "--c5000-targets",
        default="direct-openai,baseline-openai,gateway-openai,baseline-coze,gateway-coze,workers-openai,workers-coze",
        help="comma-separated targets of the c5000 scenario (direct-openai is the reference, "
        "baseline-openai and baseline-coze the minimal relay, each path's TTFT p99 divides by)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="also measure a gateway of this many worker processes (AIP_WORKERS; targets workers-*); 1 = none",
    )
    parser.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also measure a gateway run from another source tree (PATH goes first on its PYTHONPATH, "
        "e.g. a scratch copy with a change); targets NAME-openai and NAME-coze; repeatable",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument(
        "--render", type=Path, metavar="RESULTS_JSON", help="only print the table of a saved results.json, run nothing"
    )
    args = parser.parse_args(argv)
    args.candidate = parse_candidates(parser, args.candidate)
    default_scenarios = ("stream", "unary", "latency") if args.quick else _SCENARIOS
    args.scenarios = tuple(args.scenarios.split(",")) if args.scenarios else default_scenarios
    unknown = set(args.scenarios) - set(_SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    args.duration = args.duration or (1.5 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    args.concurrency = [int(value) for value in args.concurrency.split(",")]
    args.c5000_targets = [value for value in args.c5000_targets.split(",") if value]
    args.c5000_streams = [int(value) for value in args.c5000_streams.split(",") if value]
    # The gateway runs in out/ (no developer's .env), so its config path must not be relative.
    args.out = args.out.resolve()
    if args.workers <= 1:
        args.c5000_targets = [target for target in args.c5000_targets if not target.startswith("workers-")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text(encoding="utf-8"))
        saved["targets"] = evaluate_targets(saved)
        print(markdown(saved))
        return
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    raise_fd_limit()  # inherited by every child: the c5000 scenario needs thousands of sockets
    facts = machine_facts()
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"benchmarks: {command.strip()} -> {out}", file=sys.stderr, flush=True)
    started = time.monotonic()
    stack = start_stack(out, args.candidate, args.workers)
    try:
        results: list[dict[str, Any]] = []
        runs = build_runs(args)
        if runs:
            results = run_loads(stack, runs, out)
        rss = {name: memory_kib(process.pid) for name, process in stack.processes.items()}
        swarms = []
        if "c5000" in args.scenarios:
            go_swarm = None if args.c5000_client == "python" else build_go_swarm(out, args.c5000_client == "go")
            # Target after target, then again: a busy moment on the shared machine then hits one run of
            # a target, not all of them; a gateway and the relay on its path run seconds apart.
            for repeat in range(1, args.c5000_repeats + 1):
                for total in args.c5000_streams:
                    for target in args.c5000_targets:
                        server = target.rpartition("-")[0]
                        if server in stack.starters:
                            # Its own fresh process: the peak RSS is this scenario's, not earlier loads' leftovers.
                            stack.restart(server)
                        label = f"  c5000 {target} ({total} streams) #{repeat}"
                        print(f"{label} ...", file=sys.stderr, flush=True)
                        swarms.append(run_swarm(stack, target, total, args, out, go_swarm))
                        print(f"{label}: {json.dumps(swarms[-1])}", file=sys.stderr, flush=True)
    finally:
        stack.stop()
    facts["loadavg_end"] = Path("/proc/loadavg").read_text(encoding="ascii").split()[:3]
    facts["wall_s"] = round(time.monotonic() - started, 1)
    document: dict[str, Any] = {
        "command": command.strip(),
        "machine": facts,
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "tokens": args.tokens,
            "concurrency": args.concurrency,
            "unary_concurrency": args.unary_concurrency,
            "scenarios": list(args.scenarios),
            "candidates": args.candidate,
            "workers": args.workers,
        },
        "runs": results,
        "peak_rss_kib": {name: values.get("VmHWM") for name, values in rss.items()},
        "c5000": swarms,
    }
    document["targets"] = evaluate_targets(document)
    (out / "results.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
    table = markdown(document)
    (out / "results.md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
