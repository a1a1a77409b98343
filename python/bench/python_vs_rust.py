"""Search latency through fanout's root over Python leaves and mergers against Rust ones.

    .venv/bin/python python/bench/python_vs_rust.py --fanout target/release/fanout \\
        [--rate 20] [--duration 10s] [--rounds 3] [--out target/bench-python]

One run, four variants on the same corpus (BEIR SciFact, 5,183 abstracts), the same 2
shards of one replica each and the same queries (SciFact's 1,109 claims, shuffled):

    leaves   merger
    Rust     Rust      fanout leaf (tantivy, exact global BM25) + fanout merger
    Rust     Python    fanout leaf + fanout_py.topk_merger
    Python   Rust      fanout_py.sqlite_leaf (SQLite FTS5) + fanout merger
    Python   Python    fanout_py.sqlite_leaf + fanout_py.topk_merger

Every process starts once; each variant is its own `fanout root` over its leaves and
merger, all four running for the whole run. The load is `fanout loadgen run --target
search` (open loop, latency from each request's intended send time, see
loadgen/REPORT_SCHEMA.md), the variants interleaved round after round (A B C D A B C D
...), so that the machine's drift hits them alike. The table gives each variant's
median over the rounds of p50 and p99, and their ratios to Rust + Rust.

The two leaf kinds score differently (the SQLite leaf's bm25 is local to its shard), so
the hits differ; the work per query is of the same kind (an OR of the query's words
over title and text, top 10, then the stored titles of the winners). Reports, logs and
summary.md land in --out.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON_DIR = REPO / "python"
sys.path.insert(0, str(PYTHON_DIR))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

SCIFACT = REPO / "data" / "beir-scifact"
ANNOUNCE = re.compile(r"^fanout (\w+) listening on (\S+)$")
START_LIMIT_S = 120.0
VARIANTS = [
    ("rust-leaves+rust-merger", "rust", "rust"),
    ("rust-leaves+python-merger", "rust", "python"),
    ("python-leaves+rust-merger", "python", "rust"),
    ("python-leaves+python-merger", "python", "python"),
]


class Child:
    """One service: started, its announce line read, its stderr in a log file."""

    def __init__(self, name: str, command, role: str, logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR), PYTHONUNBUFFERED="1", NO_COLOR="1")
        self.process = subprocess.Popen(
            [str(part) for part in command], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        lines: "queue.Queue" = queue.Queue()

        def pump() -> None:
            for line in self.process.stdout:
                lines.put(line.strip())
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + START_LIMIT_S
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise SystemExit(f"{name} did not announce its address; see {self.log_path}")
            match = ANNOUNCE.match(line)
            if match and match.group(1) == role:
                self.address = match.group(2)
                return

    def wait_serving(self, service: str) -> None:
        deadline = time.monotonic() + START_LIMIT_S
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise SystemExit(f"{self.name} is not SERVING {service!r}; see {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", text)
    if not match:
        raise argparse.ArgumentTypeError("a duration such as 500ms or 10s")
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value


def scifact_with_ids(path: Path) -> None:
    """SciFact as the SQLite leaf reads it: `id` for BEIR's `_id`."""
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as source, \
            open(path, "w", encoding="utf-8") as out:
        for line in source:
            document = json.loads(line)
            out.write(json.dumps({"id": document["_id"], "title": document.get("title", ""),
                                  "text": document.get("text", "")}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fanout", default=str(REPO / "target" / "release" / "fanout"))
    parser.add_argument("--rate", type=float, default=20.0, help="requests a second")
    parser.add_argument("--duration", type=parse_duration, default=10.0, help="measured per run")
    parser.add_argument("--warmup", type=parse_duration, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "target" / "bench-python"))
    parser.add_argument("--summarize", action="store_true",
                        help="run nothing: write the table again from the reports in --out")
    args = parser.parse_args()
    if args.summarize:
        out = Path(args.out).resolve()
        reports = {name: [json.loads(path.read_text())
                          for path in sorted(out.glob(f"round-*-{name}.json"),
                                              key=lambda path: int(path.name.split("-")[1]))]
                   for name, _, _ in VARIANTS}
        if not all(reports.values()):
            raise SystemExit(f"no reports of every variant in {out}")
        write_summary(out, args, reports)
        return
    fanout = Path(args.fanout).resolve()
    if not os.access(fanout, os.X_OK):
        raise SystemExit(f"no fanout binary at {fanout}: cargo build --release -p fanout")
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    logs = out / "logs"
    logs.mkdir(parents=True)

    print(f"==> index and corpus in {out}", flush=True)
    index = out / "index"
    subprocess.run([fanout, "index", "--input", SCIFACT / "corpus.jsonl.gz", "--id-field", "_id",
                    "--shards", "2", "--out", index, "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    corpus = out / "scifact.jsonl"
    scifact_with_ids(corpus)

    children = []
    try:
        def start(name, command, role, service):
            child = Child(name, command, role, logs)
            children.append(child)
            child.wait_serving(service)
            return child

        python = sys.executable
        leaves = {
            "rust": [start(f"rust-leaf-{i}", [fanout, "leaf", "--shard-dir", index / f"shard-{i}",
                                               "--listen", "127.0.0.1:0", "--log-format", "text"],
                           "leaf", "fanout.v1.Leaf") for i in range(2)],
            "python": [start(f"python-leaf-{i}", [python, "-m", "fanout_py.sqlite_leaf", "--corpus",
                                                   corpus, "--shard-id", i, "--shard-count", 2,
                                                   "--listen", "127.0.0.1:0"],
                             "leaf", "fanout.v1.Leaf") for i in range(2)],
        }
        mergers = {
            "rust": start("rust-merger", [fanout, "merger", "--listen", "127.0.0.1:0",
                                          "--log-format", "text"], "merger", "fanout.v1.Merger"),
            "python": start("python-merger", [python, "-m", "fanout_py.topk_merger",
                                              "--listen", "127.0.0.1:0"], "merger", "fanout.v1.Merger"),
        }
        roots = {}
        for name, leaf_kind, merger_kind in VARIANTS:
            command = [fanout, "root", "--listen", "127.0.0.1:0", "--log-format", "text",
                       "--merger", f"http://{mergers[merger_kind].address}"]
            for shard, leaf in enumerate(leaves[leaf_kind]):
                command += ["--shard", f"{shard}={leaf.address}"]
            roots[name] = start(f"root-{name}", command, "root", "fanout.search.v1.Search")

        reports = {name: [] for name, _, _ in VARIANTS}
        for round_number in range(1, args.rounds + 1):
            for name, _, _ in VARIANTS:
                report_path = out / f"round-{round_number}-{name}.json"
                print(f"==> round {round_number}/{args.rounds}: {name}", flush=True)
                subprocess.run(
                    [fanout, "loadgen", "run", "--target", "search", "--addr", roots[name].address,
                     "--rate", str(args.rate), "--arrivals", "poisson", "--seed", str(round_number),
                     "--duration", f"{int(args.duration * 1000)}ms",
                     "--warmup", f"{int(args.warmup * 1000)}ms",
                     "--queries", SCIFACT / "queries.jsonl", "--order", "shuffled", "-k", "10",
                     "--label", name, "--json", report_path, "--no-progress"],
                    check=True, stdout=subprocess.DEVNULL,
                )
                reports[name].append(json.loads(report_path.read_text()))
    finally:
        for child in reversed(children):
            child.stop()

    write_summary(out, args, reports)


def write_summary(out: Path, args, reports) -> None:
    def median_ms(name, field):
        return statistics.median(r["latency"][field] for r in reports[name]) / 1000.0

    base_p50 = median_ms(VARIANTS[0][0], "p50_us")
    base_p99 = median_ms(VARIANTS[0][0], "p99_us")
    first = reports[VARIANTS[0][0]][0]
    rate = first["load"]["target_rps"]
    measured_s = (first["load"]["duration_ms"] or 0) / 1000
    lines = [
        f"SciFact, 2 shards x 1 replica, {rate:g} req/s Poisson, {measured_s:g} s measured a run, "
        f"{len(reports[VARIANTS[0][0]])} rounds interleaved; p50 and p99 are medians over the rounds.",
        "",
        "| leaves | merger | p50 | p99 | p50 ratio | p99 ratio | p99 per round (ms) | OK | errors | partial "
        "| behind schedule |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    summary = {}
    for name, leaf_kind, merger_kind in VARIANTS:
        runs = reports[name]
        p50, p99 = median_ms(name, "p50_us"), median_ms(name, "p99_us")
        per_round = ", ".join(f"{r['latency']['p99_us'] / 1000:.1f}" for r in runs)
        ok = sum(r["ok"] for r in runs)
        errors = sum(r["errors"] for r in runs)
        partial = sum(r["coverage"]["partial_responses"] for r in runs)
        behind = sum(1 for r in runs if r["generator"]["behind_schedule"])
        worst_lag = max(r["generator"]["launch_lag_p99_us"] for r in runs) / 1000
        lines.append(
            f"| {leaf_kind} | {merger_kind} | {p50:.2f} ms | {p99:.2f} ms | {p50 / base_p50:.2f}x | "
            f"{p99 / base_p99:.2f}x | {per_round} | {ok} | {errors} | {partial} | "
            f"{behind} of {len(runs)} runs (launch lag p99 up to {worst_lag:.1f} ms) |"
        )
        summary[name] = {"p50_ms": p50, "p99_ms": p99, "p50_ratio": p50 / base_p50,
                         "p99_ratio": p99 / base_p99, "ok": ok, "errors": errors,
                         "partial": partial, "runs_behind_schedule": behind}
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
