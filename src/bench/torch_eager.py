"""PyTorch eager reference for `ddp-run bench --torch`: the same protocol as ddp's own
benchmark (same prompt ids, prefill then KV-cached decode, warm-up, repeated runs), on a
Hugging Face directory through transformers. Prints one JSON object on stdout."""
import json, sys, time

args = json.loads(sys.argv[1])
try:
    import torch
    from transformers import AutoModelForCausalLM
except Exception as e:  # the caller reports the absence and skips the comparison
    print(json.dumps({"unavailable": f"{type(e).__name__}: {e}"}))
    sys.exit(0)

torch.set_num_threads(args["threads"])
model = AutoModelForCausalLM.from_pretrained(args["dir"], dtype=torch.float32, attn_implementation="eager")
model.eval()
b, n, d, vocab = args["batch"], args["prompt_len"], args["decode_tokens"], model.config.vocab_size

def ids(batch, length, v):
    return torch.tensor([((i * 2654435761 + 17) % v) for i in range(batch * length)]).reshape(batch, length)

@torch.inference_mode()
def run_once(decode):
    t0 = time.perf_counter()
    out = model(ids(b, n, vocab), use_cache=True)
    out.logits[:, -1].argmax(-1)
    prefill = time.perf_counter() - t0
    past = out.past_key_values
    t1 = time.perf_counter()
    for step in range(decode):
        out = model(ids(b, 1, max(vocab - step, 1)), past_key_values=past, use_cache=True)
        past = out.past_key_values
        out.logits[:, -1].argmax(-1)
    dec = time.perf_counter() - t1
    return b * n / prefill, (b * decode / dec if decode else 0.0)

for _ in range(args["warmup"]):
    run_once(min(d, 8))
runs = [run_once(d) for _ in range(max(args["repeats"], 1))]
print(json.dumps({"prefill": [r[0] for r in runs], "decode": [r[1] for r in runs],
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
