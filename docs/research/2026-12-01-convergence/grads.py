#!/usr/bin/env python3
"""Per-gate gradient scale from Adam moments in gates.json vs the sparsity gradient implied by the log.
usage: grads.py NAME"""
import json, sys, csv, os, math
C0 = math.log(11)
def sprime(z, mu):
    m = max(z, 0.0); x = (m - mu) * C0 / mu; x = max(min(x, 60), -60)
    sg = 1 / (1 + math.exp(-x)); return 1.2 * sg * (1 - sg) * C0 / mu
def s_of(z, mu):
    m = max(z, 0.0); x = (m - mu) * C0 / mu; x = max(min(x, 60), -60)
    return min(max(1.2 / (1 + math.exp(-x)) - 0.1, 0.0), 1.0)
name = sys.argv[1]
at = os.path.realpath(f"/tmp/i13/out/{name}/anneal-train")
g = json.load(open(os.path.join(at, "gates.json")))
log = list(csv.DictReader(open(os.path.join(at, "train_log.csv"))))
T = g["step"]; b1, b2 = 0.9, 0.999
for f in g["families"]:
    ms = [x for mo in f["z_moments"] for x in mo["m"]]
    vs = [x for mo in f["z_moments"] for x in mo["v"]]
    zs = [z for l in f["z"] for z in l]
    n = len(zs)
    rms = [math.sqrt(v / (1 - b2 ** T)) for v in vs]
    mh = [m / (1 - b1 ** T) for m in ms]
    rms.sort()
    med = rms[n // 2]
    snr = sorted(abs(a) / (r + 1e-30) for a, r in zip(mh, [math.sqrt(v / (1 - b2 ** T)) for v in vs]))
    print(f"{f['name']:8s} N={n:6d} per-gate grad RMS (Adam v-hat, all steps): median {med:.2e} p10 {rms[n//10]:.2e} p90 {rms[9*n//10]:.2e};  |m-hat|/rms median {snr[n//2]:.3f}")
    fam = [r for r in log if r["family"] == f["name"]]
    for r in fam[:: max(1, len(fam) // 10)] + [fam[-1]]:
        mu = float(r["mu"]); q = float(r["expected_sparsity"]); l1, l2, l3 = float(r["lambda1"]), float(r["lambda2"]), float(r["lambda3"])
        lin = -l1 - 2 * l2 * (q - f["target"])
        c1 = sprime(1.0, mu) / n * (lin - l3)
        c5 = sprime(0.5, mu) / n * (lin - l3 * (1 - 2 * s_of(0.5, mu)))
        print(f"   step {r['step']:>4} mu {mu:.3f}  push(-l1-2l2(q-a))={lin:7.3f} l3={l3:6.3f}  g_sp at z=1: {c1:+.2e}  at z=0.5: {c5:+.2e}  (ratio to median task RMS: {c1/med:+.3f}, {c5/med:+.3f})")
