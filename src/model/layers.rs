//! The building blocks of a decoder layer: linear maps, RMSNorm, grouped-query attention,
//! SwiGLU MLP and the routed-expert (MoE) block. Each takes an optional gate so that pruning
//! can scale or silence a head, a channel or an expert channel without a second model.

use burn::tensor::{
    activation::{sigmoid, softmax},
    backend::Backend,
    IndexingUpdateOp, Int, Tensor, TensorData,
};

use super::rope;

/// Per-input-feature sums over every row a layer has seen: what one-shot pruning scores
/// (Wanda-SP norms, FLAP fluctuations) need.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputStats {
    /// Rows (token positions) seen.
    pub rows: usize,
    /// Per input feature j: the sum of `x_j` over the rows.
    pub sum: Vec<f64>,
    /// Per input feature j: the sum of `x_j^2` over the rows.
    pub sum_sq: Vec<f64>,
}

impl InputStats {
    /// ||x_j||_2 over all rows.
    pub fn norm(&self) -> Vec<f64> {
        self.sum_sq.iter().map(|s| s.sqrt()).collect()
    }
    /// Sample variance of x_j over the rows.
    pub fn variance(&self) -> Vec<f64> {
        let n = self.rows.max(2) as f64;
        self.sum
            .iter()
            .zip(&self.sum_sq)
            .map(|(s, q)| ((q - s * s / n) / (n - 1.0)).max(0.0))
            .collect()
    }
}

/// `y = x W (+ b)` with `W` stored `[in, out]` so the matmul needs no transpose.
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    /// Weight `[in, out]`: the transpose of PyTorch's `[out, in]`.
    pub w: Tensor<B, 2>,
    /// Bias `[out]`, if the layer has one.
    pub b: Option<Tensor<B, 1>>,
    /// When set, every forward adds its input's per-feature sums here.
    pub probe: Option<std::sync::Arc<std::sync::Mutex<InputStats>>>,
}

impl<B: Backend> Linear<B> {
    /// Input features.
    pub fn in_dim(&self) -> usize {
        self.w.dims()[0]
    }
    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.w.dims()[1]
    }
    /// Applies the map to the last dimension of `x` (any leading dimensions).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut dims = x.dims();
        let inn = dims[D - 1];
        let rows = dims.iter().product::<usize>() / inn;
        let x = x.reshape([rows, inn]);
        if let Some(p) = &self.probe {
            let sum: Vec<f32> = x
                .clone()
                .sum_dim(0)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap();
            let sq: Vec<f32> = (x.clone() * x.clone())
                .sum_dim(0)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap();
            let mut st = p.lock().unwrap_or_else(|e| e.into_inner());
            st.sum.resize(inn, 0.0);
            st.sum_sq.resize(inn, 0.0);
            for j in 0..inn {
                st.sum[j] += sum[j] as f64;
                st.sum_sq[j] += sq[j] as f64;
            }
            st.rows += rows;
        }
        // The CPU fast paths (inference, and training with frozen weights), else burn's matmul.
        let mut y = crate::backend::cpu_matmul::matmul(&x, &self.w)
            .or_else(|| crate::backend::frozen_linear::matmul(&x, &self.w))
            .unwrap_or_else(|| x.matmul(self.w.clone()));
        if let Some(b) = &self.b {
            y = y + b.clone().unsqueeze::<2>();
        }
        dims[D - 1] = self.out_dim();
        y.reshape(dims)
    }
}

/// RMSNorm over the last dimension.
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: &Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    if let Some(y) = crate::backend::rms_norm::rms_norm(&x, w, eps) {
        return y;
    }
    let var = (x.clone() * x.clone()).mean_dim(D - 1);
    // Divide rather than multiply by recip(): burn-ndarray's SIMD recip is approximate (~5e-5).
    let x = x / (var + eps).sqrt();
    x * w.clone().unsqueeze::<D>()
}

/// Keys and values of one layer for the positions seen so far: `[batch, kv_heads, len, head_dim]`.
#[derive(Debug, Clone)]
pub struct LayerKv<B: Backend> {
    /// Keys, after `k_norm` and RoPE.
    pub k: Tensor<B, 4>,
    /// Values.
    pub v: Tensor<B, 4>,
}

/// Grouped-query self-attention with RoPE: query head `h` reads KV head
/// `h / (n_heads / n_kv_heads)`.
#[derive(Debug, Clone)]
pub struct Attention<B: Backend> {
    /// Query projection, `[hidden, n_heads * head_dim]`.
    pub q: Linear<B>,
    /// Key projection, `[hidden, n_kv_heads * head_dim]`.
    pub k: Linear<B>,
    /// Value projection, `[hidden, n_kv_heads * head_dim]`.
    pub v: Linear<B>,
    /// Output projection, `[n_heads * head_dim, hidden]`.
    pub o: Linear<B>,
    /// RMSNorm weight `[head_dim]` for every query head, before RoPE (Qwen3).
    pub q_norm: Option<Tensor<B, 1>>,
    /// RMSNorm weight `[head_dim]` for every key head, before RoPE (Qwen3).
    pub k_norm: Option<Tensor<B, 1>>,
    /// Query heads (0 when all were pruned: the block then outputs zeros).
    pub n_heads: usize,
    /// Key/value heads; divides `n_heads`.
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Sliding-window size, if this layer has one.
    pub window: Option<usize>,
}

/// Additive causal mask for `s` queries at positions `offset..offset+s` over `offset+s` keys,
/// tiled `groups` times along the query axis (queries of one KV group are stacked).
fn causal_mask<B: Backend>(
    s: usize,
    offset: usize,
    groups: usize,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 2> {
    let t = offset + s;
    let mut m = vec![0f32; groups * s * t];
    for g in 0..groups {
        for i in 0..s {
            let row = &mut m[(g * s + i) * t..(g * s + i + 1) * t];
            for (j, v) in row.iter_mut().enumerate() {
                let q = offset + i;
                if j > q || window.is_some_and(|w| q - j >= w) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(m, [groups * s, t]), device)
}

impl<B: Backend> Attention<B> {
    /// `x: [batch, seq, hidden]`; `gate`: one value per query head.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
        eps: f64,
        cache: Option<&mut Option<LayerKv<B>>>,
        gate: Option<&Tensor<B, 1>>,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        if nh == 0 {
            // Every head of this layer was pruned: the block contributes nothing.
            return Tensor::zeros([b, s, self.o.out_dim()], &x.device());
        }
        let mut q = self
            .q
            .forward(x.clone())
            .reshape([b, s, nh, hd])
            .swap_dims(1, 2);
        let mut k = self
            .k
            .forward(x.clone())
            .reshape([b, s, nkv, hd])
            .swap_dims(1, 2);
        let mut v = self.v.forward(x).reshape([b, s, nkv, hd]).swap_dims(1, 2);
        if let Some(w) = &self.q_norm {
            q = rms_norm(q, w, eps);
        }
        if let Some(w) = &self.k_norm {
            k = rms_norm(k, w, eps);
        }
        q = rope::apply(q, cos, sin);
        k = rope::apply(k, cos, sin);
        let mut offset = 0;
        if let Some(slot) = cache {
            if let Some(prev) = slot.take() {
                offset = prev.k.dims()[2];
                k = Tensor::cat(vec![prev.k, k], 2);
                v = Tensor::cat(vec![prev.v, v], 2);
            }
            *slot = Some(LayerKv {
                k: k.clone(),
                v: v.clone(),
            });
        }
        if let Some(out) = crate::backend::attention::attend(&q, &k, &v, offset, self.window) {
            let out = match gate {
                Some(gate) => (out.reshape([b, s, nh, hd]) * gate.clone().reshape([1, 1, nh, 1]))
                    .reshape([b, s, nh * hd]),
                None => out,
            };
            return self.o.forward(out);
        }
        let t = offset + s;
        let g = nh / nkv;
        // Queries of one KV group share its keys: stack them instead of copying K/V g times.
        let qg = q.reshape([b, nkv, g * s, hd]);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut scores = qg.matmul(k.swap_dims(2, 3)) * scale;
        if s > 1 || self.window.is_some_and(|w| t > w) {
            let mask = causal_mask::<B>(s, offset, g, self.window, &scores.device());
            scores = scores + mask.unsqueeze::<4>();
        }
        let probs = softmax(scores, 3);
        let mut out = probs.matmul(v).reshape([b, nh, s, hd]);
        if let Some(gate) = gate {
            out = out * gate.clone().reshape([1, nh, 1, 1]);
        }
        self.o.forward(out.swap_dims(1, 2).reshape([b, s, nh * hd]))
    }
}

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp<B: Backend> {
    /// Gate projection, `[hidden, width]` (through SiLU).
    pub gate: Linear<B>,
    /// Up projection, `[hidden, width]`.
    pub up: Linear<B>,
    /// Down projection, `[width, hidden]`.
    pub down: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// Intermediate channels.
    pub fn width(&self) -> usize {
        self.gate.out_dim()
    }
    /// `gate`: one value per intermediate channel.
    pub fn forward<const D: usize>(
        &self,
        x: Tensor<B, D>,
        gate: Option<&Tensor<B, 1>>,
    ) -> Tensor<B, D> {
        if self.width() == 0 {
            // A layer whose FFN was pruned away entirely (a per-layer slice) adds nothing; the
            // zero-width products would fail to reshape.
            return x.zeros_like();
        }
        let mut h =
            crate::backend::swiglu::swiglu(self.gate.forward(x.clone()), self.up.forward(x));
        if let Some(g) = gate {
            h = h * g.clone().unsqueeze::<D>();
        }
        self.down.forward(h)
    }
}

/// Routed experts: `sum_e pi_e(x) Expert_e(x)` over the top-k experts of each token, plus an
/// optional always-on shared expert with a sigmoid gate (Qwen2-MoE).
#[derive(Debug, Clone)]
pub struct Moe<B: Backend> {
    /// `[hidden, experts]`: logits whose softmax `pi(x)` weighs the experts.
    pub router: Linear<B>,
    /// The routed experts, all of one width.
    pub experts: Vec<Mlp<B>>,
    /// Experts each token is sent to.
    pub top_k: usize,
    /// Renormalise the chosen experts' probabilities to sum to 1.
    pub norm_topk_prob: bool,
    /// The shared expert and its gate `[hidden, 1]` (through a sigmoid).
    pub shared: Option<(Mlp<B>, Linear<B>)>,
}

impl<B: Backend> Moe<B> {
    /// Width of every routed expert.
    pub fn expert_width(&self) -> usize {
        self.experts.first().map_or(0, Mlp::width)
    }
    /// Width of the shared expert (0 without one).
    pub fn shared_width(&self) -> usize {
        self.shared.as_ref().map_or(0, |(m, _)| m.width())
    }
    /// `x: [batch, seq, hidden]`; `gates: [experts, channels]` of the routed experts;
    /// `shared_gate`: one value per channel of the shared expert.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        gates: Option<&Tensor<B, 2>>,
        shared_gate: Option<&Tensor<B, 1>>,
    ) -> Tensor<B, 3> {
        let [b, s, h] = x.dims();
        let n = b * s;
        let e = self.experts.len();
        let xf = x.reshape([n, h]);
        let probs = softmax(self.router.forward(xf.clone()), 1);
        // The choice of experts is discrete (no gradient): make it on the host.
        let p_host = probs
            .clone()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("router probabilities are f32");
        let mut chosen = vec![0f32; n * e];
        let mut per_expert: Vec<Vec<i64>> = vec![Vec::new(); e];
        let mut order: Vec<usize> = (0..e).collect();
        for tok in 0..n {
            let row = &p_host[tok * e..(tok + 1) * e];
            // Highest probability first; ties go to the lower expert index, as torch.topk does.
            order.sort_by(|&a, &c| row[c].total_cmp(&row[a]).then(a.cmp(&c)));
            for &ex in &order[..self.top_k] {
                chosen[tok * e + ex] = 1.0;
                per_expert[ex].push(tok as i64);
            }
        }
        let device = xf.device();
        let mask = Tensor::<B, 2>::from_data(TensorData::new(chosen, [n, e]), &device);
        let mut weights = probs * mask;
        if self.norm_topk_prob {
            let denom = weights.clone().sum_dim(1);
            weights = weights / denom;
        }
        let mut out = Tensor::<B, 2>::zeros([n, h], &device);
        for (ex, toks) in per_expert.iter().enumerate() {
            if toks.is_empty() {
                continue;
            }
            let idx = Tensor::<B, 1, Int>::from_data(
                TensorData::new(toks.clone(), [toks.len()]),
                &device,
            );
            let gate = gates.map(|g| {
                let w = g.dims()[1];
                g.clone().slice([ex..ex + 1, 0..w]).reshape([w])
            });
            let y = self.experts[ex].forward(xf.clone().select(0, idx.clone()), gate.as_ref());
            let wsel = weights
                .clone()
                .slice([0..n, ex..ex + 1])
                .select(0, idx.clone());
            out = out.select_assign(0, idx, y * wsel, IndexingUpdateOp::Add);
        }
        if let Some((mlp, gate)) = &self.shared {
            let sg = sigmoid(gate.forward(xf.clone()));
            out = out + mlp.forward(xf, shared_gate) * sg;
        }
        out.reshape([b, s, h])
    }
}

/// The feed-forward part of a layer.
#[derive(Debug, Clone)]
pub enum Ffn<B: Backend> {
    /// One SwiGLU MLP.
    Dense(Mlp<B>),
    /// Routed experts.
    Moe(Moe<B>),
}
