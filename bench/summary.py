"""Medians of the runs bench/wrk-lib.sh recorded, each against the first
variant named (the baseline). Usage: summary.py RESULTS BASELINE VARIANT..."""
import collections
import statistics
import sys

path, variants = sys.argv[1], sys.argv[2:]
rows = [line.rstrip("\n").split("\t") for line in open(path)]


def ms(s):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * f
    return float(s)


rps = collections.defaultdict(list)
p99 = collections.defaultdict(list)
for sc, var, r, p, _ in rows:
    rps[(sc, var)].append(float(r))
    p99[(sc, var)].append(ms(p))
base = variants[0]
print("\nmedians of %d runs" % len(rps[("first", base)]))
print(f"| scenario | variant | req/s | p99 ms | req/s vs {base} | p99 vs {base} |")
print("|---|---|---|---|---|---|")
for sc in ("first", "replay"):
    base_r = statistics.median(rps[(sc, base)])
    base_p = statistics.median(p99[(sc, base)])
    for var in variants:
        if (sc, var) not in rps:
            continue
        r = statistics.median(rps[(sc, var)])
        p = statistics.median(p99[(sc, var)])
        print(f"| {sc} | {var} | {r:,.0f} | {p:.2f} | {r / base_r:.2f}x | {p / base_p:.2f}x |")
print("\nper run, req/s vs %s (runs paired in the order they ran)" % base)
for sc in ("first", "replay"):
    for var in variants[1:]:
        if (sc, var) not in rps:
            continue
        pairs = zip(rps[(sc, var)], rps[(sc, base)])
        print(f"  {sc:6} {var:18} " + ", ".join(f"{a / b:.2f}" for a, b in pairs))
