"""Profile a benchmark target under load with py-spy, and rank where its CPU goes per token.

``python -m benchmarks.profile --target gateway-openai --concurrency 16 --seconds 10`` starts the
same processes as ``python -m benchmarks``, puts one closed-loop load on the target, samples
the target's server process with ``py-spy record`` (which must be installed: ``pip install
py-spy``; a dev tool, not a dependency), and prints the functions and lines with the most
samples, inclusive and self, each also as µs of server CPU per token (or per call, for unary
loads): its share of the samples times the CPU per token measured from /proc over the same load.
The raw collapsed stacks and a speedscope file are kept in ``benchmarks/out/``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.__main__ import PYTHON, ROOT, _child_env, start_stack, target_specs

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", str(ROOT) + "/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summarise(collapsed: Path, per_unit_us: float | None, top: int, unit: str) -> str:
    """Functions and lines ranked by inclusive and self samples."""
    inclusive_functions: Counter[str] = Counter()
    self_functions: Counter[str] = Counter()
    inclusive_lines: Counter[str] = Counter()
    total = 0
    for raw in collapsed.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame)
            if match is None:
                continue  # the thread/process name at the root
            where = _short(match.group("file"))
            frames.append((f"{match.group('function')} ({where})", f"{where}:{match.group('line') or '?'}"))
        if not frames:
            continue
        total += count
        for function in {function for function, _ in frames}:
            inclusive_functions[function] += count
        for line in {line for _, line in frames}:
            inclusive_lines[line] += count
        self_functions[frames[-1][0]] += count

    def rows(counter: Counter[str]) -> list[str]:
        lines = []
        for name, count in counter.most_common(top):
            share = count / total if total else 0.0
            cost = f"{share * per_unit_us:8.1f} µs/{unit}" if per_unit_us is not None else ""
            lines.append(f"  {share * 100:5.1f}%  {cost}  {name}")
        return lines

    report = [f"{total} samples of the server process (all threads, idle excluded)"]
    report += ["", "inclusive, by function:", *rows(inclusive_functions)]
    report += ["", "self, by function:", *rows(self_functions)]
    report += ["", "inclusive, by line:", *rows(inclusive_lines)]
    return "\n".join(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="gateway-openai")
    parser.add_argument("--mode", choices=("stream", "unary"), default="stream")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to sample")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--candidate", action="append", default=[], metavar="NAME=PATH", help="as for python -m benchmarks"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    candidates = dict(item.partition("=")[::2] for item in args.candidate)
    py_spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not Path(py_spy).exists():
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stack = start_stack(out, candidates)
    try:
        specs = target_specs(stack)
        pid = specs[args.target]["pid"]
        run: dict[str, Any] = {
            "scenario": "profile",
            "target": args.target,
            "mode": args.mode,
            "concurrency": args.concurrency,
            "tokens": args.tokens,
            "delay_ms": 0,
            "warmup": 1.0,
            "duration": args.seconds,
        }
        document = {"targets": specs, "runs": [run], "fake_pid": stack.processes["fake"].pid}
        loadgen = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.loadgen", "runs"],
            cwd=ROOT,
            env=_child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert loadgen.stdin is not None
        loadgen.stdin.write(json.dumps(document).encode())
        loadgen.stdin.close()
        time.sleep(1.5)  # the warm-up, and the measured load's start
        name = f"profile-{args.target}-{args.mode}-c{args.concurrency}"
        collapsed = out / f"{name}.txt"
        common = ["--pid", str(pid), "--rate", str(args.rate), "--duration", str(int(args.seconds - 1))]
        subprocess.run(
            [py_spy, "record", *common, "--nonblocking", "--format", "raw", "--output", str(collapsed)],
            check=True,
            capture_output=True,
        )
        assert loadgen.stdout is not None
        stdout = loadgen.stdout.read()
        loadgen.wait(timeout=60)
        result = json.loads(stdout.decode().splitlines()[-1])
    finally:
        stack.stop()
    units = result["tokens"] if args.mode == "stream" else result["ok"]
    per_unit = result["server_cpu_s"] / units * 1e6 if units else None
    unit = "token" if args.mode == "stream" else "call"
    print(
        f"{args.target} {args.mode} c={args.concurrency}: {result['tokens_per_s']} tok/s, "
        f"{result['calls_per_s']} calls/s, server CPU {per_unit or 0:.1f} µs/{unit} over the whole load"
    )
    print(summarise(collapsed, per_unit, args.top, unit))
    (out / f"{name}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
