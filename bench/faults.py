"""The fault suite's long forms (tests/faults), with a report: each scenario, the
invariant it checks, the outcome and how long it took, in results/faults.{json,md}.

    .venv/bin/python bench/faults.py [--cycles 100] [--pause 30] [--loss 600]

The same tests as ``make test`` runs, with longer faults: more kill -9 cycles, a 30 s
SIGSTOP, ten minutes of 1 % packet loss. Needs root (network namespaces, a tmpfs) and
nftables, as the tests do; what cannot run is reported as skipped with its reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

SCENARIOS = {
    "test_crash_cycles.py": "kill -9 of a SQLite server during concurrent acknowledged "
    "writes, N cycles: no acknowledged write lost, revisions never go backwards",
    "test_disk_full.py": "the SQLite disk fills up: 507 with a clear message, reads go on, "
    "writes resume when space returns, integrity_check ok after a restart",
    "test_agent_partition.py": "an agent cut off longer than its node TTL: critical after "
    "the TTL, back to passing once healed within one sync interval, no duplicate",
    "test_pause.py": "SIGSTOP of a server past every lease's TTL: the guard holds the "
    "wave, live leases are renewed, only the dead one goes",
    "test_mass_expiry.py": "the registry cut off from every agent for 3 TTLs: held, "
    "nothing deleted, /status says so; a single failed node still goes on time",
    "test_packet_loss.py": "1 % packet loss agents <-> registry: no false deregistration, "
    "no status flap with the default thresholds",
    "test_etcd_partition.py": "etcd member cut off (leader, or a follower with its own "
    "Waypost server): no acknowledged write lost, the cut-off side acknowledges none, "
    "revisions never go backwards for a client",
    "test_clock_jump.py": "the server's wall clock jumps +2h and back: nothing expires "
    "early or late (deadlines on the monotonic clock)",
    "test_actor_partition.py": "actor network cut off from its peer mid-stream: every "
    "acknowledged message handled once, none twice",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=100, help="kill -9 cycles")
    ap.add_argument("--pause", type=float, default=30.0, help="SIGSTOP seconds")
    ap.add_argument("--loss", type=float, default=600.0, help="seconds of 1 %% packet loss")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    junit = RESULTS / ".faults-junit.xml"
    env = {
        **os.environ,
        "WAYPOST_FAULT_CYCLES": str(args.cycles),
        "WAYPOST_FAULT_PAUSE_S": str(args.pause),
        "WAYPOST_FAULT_LOSS_S": str(args.loss),
    }
    started = time.time()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/faults",
         f"--junitxml={junit}", "-o", "junit_family=xunit1",
         "-o", f"timeout={int(args.loss + args.pause + 600)}"],
        cwd=ROOT, env=env, check=False,
    )  # fmt: skip
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        file = Path(case.get("file") or case.get("classname", "").replace(".", "/")).name
        file = file if file.endswith(".py") else file + ".py"
        outcome = "passed"
        detail = ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "skipped" if tag == "skipped" else "FAILED"
                detail = (
                    (node.get("message") or "").splitlines()[0][:160] if node.get("message") else ""
                )
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        rows.append(
            {
                "scenario": case.get("name", ""),
                "recovery_s": props.get("recovery_s", ""),
                "file": file,
                "invariant": SCENARIOS.get(file, ""),
                "outcome": outcome,
                "seconds": round(float(case.get("time", "0")), 1),
                "detail": detail,
            }
        )
    junit.unlink(missing_ok=True)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "settings": vars(args),
        "scenarios": rows,
    }
    (RESULTS / "faults.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Fault suite, long forms",
        "",
        f"Run {report['date']}: {args.cycles} kill -9 cycles, a {args.pause:g} s SIGSTOP, "
        f"{args.loss:g} s of 1 % packet loss (`bench/faults.py`).",
        "",
        "| scenario | invariant | outcome | time to recover (s) | run (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        extra = f" ({r['detail']})" if r["detail"] else ""
        lines.append(
            f"| `{r['scenario']}` | {r['invariant']} | {r['outcome']}{extra} | "
            f"{r['recovery_s'] or '-'} | {r['seconds']} |"
        )
    (RESULTS / "faults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if any(r["outcome"] == "FAILED" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
