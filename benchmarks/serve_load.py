"""Load test of the HTTP server: throughput and latency with and without dynamic batching, then overload.

    python benchmarks/serve_load.py [ARTIFACT] [--model smollm2-135m-instruct] [--clients 32] [--requests 256]
                                    [--max-new-tokens 32] [--threads N] [--rounds 1] [--overload-requests 1000]
                                    [--overload-queue 8] [--timeout 900]

Without ARTIFACT the server runs the embedded base model (``--model``); with it, that fine-tuned
artifact (``make demo`` writes runs/demo). Each phase starts its own server with
``python -m finetune_sdk.serve`` on 127.0.0.1, waits for /ping, fires the requests from a thread pool,
and stops the server; ``--rounds N`` runs N batching/no-batching pairs interleaved, so a change in
the machine's other load hits both arms alike. Questions are the held-out split of the bundled counsel-sample data (the same
split ``make demo`` evaluates on), cycled as needed. Every loop is counted and the run has an overall
deadline, so it always ends.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import httpx

from finetune_sdk.data import load_rows, split_rows


@dataclass
class PhaseResult:
    name: str
    requests: int
    statuses: Counter
    seconds: float
    latencies: list[float]  # of the 200 answers
    peak_rss_mb: float
    cpu_seconds: float  # the server's user + system CPU time during the phase
    load: float  # the machine's 1-minute load average at the end of the phase

    @property
    def cpu_per_answer(self) -> float:
        """Server CPU seconds per 200 answer: less sensitive than wall time to other load on the machine."""
        return self.cpu_seconds / self.statuses[200] if self.statuses.get(200) else float("nan")

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500 or status < 0)

    @property
    def throughput(self) -> float:
        return self.statuses.get(200, 0) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class ServerProcess:
    """``python -m finetune_sdk.serve`` on a free loopback port, stopped (then killed) on exit."""

    def __init__(self, target: Sequence[str], flags: Sequence[str], startup_timeout: float) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "finetune_sdk.serve", *target, "--host", "127.0.0.1",
                        "--port", str(self.port), "--log-level", "warning", *flags]
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "ServerProcess":
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}:\n{self.process.stderr.read()}")
            try:
                if httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise SystemExit(f"the server did not answer /ping within {self.startup_timeout:.0f} s")

    def __exit__(self, *exc: Any) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


class RssSampler:
    """The server's peak resident memory, sampled every 0.2 s in a background thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_bytes = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_bytes = max(self.peak_bytes, _rss_bytes(self.pid))


def _rss_bytes(pid: int) -> int:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        pass
    except Exception:
        return 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def held_out_questions() -> list[str]:
    _, held_out = split_rows(load_rows("counsel-sample"), 0.2, 0, "topic")
    return [row["questionText"] for row in held_out]


def run_phase(name: str, target: Sequence[str], flags: Sequence[str], questions: list[str], *, clients: int,
              requests: int, max_new_tokens: int, deadline: float, startup_timeout: float) -> PhaseResult:
    """Start a server, send ``requests`` requests from ``clients`` threads, stop it, and measure."""
    statuses: Counter = Counter()
    latencies: list[float] = []
    lock = threading.Lock()

    def one(i: int, client: httpx.Client) -> None:
        body = {"inputs": questions[i % len(questions)], "parameters": {"max_new_tokens": max_new_tokens}}
        started = time.monotonic()
        remaining = deadline - started
        if remaining <= 0:
            status = -1  # the overall deadline passed; counted, not sent
        else:
            try:
                status = client.post(f"{server.url}/invocations", json=body, timeout=remaining).status_code
            except httpx.HTTPError:
                status = -1
        with lock:
            statuses[status] += 1
            if status == 200:
                latencies.append(time.monotonic() - started)

    with ServerProcess(target, flags, startup_timeout) as server, RssSampler(server.process.pid) as rss:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        with httpx.Client(limits=limits) as client, ThreadPoolExecutor(clients) as pool:
            started, cpu_started = time.monotonic(), _cpu_seconds(server.process.pid)
            list(pool.map(lambda i: one(i, client), range(requests)))
            seconds, cpu = time.monotonic() - started, _cpu_seconds(server.process.pid) - cpu_started
        alive = httpx.get(f"{server.url}/ping", timeout=10).status_code == 200
        if not alive:
            print(f"warning: {name}: the server stopped answering /ping", file=sys.stderr)
    return PhaseResult(name, requests, statuses, seconds, latencies, rss.peak_bytes / 2**20, cpu, os.getloadavg()[0])


def print_table(results: list[PhaseResult]) -> None:
    print(f"{'phase':<22}{'requests':>9}{'200':>6}{'5xx':>6}{'req/s':>8}{'p50 s':>8}{'p99 s':>8}"
          f"{'CPU s/req':>10}{'peak RSS MB':>13}{'load':>6}  statuses")
    for r in results:
        print(f"{r.name:<22}{r.requests:>9}{r.statuses.get(200, 0):>6}{r.server_errors:>6}{r.throughput:>8.2f}"
              f"{r.percentile(0.5):>8.2f}{r.percentile(0.99):>8.2f}{r.cpu_per_answer:>10.2f}{r.peak_rss_mb:>13.0f}{r.load:>6.1f}  "
              f"{dict(sorted(r.statuses.items()))}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", nargs="?", default=None, help="a fine-tuned artifact directory to serve "
                        "instead of the base model")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the base model served without ARTIFACT")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=None, help="the server's default unless given")
    parser.add_argument("--threads", type=int, default=None, help="the server's --threads (torch CPU threads), "
                        "the same in every phase; default: torch's choice")
    parser.add_argument("--rounds", type=int, default=1, help="batching/no-batching pairs, run interleaved (0: "
                        "only the overload phase)")
    parser.add_argument("--overload-requests", type=int, default=1000, help="0 skips the overload phase")
    parser.add_argument("--overload-queue", type=int, default=8, help="--max-queue of the overload server")
    parser.add_argument("--startup-timeout", type=float, default=180)
    parser.add_argument("--timeout", type=float, default=900, help="overall deadline in seconds")
    args = parser.parse_args(argv)
    if args.artifact is not None and not Path(args.artifact).is_dir():
        print(f"error: no artifact at {args.artifact}; run `make demo` to train runs/demo (a few minutes on CPU), "
              "pass the directory of another artifact, or leave it out to serve the base model", file=sys.stderr)
        return 2
    target = [args.artifact] if args.artifact is not None else ["--model", args.model]
    target += ["--threads", str(args.threads)] if args.threads else []
    batch_flags = ["--max-batch-size", str(args.max_batch_size)] if args.max_batch_size else []
    deadline = time.monotonic() + args.timeout
    questions = held_out_questions()
    common = dict(questions=questions, clients=args.clients, max_new_tokens=args.max_new_tokens,
                  deadline=deadline, startup_timeout=args.startup_timeout)
    print(f"{args.artifact or args.model}; {args.clients} clients, {args.requests} requests, max_new_tokens "
          f"{args.max_new_tokens}, {len(questions)} held-out questions, {os.cpu_count()} CPUs, server threads {args.threads or 'default'}, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    batched, single = [], []
    for _ in range(args.rounds):
        batched.append(run_phase("batching", target, batch_flags, requests=args.requests, **common))
        single.append(run_phase("no batching", target, ["--no-batching"], requests=args.requests, **common))
    results = [r for pair in zip(batched, single) for r in pair]
    if args.overload_requests > 0:
        overload = {**common, "clients": max(args.clients, 64)}
        results.append(run_phase(f"overload (queue {args.overload_queue})", target,
                                 ["--max-queue", str(args.overload_queue), *batch_flags],
                                 requests=args.overload_requests, **overload))
    print_table(results)
    on, off = _throughput(batched), _throughput(single)
    if off:
        cpu_on = sum(r.cpu_seconds for r in batched) / max(1, sum(r.statuses.get(200, 0) for r in batched))
        cpu_off = sum(r.cpu_seconds for r in single) / max(1, sum(r.statuses.get(200, 0) for r in single))
        print(f"batching speed-up: {on / off:.2f}x throughput ({on:.2f} vs {off:.2f} req/s over {args.rounds} "
              f"round(s)), {cpu_off / cpu_on:.2f}x less server CPU per answer")
    return 0


def _throughput(phases: list[PhaseResult]) -> float:
    """Answers per second over all the phases of one arm together."""
    seconds = sum(r.seconds for r in phases)
    return sum(r.statuses.get(200, 0) for r in phases) / seconds if seconds else 0.0


if __name__ == "__main__":
    sys.exit(main())
