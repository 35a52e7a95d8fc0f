"""`make bench`: every benchmark in sequence, results in bench-output/*.json and bench-output/summary.md.

Run on an otherwise idle machine: the benchmarks time wall-clock work on all cores.

    .venv/bin/python benchmarks/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE.parent / "bench-output"


def run(script: str, *args: str) -> None:
    print(f"\n=== {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True, cwd=HERE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 16384 px memory run and the paper-preset training")
    parser.add_argument("--peers", action="store_true", help="also run bench_peers.py at 1 and 0.1 photons/px (needs `make bench-peers`'s environment; about 80 min)")
    args = parser.parse_args()
    run("bench_throughput.py")
    run("bench_memory.py", "--size", "4096", *([] if args.quick else ["--size", "16384"]))
    if not args.quick:
        run("bench_quality.py", "--preset", "paper", "--level", "1", "--steps", "600")
    run("bench_quality.py", "--preset", "default", "--level", "1", "--steps", "600")
    run("bench_sampling.py", "--images", "1" if args.quick else "2")
    if args.peers:
        run("bench_peers.py", "--level", "1", "--budget", "20")
        run("bench_peers.py", "--level", "0.1", "--budget", "20")
    lines = ["# photongap benchmarks", ""]
    for path in sorted(OUTPUT.glob("*.json")):
        lines += [f"## {path.stem}", "", "```json", json.dumps(json.loads(path.read_text()), indent=1), "```", ""]
    (OUTPUT / "summary.md").write_text("\n".join(lines))
    print(f"\nsummary: {OUTPUT / 'summary.md'}")


if __name__ == "__main__":
    main()
