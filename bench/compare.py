#!/usr/bin/env python3
"""Benchmark swim-as against the reference peer, in one run, on one machine.

It copies the shared benchmark kit (``../shared/bench``: load generator, test
PKI generator, the oidc-provider peer), installs what the kit needs, makes a
PKI with 64 workload SVIDs, configures swim-as for the same job (mTLS
``tls_client_auth`` client_credentials, ES256 tokens bound to the certificate,
the 64 workloads registered), starts swim-as pinned to CPU 0 like the kit
pins the peer, and runs the kit's interleaved matrix over both targets with
the load generator on CPU 1. It prints the kit's medians and the ratio
swim-as / peer per scenario, and writes them to ``bench/results/``.

    python3 bench/compare.py                      # 5 runs x ka16,ka64,nc16,nc64
    python3 bench/compare.py --runs 3 --scenarios ka16,ka64

Everything listens on 127.0.0.1; every load loop has a duration and a hard
time cap (the kit's load.py refuses non-loopback targets).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_KIT = ROOT.parent / "shared" / "bench"
PORT = 9450


def run(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def prepare_kit(kit_src: Path, work: Path) -> Path:
    kit = work / "kit"
    if not (kit / "venv" / "bin" / "python").exists():
        shutil.rmtree(kit, ignore_errors=True)
        shutil.copytree(
            kit_src,
            kit,
            ignore=shutil.ignore_patterns("results", "node_modules", "venv", "pki"),
        )
        for path in kit.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
        run([sys.executable, "-m", "venv", str(kit / "venv")])
        run(
            [
                str(kit / "venv/bin/pip"),
                "install",
                "-q",
                "-r",
                str(kit / "requirements.txt"),
            ]
        )
    if not (kit / "peer" / "node_modules").exists():
        run(["npm", "ci", "--silent", "--no-audit", "--no-fund"], cwd=kit / "peer")
    if not (kit / "pki" / "clients.json").exists():
        run(
            [
                str(kit / "venv/bin/python"),
                str(kit / "gen_pki.py"),
                str(kit / "pki"),
                "--clients",
                "64",
            ],
            cwd=kit,
        )
    return kit


def configure_swim_as(kit: Path, work: Path) -> Path:
    state = work / "swim-as"
    state.mkdir(parents=True, exist_ok=True)
    kek = state / "kek"
    if not kek.exists():
        kek.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        kek.chmod(0o600)
    db = state / "bench.db"
    db.unlink(missing_ok=True)
    config = state / "swim-as.toml"
    config.write_text(f"""
issuer = "https://127.0.0.1:{PORT}"
[server]
host = "127.0.0.1"
port = {PORT}
[tls]
cert_file = "{kit / "pki/server.pem"}"
key_file = "{kit / "pki/server.key.pem"}"
[database]
url = "sqlite+aiosqlite:///{db}"
[[trust_domains]]
name = "example.org"
bundle_file = "{kit / "pki/ca.pem"}"
[keys]
encryption_key_file = "{kek}"
[tokens]
default_audience = "https://api.example.org"
lifetime_seconds = 300
[logging]
level = "WARNING"
""")
    return config


def register_clients(swim: Path, config: Path, kit: Path) -> None:
    manifest = json.loads((kit / "pki" / "clients.json").read_text())
    ids = [c["spiffe_id"] for c in manifest["clients"]]
    run([str(swim), "migrate", "--config", str(config)])
    subprocess.run(
        [str(swim), "clients", "add", "--quiet", "--config", str(config), *ids],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"swim-as exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("swim-as did not open its port")


def summarise(raw: Path, since: int, out: Path) -> str:
    rows = [json.loads(line) for line in raw.read_text().splitlines()[since:]]
    by: dict[tuple[str, str], list[dict[str, float]]] = {}
    for row in rows:
        target, scenario = row["label"].split("/")[:2]
        by.setdefault((target, scenario), []).append(row)
    lines = [
        "| scenario | swim-as req/s (min–max) | peer req/s (min–max) | ratio | "
        "swim-as p99 ms | peer p99 ms | errors / invalid (swim-as, peer) |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario in dict.fromkeys(s for _, s in by):
        ours, peer = by.get(("url", scenario), []), by.get(("peer", scenario), [])
        if not ours or not peer:
            continue

        def med(rs: list[dict[str, float]], key: str) -> float:
            return statistics.median(r[key] for r in rs)

        def span(rs: list[dict[str, float]]) -> str:
            return f"{min(r['rps'] for r in rs):.0f}–{max(r['rps'] for r in rs):.0f}"

        lines.append(
            f"| {scenario} | {med(ours, 'rps'):.0f} ({span(ours)}) | "
            f"{med(peer, 'rps'):.0f} ({span(peer)}) | "
            f"**{med(ours, 'rps') / med(peer, 'rps'):.2f}** | "
            f"{med(ours, 'p99_ms'):.1f} | "
            f"{med(peer, 'p99_ms'):.1f} | "
            f"{sum(r['errors'] for r in ours)}/{sum(r['invalid'] for r in ours)}, "
            f"{sum(r['errors'] for r in peer)}/{sum(r['invalid'] for r in peer)} |"
        )
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "summary.md").open("a") as handle:
        handle.write(f"\n<!-- {time.strftime('%Y-%m-%d %H:%M:%S')} -->\n{table}\n")
    return table


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--kit",
        type=Path,
        default=DEFAULT_KIT,
        help="the shared benchmark kit (default ../shared/bench)",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".work")
    parser.add_argument(
        "--swim-as",
        type=Path,
        default=ROOT / ".venv" / "bin" / "swim-as",
        help="the swim-as executable to measure",
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scenarios", default="ka16,ka64,nc16,nc64")
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()

    if not args.swim_as.exists():
        raise SystemExit(f"{args.swim_as} not found: install swim-as first (README)")
    work = args.work.resolve()
    kit = prepare_kit(args.kit.resolve(), work)
    config = configure_swim_as(kit, work)
    register_clients(args.swim_as, config, kit)

    log = (work / "swim-as.log").open("ab")
    server = subprocess.Popen(
        ["taskset", "-c", "0", str(args.swim_as), "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    raw = kit / "results" / "raw.jsonl"
    since = len(raw.read_text().splitlines()) if raw.exists() else 0
    try:
        wait_ready(server, PORT)
        run(
            [
                str(kit / "venv/bin/python"),
                str(kit / "bench_matrix.py"),
                "--targets",
                "url,peer",
                "--url",
                f"https://127.0.0.1:{PORT}/token",
                "--server-pid",
                str(server.pid),
                "--runs",
                str(args.runs),
                "--scenarios",
                args.scenarios,
                "--duration",
                str(args.duration),
                "--load-args",
                "--expect-alg ES256",
            ],
            cwd=kit,
        )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    table = summarise(raw, since, ROOT / "bench" / "results")
    print(
        "\nswim-as against the peer (medians of interleaved runs, 1 pinned core each):"
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
