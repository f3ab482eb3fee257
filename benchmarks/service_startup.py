"""Start-up time of ``metaprune client`` against a bare ``import grpc`` (target <= 4x).

    .venv/bin/python benchmarks/service_startup.py [--repeats 7] [--repo PATH]

Each command runs in a fresh interpreter (``python -c ...``, the repository at ``--repo``
first on ``PYTHONPATH``; default this checkout) ``--repeats`` times; the table gives the
median wall time and its ratio to ``import grpc``. The client commands are the CLI's real
dispatch (``metaprune.cli.main``), so plugin loading and argument parsing are included;
``client info`` / ``client jobs`` run against a real ``metaprune serve`` started by the
benchmark (its admin token), so they include the calls. Run it with ``--repo`` pointing at another checkout to compare (e.g. before/after).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COMMANDS = {
    "import grpc (baseline)": "import grpc",
    "import service.client": "import service.client",
    "metaprune client --help": "from metaprune.cli import main; main(['client', '--help'])",
    "metaprune client prune --help": (
        "from metaprune.cli import main; main(['client', 'prune', '--help'])"
    ),
    "metaprune --help (all plugins)": "from metaprune.cli import main; main(['--help'])",
}
#: against a real ``metaprune serve`` (started once by the benchmark; {address} filled in)
WITH_SERVER = {
    "metaprune client info (real server)": (
        "from metaprune.cli import main; main(['client', 'info', '--address', '{address}'])"
    ),
    "metaprune client jobs (real server)": (
        "from metaprune.cli import main; main(['client', 'jobs', '--address', '{address}'])"
    ),
}


def _time(code: str, repo: Path, repeats: int, **env_extra: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(repo), **env_extra}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, cwd=repo, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--repo", type=Path, default=REPO)
    args = parser.parse_args()
    rows = {name: _time(code, args.repo, args.repeats) for name, code in COMMANDS.items()}
    sys.path.insert(0, str(REPO))
    from service.process import serve_process

    with tempfile.TemporaryDirectory() as tmp:
        server = serve_process(Path(tmp) / "data")
        try:
            token = (Path(tmp) / "data" / "admin.token").read_text().strip()
            for name, code in WITH_SERVER.items():
                code = code.replace("{address}", server.address)
                rows[name] = _time(code, args.repo, args.repeats, METAPRUNE_TOKEN=token)
        finally:
            server.terminate()
    base = rows["import grpc (baseline)"]
    print(f"repo {args.repo}, median of {args.repeats} fresh interpreters, {os.cpu_count()} CPUs")
    print(f"| {'command':<46} | {'median s':>8} | {'x import grpc':>13} |")
    print(f"| {'-' * 46} | {'-' * 7}: | {'-' * 12}: |")
    for name, seconds in rows.items():
        print(f"| {name:<46} | {seconds:8.2f} | {seconds / base:13.1f} |")


if __name__ == "__main__":
    main()
