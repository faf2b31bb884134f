"""PyTorch reference for `ddp-run bench --train --torch`: the same mask-only DDP step as ddp's
anneal-train (teacher forward without gates; student forward with a gate per KV group on the
o_proj inputs and a gate per channel on the down_proj inputs; CE + eta KL + the sparsity
Lagrangian; backward to the gates only, weights frozen; Adam on z and the multipliers), on a
Hugging Face directory through transformers.

Stays alive so that the caller can alternate with its own steps: after the model is loaded it
prints {"ready": ...}, then answers each stdin line {"steps": N} with one JSON line of N steps'
phase seconds [teacher, student, backward, update]."""
import json, math, sys, time

args = json.loads(sys.argv[1])
try:
    import torch
    from transformers import AutoModelForCausalLM
except Exception as e:  # the caller reports the absence and skips the comparison
    print(json.dumps({"unavailable": f"{type(e).__name__}: {e}"}), flush=True)
    sys.exit(0)

torch.set_num_threads(args["threads"])
model = AutoModelForCausalLM.from_pretrained(args["dir"], dtype=torch.float32)
model.eval()
for p in model.parameters():
    p.requires_grad_(False)
cfg = model.config
L, nh, nkv = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
width, vocab = cfg.intermediate_size, cfg.vocab_size
b, seq, eta, k_top = args["batch"], args["seq_len"], 2.0, args["topk"]

zh = torch.ones(L, nkv, requires_grad=True)
zc = torch.ones(L, width, requires_grad=True)
lams = torch.zeros(2, 3, requires_grad=True)
gated = [False]


def relu_st(z):  # forward ReLU, identity backward (straight-through)
    return z + (z.clamp_min(0.0) - z).detach()


def head_hook(i):
    def hook(_, inp):
        if not gated[0]:
            return None
        g = relu_st(zh[i]).repeat_interleave((nh // nkv) * hd)
        return (inp[0] * g,)
    return hook


def channel_hook(i):
    def hook(_, inp):
        if not gated[0]:
            return None
        return (inp[0] * relu_st(zc[i]),)
    return hook


for i, layer in enumerate(model.model.layers):
    layer.self_attn.o_proj.register_forward_pre_hook(head_hook(i))
    layer.mlp.down_proj.register_forward_pre_hook(channel_hook(i))


def ids(step):
    base = step * b * seq
    return torch.tensor([((base + i) * 2654435761 + 17) % vocab for i in range(b * seq)]).reshape(b, seq)


def retention(z, mu):
    m = relu_st(z)
    s = torch.sigmoid((m - mu) * (math.log(11.0) / mu)) * 1.2 - 0.1
    return s + (s.clamp(0.0, 1.0) - s).detach()


cache = {}


def teacher_rows(step, tokens):
    """Online: the dense model's log-probabilities; cached: its top-k computed once per block."""
    with torch.no_grad():
        gated[0] = False
        if args["teacher"] == "online" or step not in cache:
            lt = torch.log_softmax(model(tokens).logits[:, :-1].reshape(-1, vocab), -1)
            if args["teacher"] == "online":
                return lt
            top = lt.topk(k_top, -1)
            rest = torch.log((1 - top.values.exp().sum(-1, keepdim=True)).clamp_min(1e-30))
            cache[step] = (top.indices, top.values, rest)
        return cache[step]


adam_state = {}


def adam(p, lr, ascent=False):
    g = -p.grad if ascent else p.grad
    m, v, t = adam_state.get(id(p), (torch.zeros_like(p), torch.zeros_like(p), 0))
    t += 1
    m.mul_(0.9).add_(g, alpha=0.1)
    v.mul_(0.999).addcmul_(g, g, value=0.001)
    p.data.add_(-lr * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8))
    adam_state[id(p)] = (m, v, t)
    p.grad = None


def step(t, targets=(0.2, 0.2), mu=0.5):
    tokens = ids(t % 4)
    t0 = time.perf_counter()
    lt = teacher_rows(t % 4, tokens)
    t1 = time.perf_counter()
    gated[0] = True
    logits = model(tokens).logits[:, :-1].reshape(-1, vocab)
    ls = torch.log_softmax(logits, -1)
    ce = -ls.gather(1, tokens[:, 1:].reshape(-1, 1)).mean()
    if args["teacher"] == "online":
        kl = (lt.exp() * (lt - ls)).sum(-1).mean()
    else:
        idx, lv, rest = lt
        ls_k = ls.gather(1, idx)
        rest_s = (1 - ls_k.exp().sum(-1, keepdim=True)).clamp_min(1e-12).log()
        kl = ((lv.exp() * (lv - ls_k)).sum(-1, keepdim=True) + rest.exp() * (rest - rest_s)).mean()
    loss = ce + eta * kl
    for f, (z, a) in enumerate(zip((zh, zc), targets)):
        s = retention(z, mu).reshape(-1)
        gap = (1 - s.mean()) - a
        loss = loss + lams[f, 0] * gap + lams[f, 1] * gap * gap + lams[f, 2] * (s * (1 - s)).mean()
    t2 = time.perf_counter()
    loss.backward()
    t3 = time.perf_counter()
    for z in (zh, zc):
        adam(z, 0.1)
        z.data.clamp_(min=-0.1)
    adam(lams, 0.02, ascent=True)
    t4 = time.perf_counter()
    return [t1 - t0, t2 - t1, t3 - t2, t4 - t3]


print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
done = 0
for line in sys.stdin:
    n = json.loads(line)["steps"]
    out = [step(done + i) for i in range(n)]
    done += n
    print(json.dumps({"steps": out}), flush=True)
