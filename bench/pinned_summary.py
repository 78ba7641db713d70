"""Medians of the pinned benchmarks' result lines (bench/pinned-lib.sh's
`pinned_run`: scenario, variant, req/s, p99, CPU us/req, non-2xx), each set
beside its baseline's.

Usage: python3 bench/pinned_summary.py RESULTS BASELINE
BASELINE names each row's baseline as "scenario:variant", where "{s}" is the
row's scenario, "{s0}" its part before the first "/", and "{v1}" its
variant's part after the first "/": "{s}:plain/{v1}" (bench/layer.sh),
"{s0}/payments:ordinary" (bench/transactional.sh).
"""
import statistics
import sys


def num(s):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * f
    return float(s)


def main(path, baseline):
    groups = {}
    for line in open(path):
        scen, var, rps, p99, us, non2xx = line.rstrip("\n").split("\t")
        groups.setdefault((scen, var), []).append((float(rps), num(p99), float(us), int(non2xx)))
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in groups.items()}
    print("\nmedians\nscenario\tvariant\treq/s\tp99(ms)\tcpu-us/req\tnon-2xx\tvs baseline (req/s, cpu)")
    for (scen, var), v in sorted(groups.items()):
        rps, p99, us = med[(scen, var)]
        fields = {"s": scen, "s0": scen.split("/")[0], "v1": var.partition("/")[2]}
        base = tuple(baseline.format(**fields).split(":", 1))
        ratio = ""
        if base in med and base != (scen, var):
            ratio = f"{rps / med[base][0]:.2f}x, {us / med[base][2]:.2f}x"
        print(f"{scen}\t{var}\t{rps:.0f}\t{p99:.2f}\t{us:.2f}\t{sum(x[3] for x in v)}\t{ratio}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
