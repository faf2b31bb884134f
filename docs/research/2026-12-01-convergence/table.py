import json, os, subprocess
runs = {"A60": "60, warm 6, lr_z 0.05, lr_l 0.02, lr_l2 0.4, mu 0.5->0.1 (issue's settings)",
        "B60": "60, warm 6, lr_z 0.1, lr_l 0.33, lr_l2 6.7, mu 0.5->0.1 (P1: x1000/T)",
        "D60": "60, warm 6, lr_z 0.1, lr_l 0.33, lr_l2 6.7, mu held 0.5",
        "B30": "30, warm 3, lr_z 0.1, lr_l 0.5, lr_l2 10, mu 0.5->0.1",
        "B30z": "30, warm 3, lr_z 0.2, lr_l 0.5, lr_l2 10, mu 0.5->0.1 (P1)",
        "B120": "120, warm 12, lr_z 0.05, lr_l 0.167, lr_l2 3.33, mu 0.5->0.1 (P1)"}
names = [n for n in runs if os.path.exists(f"/tmp/i13/out/{n}/anneal-train")]
subprocess.run(["python3", "/tmp/i13/analyze.py", *names], env={**os.environ, "TRAJ": "no"}, capture_output=True)
rows = json.load(open("/tmp/i13/last_analysis.json"))
def ppl(n, k):
    f = f"/tmp/i13/out/{n}/{k}/eval.json"
    return f"{json.load(open(f))['perplexity']['perplexity']:.1f}" if os.path.exists(f) else "-"
def prm(n, k):
    f = f"/tmp/i13/out/{n}/{k}/manifest.json"
    return f"{json.load(open(f))['metrics']['params_removed']:.3f}" if os.path.exists(f) else "-"
print("| run | steps and settings | expected sparsity heads / channels (target 0.2) | binarity s(1-s) heads / channels | relu achieved heads / channels (params removed) | ppl uniform (params removed) | ppl relu | ppl topk (0.200) |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    n = r["name"]; h, c = r["heads"], r["channels"]; rm = r["relu_metrics"]
    print(f"| {n} | {runs[n]} | {h['q_log']:.3f} / {c['q_log']:.3f} | {h['bin']:.4f} / {c['bin']:.4f} | {rm.get('sparsity_heads',0):.3f} / {rm.get('sparsity_channels',0):.3f} ({rm.get('params_removed',0):.3f}) | {ppl(n,'evaluate')} ({prm(n,'threshold')}) | {ppl(n,'evaluate-relu')} | {ppl(n,'evaluate-topk')} |")
