//! Scaled dot-product attention with the causal (and sliding-window) mask in one parallel pass
//! on the ndarray backend, and as one op with its backward on `Autodiff<NdArray>`.
//!
//! burn-ndarray runs the batched `Q K^T` and `P V` products on single-threaded matrixmultiply,
//! materialises the additive mask, and computes softmax with a scalar `exp` on one core: at a
//! 512-token prefill these were ~20 % of the samples of a profile and about a third of the wall
//! time, the other core idle. Here each (batch, head) pair is one task on rayon's pool: `Q K^T`
//! on the `gemm` crate, the mask and a max-subtracted softmax row by row, then `P V` written
//! straight into the `[batch, seq, heads * head_dim]` layout the output projection reads (no
//! `swap_dims` copy). In training the probabilities are kept for the backward, which per head
//! is `dV = P^T dO`, `dZ = P (dO V^T - rowsum) * scale`, `dQ = dZ K`, `dK = dZ^T Q` (grouped
//! heads' `dK`, `dV` summed into their KV head). Other backends keep burn's ops.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::NdArray;
use burn::tensor::{backend::Backend, Tensor};
use burn_ndarray::NdArrayTensor;
use ndarray::{s, Array2, Array3, Array4, ArrayView2, ArrayView4, Axis, Ix3, Ix4};
use rayon::prelude::*;

use super::autodiff_op::{cpu_inputs, f32_view_as, nd, record, wrap, AdTensor, CpuInputs};
use super::cpu_matmul::gemm_on;
use super::spin_pool;

const SEQ: gemm::Parallelism = gemm::Parallelism::None;

/// Where query `i` (at position `offset + i`) may look: keys `lo..=offset + i`.
fn first_key(offset: usize, i: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (offset + i + 1).saturating_sub(w))
}

/// One head's probabilities `softmax(mask(q k^T) * scale)`, `q: [s, d]`, `k: [t, d]` -> `[s, t]`
/// (masked keys exactly 0).
fn probs(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    offset: usize,
    window: Option<usize>,
    scale: f32,
) -> Array2<f32> {
    let mut p = gemm_on(q, k.t(), SEQ);
    for (i, mut row) in p.axis_iter_mut(Axis(0)).enumerate() {
        let row = row.as_slice_mut().expect("gemm output is row-major");
        let (lo, hi) = (first_key(offset, i, window), offset + i + 1);
        let live = &mut row[lo..hi];
        let max = live.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        let mut sum = 0f32;
        for x in live.iter_mut() {
            *x = ((*x - max) * scale).exp();
            sum += *x;
        }
        for x in live.iter_mut() {
            *x /= sum;
        }
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
    }
    p
}

/// One head's `(dq [s, d], dk [t, d], dv [t, d])` from its probabilities and `dout [s, d]`.
fn head_grad(
    p: &Array2<f32>,
    (q, k, v): (ArrayView2<f32>, ArrayView2<f32>, ArrayView2<f32>),
    dout: ArrayView2<f32>,
    scale: f32,
) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
    let dv = gemm_on(p.t(), dout, SEQ);
    let mut dz = gemm_on(dout, v.t(), SEQ);
    for (mut g, pr) in dz.axis_iter_mut(Axis(0)).zip(p.axis_iter(Axis(0))) {
        let dot: f32 = g.iter().zip(pr.iter()).map(|(a, b)| a * b).sum();
        g.zip_mut_with(&pr, |g, &p| *g = p * (*g - dot) * scale);
    }
    let dq = gemm_on(dz.view(), k, SEQ);
    let dk = gemm_on(dz.t(), q, SEQ);
    (dq, dk, dv)
}

/// `q: [b, heads, s, d]`, `k, v: [b, kv_heads, t, d]` (any strides) -> `[b, s, heads * d]`,
/// and every (batch, head)'s probabilities when `keep` (for the backward).
fn attend_views(
    q: ArrayView4<f32>,
    k: ArrayView4<f32>,
    v: ArrayView4<f32>,
    offset: usize,
    window: Option<usize>,
    keep: bool,
) -> (Array3<f32>, Vec<Array2<f32>>) {
    let (b, nh, s, d) = q.dim();
    let g = nh / k.dim().1;
    let scale = 1.0 / (d as f32).sqrt();
    let head = |bh: usize| {
        let (bi, h) = (bh / nh, bh % nh);
        let p = probs(
            q.slice(s![bi, h, .., ..]),
            k.slice(s![bi, h / g, .., ..]),
            offset,
            window,
            scale,
        );
        let o = gemm_on(p.view(), v.slice(s![bi, h / g, .., ..]), SEQ);
        (o, keep.then_some(p))
    };
    // Decoding's few query rows make tasks of microseconds: the spin pool's awake helpers
    // take them; longer blocks stay on rayon.
    let heads: Vec<(Array2<f32>, Option<Array2<f32>>)> = if s <= spin_pool::SMALL_ROWS {
        spin_pool::map(b * nh, head)
    } else {
        (0..b * nh).into_par_iter().map(head).collect()
    };
    let mut out = Array3::<f32>::zeros((b, s, nh * d));
    let mut kept = Vec::new();
    for (bh, (o, p)) in heads.into_iter().enumerate() {
        let (bi, h) = (bh / nh, bh % nh);
        out.slice_mut(s![bi, .., h * d..(h + 1) * d]).assign(&o);
        kept.extend(p);
    }
    (out, kept)
}

/// Gradients of [`attend_views`] (no offset: training runs whole blocks) for `dout [b, s, nh * d]`.
fn attend_grads(
    (q, k, v): (ArrayView4<f32>, ArrayView4<f32>, ArrayView4<f32>),
    probs: &[Array2<f32>],
    dout: ndarray::ArrayView3<f32>,
) -> (Array4<f32>, Array4<f32>, Array4<f32>) {
    let (b, nh, s, d) = q.dim();
    let (_, nkv, t, _) = k.dim();
    let g = nh / nkv;
    let scale = 1.0 / (d as f32).sqrt();
    let per_head: Vec<_> = (0..b * nh)
        .into_par_iter()
        .map(|bh| {
            let (bi, h) = (bh / nh, bh % nh);
            let kv = (
                q.slice(s![bi, h, .., ..]),
                k.slice(s![bi, h / g, .., ..]),
                v.slice(s![bi, h / g, .., ..]),
            );
            head_grad(
                &probs[bh],
                kv,
                dout.slice(s![bi, .., h * d..(h + 1) * d]),
                scale,
            )
        })
        .collect();
    let mut dq = Array4::<f32>::zeros((b, nh, s, d));
    let mut dk = Array4::<f32>::zeros((b, nkv, t, d));
    let mut dv = Array4::<f32>::zeros((b, nkv, t, d));
    for (bh, (gq, gk, gv)) in per_head.into_iter().enumerate() {
        let (bi, h) = (bh / nh, bh % nh);
        dq.slice_mut(s![bi, h, .., ..]).assign(&gq);
        dk.slice_mut(s![bi, h / g, .., ..])
            .zip_mut_with(&gk, |a, b| *a += b);
        dv.slice_mut(s![bi, h / g, .., ..])
            .zip_mut_with(&gv, |a, b| *a += b);
    }
    (dq, dk, dv)
}

#[derive(Debug)]
struct Attend;

impl Backward<NdArray, 3> for Attend {
    /// q, k, v (shared, not copied) and each (batch, head)'s probabilities.
    type State = (
        NdArrayTensor,
        NdArrayTensor,
        NdArrayTensor,
        Vec<Array2<f32>>,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (q, k, v, probs) = ops.state;
        let dout = grads.consume::<NdArray>(&ops.node);
        let views = (
            f32_view_as::<Ix4>(&q).expect("f32"),
            f32_view_as::<Ix4>(&k).expect("f32"),
            f32_view_as::<Ix4>(&v).expect("f32"),
        );
        let NdArrayTensor::F32(dout) = &dout else {
            unreachable!("attention only records f32 operands")
        };
        let dout = dout
            .view()
            .into_dimensionality::<Ix3>()
            .expect("[b, s, h*d]");
        let (dq, dk, dv) = attend_grads(views, &probs, dout);
        for (parent, grad) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = parent {
                grads.register::<NdArray>(node.id, nd(grad));
            }
        }
    }
}

/// Attention of `q: [b, heads, s, d]` over `k, v: [b, kv_heads, offset + s, d]`, queries at
/// positions `offset..offset + s`, as `[b, s, heads * d]`: on the ndarray backend in f32;
/// `None` elsewhere (the caller uses burn's ops).
pub fn attend<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    offset: usize,
    window: Option<usize>,
) -> Option<Tensor<B, 3>> {
    match cpu_inputs([q, k, v])? {
        CpuInputs::Plain([qn, kn, vn]) => {
            let (qv, kv, vv) = checked(&qn, &kn, &vn, offset)?;
            wrap(nd(attend_views(qv, kv, vv, offset, window, false).0))
        }
        // Training runs whole blocks; a KV-cache offset there would be a caller's mistake that
        // burn's ops handle as well.
        CpuInputs::Tracked(_) if offset != 0 => None,
        CpuInputs::Tracked([qa, ka, va]) => {
            let (qv, kv, vv) = checked(&qa.primitive, &ka.primitive, &va.primitive, 0)?;
            let (out, probs) = attend_views(qv, kv, vv, 0, window, true);
            let state = || {
                let p = |t: &AdTensor| t.primitive.clone();
                (p(&qa), p(&ka), p(&va), probs)
            };
            record(Attend, [&qa, &ka, &va], state, nd(out))
        }
    }
}

/// The three as 4-D f32 views when their shapes fit one attention call.
fn checked<'a>(
    q: &'a NdArrayTensor,
    k: &'a NdArrayTensor,
    v: &'a NdArrayTensor,
    offset: usize,
) -> Option<(
    ArrayView4<'a, f32>,
    ArrayView4<'a, f32>,
    ArrayView4<'a, f32>,
)> {
    let (qv, kv, vv) = (
        f32_view_as::<Ix4>(q)?,
        f32_view_as::<Ix4>(k)?,
        f32_view_as::<Ix4>(v)?,
    );
    let (b, nh, s, d) = qv.dim();
    let (kb, nkv, t, kd) = kv.dim();
    let fits = kb == b && kd == d && vv.dim() == kv.dim() && nkv > 0 && nh % nkv == 0;
    (fits && t == offset + s).then_some((qv, kv, vv))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::autodiff_op::Ad;

    /// Against a plain f64 evaluation of the definition, with grouped heads, a KV-cache offset
    /// and a sliding window.
    #[test]
    fn matches_the_definition() {
        let (b, nh, nkv, s, d) = (2, 4, 2, 5, 8);
        for (offset, window) in [(0, None), (3, None), (3, Some(4))] {
            let t = offset + s;
            let val = |n: usize, seed: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| (((i * 31 + seed * 17) % 89) as f32 - 44.0) / 20.0)
                    .collect()
            };
            let q = ndarray::Array4::from_shape_vec((b, nh, s, d), val(b * nh * s * d, 1)).unwrap();
            let k =
                ndarray::Array4::from_shape_vec((b, nkv, t, d), val(b * nkv * t * d, 2)).unwrap();
            let v =
                ndarray::Array4::from_shape_vec((b, nkv, t, d), val(b * nkv * t * d, 3)).unwrap();
            let (got, _) = attend_views(q.view(), k.view(), v.view(), offset, window, false);
            for bi in 0..b {
                for h in 0..nh {
                    let kh = h / (nh / nkv);
                    for i in 0..s {
                        let pos = offset + i;
                        let keys: Vec<usize> = (0..t)
                            .filter(|&j| j <= pos && window.is_none_or(|w| pos - j < w))
                            .collect();
                        let sc: Vec<f64> = keys
                            .iter()
                            .map(|&j| {
                                (0..d)
                                    .map(|c| q[[bi, h, i, c]] as f64 * k[[bi, kh, j, c]] as f64)
                                    .sum::<f64>()
                                    / (d as f64).sqrt()
                            })
                            .collect();
                        let max = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let z: f64 = sc.iter().map(|x| (x - max).exp()).sum();
                        for c in 0..d {
                            let want: f64 = keys
                                .iter()
                                .zip(&sc)
                                .map(|(&j, x)| (x - max).exp() / z * v[[bi, kh, j, c]] as f64)
                                .sum();
                            let g = got[[bi, i, h * d + c]] as f64;
                            assert!(
                                (g - want).abs() < 1e-5,
                                "{offset} {window:?} [{bi},{h},{i},{c}]: {g} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Under autodiff, the value and the gradients of q, k and v equal burn's own ops (grouped
    /// queries, causal mask, sliding window) up to burn-ndarray's approximate SIMD `exp` (its
    /// gradients are off by up to ~1e-3, e.g. nonzero for a query that sees one key), and q's
    /// gradient equals central differences of the loss more closely.
    #[test]
    fn gradients_match_burns_ops() {
        use burn::backend::ndarray::NdArrayDevice;
        use burn::tensor::{activation::softmax, TensorData};
        let (b, nh, nkv, s, d) = (2, 4, 2, 6, 8);
        let dev = NdArrayDevice::Cpu;
        let val = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 31 + seed * 17) % 89) as f32 - 44.0) / 30.0)
                .collect()
        };
        let t4 =
            |v: Vec<f32>, sh: [usize; 4]| Tensor::<Ad, 4>::from_data(TensorData::new(v, sh), &dev);
        let r = Tensor::<Ad, 3>::from_data(
            TensorData::new(val(b * s * nh * d, 9), [b, s, nh * d]),
            &dev,
        );
        for window in [None, Some(3)] {
            let burn_path = |q: Tensor<Ad, 4>, k: Tensor<Ad, 4>, v: Tensor<Ad, 4>| {
                let g = nh / nkv;
                let mut m = vec![0f32; g * s * s];
                for gi in 0..g {
                    for i in 0..s {
                        for j in 0..s {
                            if j > i || window.is_some_and(|w| i - j >= w) {
                                m[(gi * s + i) * s + j] = f32::NEG_INFINITY;
                            }
                        }
                    }
                }
                let mask = Tensor::<Ad, 2>::from_data(TensorData::new(m, [g * s, s]), &dev);
                let sc = q.reshape([b, nkv, g * s, d]).matmul(k.swap_dims(2, 3))
                    * (1.0 / (d as f64).sqrt())
                    + mask.unsqueeze::<4>();
                softmax(sc, 3)
                    .matmul(v)
                    .reshape([b, nh, s, d])
                    .swap_dims(1, 2)
                    .reshape([b, s, nh * d])
            };
            let run = |fused: bool, dq: Option<(usize, f32)>| {
                let mut qv = val(b * nh * s * d, 1);
                if let Some((i, h)) = dq {
                    qv[i] += h;
                }
                let q = t4(qv, [b, nh, s, d]).require_grad();
                let k = t4(val(b * nkv * s * d, 2), [b, nkv, s, d]).require_grad();
                let v = t4(val(b * nkv * s * d, 3), [b, nkv, s, d]).require_grad();
                let y = if fused {
                    attend(&q, &k, &v, 0, window).expect("Autodiff<NdArray> takes the op")
                } else {
                    burn_path(q.clone(), k.clone(), v.clone())
                };
                let loss = (y * r.clone()).sum();
                let lv = loss.clone().into_scalar();
                let grads = loss.backward();
                let gi = |x: &Tensor<Ad, 4>| {
                    x.grad(&grads)
                        .unwrap()
                        .into_data()
                        .into_vec::<f32>()
                        .unwrap()
                };
                (lv, gi(&q), gi(&k), gi(&v))
            };
            let (a, b_) = (run(true, None), run(false, None));
            assert!(
                (a.0 - b_.0).abs() < 1e-4 * (1.0 + b_.0.abs()),
                "{} vs {}",
                a.0,
                b_.0
            );
            for (x, y) in [(&a.1, &b_.1), (&a.2, &b_.2), (&a.3, &b_.3)] {
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    assert!(
                        (p - q).abs() <= 2e-3 * (1.0 + q.abs()),
                        "{window:?} [{i}]: {p} vs {q}"
                    );
                }
            }
            for i in [0, 13, 19, 101, 250] {
                let h = 1e-2;
                let fd = (run(true, Some((i, h))).0 - run(true, Some((i, -h))).0) / (2.0 * h);
                assert!(
                    (fd - a.1[i]).abs() < 5e-4 * (1.0 + fd.abs()),
                    "dq[{i}]: {} vs {fd}",
                    a.1[i]
                );
            }
        }
    }
}
