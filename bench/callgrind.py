#!/usr/bin/env python3
"""Instructions per collection cycle, counted by valgrind's callgrind (steady where CPU time
is not: tick accounting here moves ±30 % between runs).

Runs target/release/examples/cycle (bench/cycle.rs: the collectors in one process, cycles
back to back) under callgrind with R1 and R2 rounds, for the seed's collectors and for all;
instructions per cycle = (Ir(R2) - Ir(R1)) / (R2 - R1), so start-up and the first collection
(which walks the cgroup tree in full) drop out. Then the functions with the most
instructions (self cost, from callgrind_annotate of the R2 run), as the profile summary.
The instructions are the process's own (user space); the kernel's work for the reads is
what bench/floor.c measures.

Usage: cargo build --release -p vigil-actors --example cycle && python3 bench/callgrind.py
       [--rounds 3 23] [--top 15] [--json FILE]
Needs: apt-get install valgrind
"""
import argparse, json, os, re, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "..", "target", "release", "examples", "cycle")

def run(rounds, mode, out):
    p = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", BIN, str(rounds), mode],
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"callgrind {mode} {rounds}: exit {p.returncode}\n{p.stderr[-2000:]}")
    m = re.search(r"Collected : (\d+)", p.stderr)
    return int(m.group(1))

def top(out, n):
    p = subprocess.run(["callgrind_annotate", "--threshold=100", out], capture_output=True, text=True)
    rows = []
    for line in p.stdout.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)", line)
        if m and not m.group(3).startswith("PROGRAM TOTALS"):
            rows.append((int(m.group(1).replace(",", "")), float(m.group(2)), m.group(3)[:140]))
        if len(rows) >= n:
            break
    return rows

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, nargs=2, default=[3, 23])
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json")
    a = ap.parse_args()
    r1, r2 = a.rounds
    d = tempfile.mkdtemp(prefix="vigil-callgrind-")
    res = {}
    for mode in ("seed", "all"):
        i1 = run(r1, mode, os.path.join(d, f"{mode}.{r1}"))
        i2 = run(r2, mode, os.path.join(d, f"{mode}.{r2}"))
        per = (i2 - i1) / (r2 - r1)
        res[mode] = {"instructions_per_cycle": per, "top": top(os.path.join(d, f"{mode}.{r2}"), a.top)}
        print(f"{mode}: {per:,.0f} instructions per cycle ({r1} and {r2} rounds)")
        for ir, pct, fn in res[mode]["top"]:
            print(f"  {pct:5.1f}%  {ir / r2:>12,.0f}/cycle  {fn}")
    if a.json:
        json.dump(res, open(a.json, "w"), indent=2)

if __name__ == "__main__":
    main()
