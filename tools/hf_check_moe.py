#!/usr/bin/env python3
"""Checks that ddp's pruned MoE models load unchanged in Hugging Face transformers and compute
the same function there as in ddp.

For Qwen2-MoE (shared expert, one dense layer between MoE layers), Mixtral and Qwen3-MoE: builds
a small random model with transformers and saves it, prunes it with `ddp-run` (gate-insert ->
calibrate -> anneal-train -> threshold uniform -> slice uniform), loads the sliced directory with
transformers' Auto classes, and compares the perplexity transformers computes on held-out text
(float64 log-softmax, the golden perplexity protocol of ../shared/fixtures/README.md) with
`ddp-run eval` on the same directory. Needs torch and transformers (not needed by ddp itself).

    python3 tools/hf_check_moe.py [--ddp target/debug/ddp-run] [--work /tmp/ddp-hf-moe]
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT.parent / "shared" / "fixtures"
SEQ, TOKENS = 128, 2048

COMMON = dict(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2)
MODELS = {
    "qwen2_moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM,
                  dict(intermediate_size=96, num_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=32, shared_expert_intermediate_size=48,
                       mlp_only_layers=[1])),
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM,
                dict(intermediate_size=32, num_local_experts=4, num_experts_per_tok=2)),
    "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM,
                  dict(intermediate_size=96, num_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=32, head_dim=16)),
}

RECIPE = """
name = "{name}"
[model]
source = "{model}"
[stages.load]
kind = "load"
model = "${{model.source}}"
[stages.gate-insert]
kind = "gate-insert"
after = ["load"]
sparsity = 0.3
[stages.calibrate]
kind = "calibrate"
after = ["load"]
data = "{calib}"
seq_len = 64
max_tokens = 4000
[stages.anneal-train]
kind = "anneal-train"
after = ["gate-insert", "calibrate"]
steps = 10
warmup = 2
lr_lambda = 0.1
[stages.threshold]
kind = "threshold"
after = ["anneal-train"]
rule = "uniform"
multiple = 8
[stages.slice]
kind = "slice"
after = ["threshold"]
uniform = true
multiple = 8
"""


def hf_perplexity(model_dir: Path, ids: list) -> float:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - SEQ + 1, SEQ):
            w = torch.tensor([ids[s:s + SEQ]])
            logp = torch.log_softmax(model(w).logits[0].double(), dim=-1)
            nll -= logp[:-1].gather(1, w[0, 1:, None]).sum().item()
            n += SEQ - 1
    return float(torch.exp(torch.tensor(nll / n)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ddp", default=str(ROOT / "target/debug/ddp-run"))
    ap.add_argument("--work", default="/tmp/ddp-hf-moe")
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tok_path = FIXTURES / "stories260k" / "tokenizer.json"
    text_path = FIXTURES / "corpora" / "moby-dick.txt"
    text = text_path.read_text()[:200_000]
    ids = Tokenizer.from_file(str(tok_path)).encode(text, add_special_tokens=False).ids[:TOKENS]
    ok = True
    for name, (cfg_cls, model_cls, extra) in MODELS.items():
        torch.manual_seed(0)
        dense_dir = work / f"{name}-dense"
        model_cls(cfg_cls(**COMMON, **extra)).save_pretrained(dense_dir)
        shutil.copy(tok_path, dense_dir / "tokenizer.json")
        recipe = work / f"{name}.toml"
        recipe.write_text(RECIPE.format(name=name, model=dense_dir,
                                        calib=FIXTURES / "corpora" / "sotu" / "*.txt"))
        subprocess.run([a.ddp, "--cache", str(work / "cache"), "run", str(recipe),
                        "--out", str(work / "out")], check=True)
        sliced = work / "out" / name / "slice" / "model"
        cfg = json.loads((sliced / "config.json").read_text())
        width = cfg.get("moe_intermediate_size", cfg["intermediate_size"])
        out = subprocess.run([a.ddp, "--cache", str(work / "cache"), "eval", "--model",
                              str(sliced), "--text", str(text_path), "--seq-len", str(SEQ),
                              "--max-tokens", str(TOKENS), "--json"],
                             check=True, capture_output=True, text=True).stdout
        ours = json.loads(out)["perplexity"]["perplexity"]
        theirs = hf_perplexity(sliced, ids)
        dense = hf_perplexity(dense_dir, ids)
        rel = abs(ours - theirs) / theirs
        ok &= rel < 1e-4
        print(f"{name}: experts {extra.get('moe_intermediate_size', 32)} -> {width} wide; "
              f"transformers on the sliced model: perplexity {theirs:.4f} (dense {dense:.4f}); "
              f"ddp: {ours:.4f}; relative difference {rel:.1e}")
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
