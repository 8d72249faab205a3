"""CPU per streamed token, gateway ÷ minimal relay, on both paths: rounds of interleaved loads, a ratio per round.

``python -m benchmarks.per_token`` starts the same processes as ``python -m benchmarks`` (the fake
upstream, the gateway, the minimal relay; ``--candidate NAME=PATH`` adds a gateway from another
tree, as there) and runs ``--rounds`` rounds (8). A round puts one closed-loop stream load
(``--concurrency`` streams of ``--tokens`` tokens, ``--seconds`` after a 1 s warm-up) on each of
``baseline-openai``, ``baseline-tuned-openai``, ``gateway-openai`` and the same on the Coze path
(and each candidate), their order rotated each round, and divides each gateway's server CPU per
token by the relay's on its path *in the same round*, seconds apart. It prints every round's
ratios and, per target, their median and range: against the minimal relay judged by issue 13's
1.25×, against the tuned relay (the same relay with the gateway's process tuning, which spends
less on garbage collection) as a reference.

Why rounds: a single 5 s load of ``make bench`` on a shared 2-core machine moves by more than the
effect judged (two identical processes differ by up to 0.05, other sessions' bursts by far more);
the median of ratios taken seconds apart does not. Takes about ``rounds × targets × (seconds + 2)``
seconds (~4 min by default) and stops every process it started.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks.__main__ import ROOT, machine_facts, parse_candidates, run_loads, start_stack
from benchmarks.common import raise_fd_limit
from benchmarks.report import CPU_RATIO_COZE, CPU_RATIO_OPENAI, cpu_per_token_us

_LIMITS = {"openai": CPU_RATIO_OPENAI, "coze": CPU_RATIO_COZE}


def round_runs(targets: list[str], rounds: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every round's loads, the targets' order rotated by one each round."""
    runs = []
    for index in range(rounds):
        shift = index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            runs.append(
                {
                    "scenario": "stream",
                    "target": target,
                    "mode": "stream",
                    "concurrency": args.concurrency,
                    "duration": args.seconds,
                    "warmup": 1.0,
                    "tokens": args.tokens,
                    "delay_ms": 0,
                    "round": index + 1,
                }
            )
    return runs


def ratios_by_round(results: list[dict[str, Any]], target: str, relay: str) -> list[float | None]:
    """``target``'s CPU per token ÷ ``relay``'s, one ratio per round."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for result in results:
        by_round.setdefault(result["round"], {})[result["target"]] = result
    ratios: list[float | None] = []
    for index in sorted(by_round):
        ours = cpu_per_token_us(by_round[index].get(target))
        theirs = cpu_per_token_us(by_round[index].get(relay))
        ratios.append(None if ours is None or not theirs else ours / theirs)
    return ratios


def report(results: list[dict[str, Any]], gateways: list[str]) -> list[str]:
    """Per gateway: the median ratio to the minimal relay, judged; to the tuned relay, a reference."""
    lines = []
    for target in gateways:
        path = target.rpartition("-")[2]
        for relay, judged in ((f"baseline-{path}", True), (f"baseline-tuned-{path}", False)):
            ratios = ratios_by_round(results, target, relay)
            measured = [ratio for ratio in ratios if ratio is not None]
            if not measured:
                lines.append(f"{target} ÷ {relay}: no ratio (a load failed; see the log)")
                continue
            middle = median(measured)
            verdict = ("met" if middle <= _LIMITS[path] else "MISSED") if judged else "(reference)"
            each = ", ".join("–" if ratio is None else f"{ratio:.2f}" for ratio in ratios)
            lines.append(
                f"{target} ÷ {relay}: median {middle:.2f}× (range {min(measured):.2f}–{max(measured):.2f}, "
                f"{len(measured)} rounds: {each}), ≤ {_LIMITS[path]}×: {verdict}"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.per_token", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0, help="each measured load, after a 1 s warm-up")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--candidate", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "per_token")
    args = parser.parse_args(argv)
    candidates = parse_candidates(parser, args.candidate)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    raise_fd_limit()
    facts = machine_facts()
    started = time.monotonic()
    gateways = [f"{system}-{path}" for path in ("openai", "coze") for system in ("gateway", *candidates)]
    targets = [
        target
        for path in ("openai", "coze")
        for target in (f"baseline-{path}", f"baseline-tuned-{path}", *gateways)
        if target.endswith(path)
    ]
    stack = start_stack(out, candidates)
    try:
        results = run_loads(stack, round_runs(targets, args.rounds, args), out)
    finally:
        stack.stop()
    modified = " (+ local changes)" if facts.get("product_code_modified") else ""
    load_end = " ".join(Path("/proc/loadavg").read_text(encoding="ascii").split()[:3])
    lines = [
        f"{facts['date']} · commit {facts['commit']}{modified} · load average "
        f"{' '.join(facts['loadavg_start'])} → {load_end} · {time.monotonic() - started:.0f} s",
        *report(results, gateways),
    ]
    (out / "per_token.json").write_text(json.dumps({"machine": facts, "runs": results}, indent=2), encoding="utf-8")
    print("\n".join(lines))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
