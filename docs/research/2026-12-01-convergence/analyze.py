#!/usr/bin/env python3
"""Summarise runs: python3 analyze.py NAME... (reads the cache via /tmp/i13/out/NAME)."""
import json, sys, csv, glob, os, math
C0 = math.log(11)
def s_of(z, mu):
    m = max(z, 0.0); x = (m - mu) * C0 / mu
    x = max(min(x, 60), -60)
    return min(max(1.2 / (1 + math.exp(-x)) - 0.1, 0.0), 1.0)
def find(name, kind):
    p = f"/tmp/i13/out/{name}/{kind}"
    return os.path.realpath(p) if os.path.exists(p) else None
def metrics(d):
    try: return json.load(open(os.path.join(d, "manifest.json")))["metrics"]
    except Exception: return {}
rows = []
for name in sys.argv[1:]:
    at = find(name, "anneal-train")
    if not at: print(name, "no anneal-train"); continue
    log = list(csv.DictReader(open(os.path.join(at, "train_log.csv"))))
    g = json.load(open(os.path.join(at, "gates.json")))
    last_mu = float(log[-1]["mu"])
    fam = {}
    for r in log:
        fam.setdefault(r["family"], []).append(r)
    out = {"name": name, "steps": len(fam["channels"])}
    for f in g["families"]:
        zs = [z for l in f["z"] for z in l]
        n = len(zs)
        le0 = sum(z <= 0 for z in zs) / n
        mid = sum(0 < z < 2 * last_mu for z in zs) / n
        ss = [s_of(z, last_mu) for z in zs]
        q_end = 1 - sum(ss) / n
        b_end = sum(s * (1 - s) for s in ss) / n
        out[f["name"]] = dict(n=n, q_log=float(fam[f["name"]][-1]["expected_sparsity"]), q_final=q_end,
                              bin=b_end, relu=le0, mid=mid, lam=f["lambdas"],
                              zmean=sum(zs)/n, zmax=max(zs))
    th = find(name, "threshold-relu")
    out["relu_metrics"] = {k: v for k, v in metrics(th).items() if k in ("sparsity_heads", "sparsity_channels", "params_removed")} if th else {}
    ev = find(name, "evaluate")
    if ev:
        e = json.load(open(os.path.join(ev, "eval.json")))
        out["ppl"] = e.get("perplexity", e)
    at_m = metrics(at)
    out["tokens_per_s"] = at_m.get("tokens_per_s")
    rows.append(out)
    print(f"== {name}: {out['steps']} steps, final mu {last_mu}, tok/s {out['tokens_per_s']}")
    for k in ("heads", "channels"):
        o = out[k]
        print(f"  {k:8s} N={o['n']:6d} q_log={o['q_log']:.4f} q_final={o['q_final']:.4f} relu(z<=0)={o['relu']:.4f} 0<z<2mu={o['mid']:.4f} bin={o['bin']:.4f} zmean={o['zmean']:.3f} zmax={o['zmax']:.2f} lam=[{o['lam'][0]:.3f},{o['lam'][1]:.3f},{o['lam'][2]:.3f}]")
    print("  relu threshold:", out["relu_metrics"], " ppl:", out.get("ppl"))
    if "--traj" in os.environ.get("TRAJ", "--traj"):
        ch, hd = fam["channels"], fam["heads"]
        for i in list(range(0, len(ch), max(1, len(ch)//12))) + [len(ch)-1]:
            print(f"    step {ch[i]['step']:>4} mu {float(ch[i]['mu']):.3f} lrz {float(ch[i]['lr_z']):.4f} kl {float(ch[i]['kl']):.3f} | heads q {float(hd[i]['expected_sparsity']):.3f} l1 {float(hd[i]['lambda1']):+.2f} l2 {float(hd[i]['lambda2']):.2f} l3 {float(hd[i]['lambda3']):.2f} b {float(hd[i]['binarity']):.3f} | chan q {float(ch[i]['expected_sparsity']):.3f} l1 {float(ch[i]['lambda1']):+.2f} l2 {float(ch[i]['lambda2']):.2f} l3 {float(ch[i]['lambda3']):.2f} b {float(ch[i]['binarity']):.3f}")
json.dump(rows, open("/tmp/i13/last_analysis.json", "w"), indent=1)
