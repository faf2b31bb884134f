//! SwiGLU's elementwise part, `silu(g) * u`, in one parallel pass on the CPU backends.
//!
//! burn-ndarray computes `silu` as `x * sigmoid(x)` with a single-threaded scalar `exp`, and on
//! the autodiff backend each of the three ops records its own backward with fresh arrays: in a
//! training step that was the largest cost after the GEMMs. Here the forward is one pass over
//! rayon's pool and, under `Autodiff<NdArray>`, one op whose backward is the closed form
//! `dg = dy u s (1 + g (1 - s))`, `du = dy g s` with `s = sigmoid(g)`. Other backends keep
//! burn's ops.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, Backward, Ops};
use burn::backend::NdArray;
use burn::tensor::{activation::silu, backend::Backend, Tensor};
use burn_ndarray::NdArrayTensor;
use ndarray::{ArrayD, ArrayViewD};

use super::autodiff_op::{cpu_inputs, f32_view, for_each_chunk, nd, record, wrap, CpuInputs};

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Elements per parallel task.
const CHUNK: usize = 8192;

/// `f(a, b, c)` elementwise over three arrays of one shape, in parallel over contiguous chunks
/// (a strided input is first made contiguous: ndarray's `Zip` walks mixed layouts of dynamic
/// rank element by element, which made the backward slower than burn's own ops).
fn zip3(
    a: ArrayViewD<f32>,
    b: ArrayViewD<f32>,
    c: ArrayViewD<f32>,
    f: impl Fn(f32, f32, f32) -> f32 + Sync,
) -> ArrayD<f32> {
    let (a, b, c) = (
        a.as_standard_layout(),
        b.as_standard_layout(),
        c.as_standard_layout(),
    );
    let (av, bv, cv) = (
        a.as_slice().expect("standard layout"),
        b.as_slice().expect("standard layout"),
        c.as_slice().expect("standard layout"),
    );
    let mut out = vec![0f32; av.len()];
    // One chunk's worth (a decoding step's row) runs on the caller.
    for_each_chunk(&mut out, CHUNK, CHUNK + 1, |i, o| {
        let r = i * CHUNK..i * CHUNK + o.len();
        let (x, y, z) = (&av[r.clone()], &bv[r.clone()], &cv[r]);
        for (((o, &x), &y), &z) in o.iter_mut().zip(x).zip(y).zip(z) {
            *o = f(x, y, z);
        }
    });
    ArrayD::from_shape_vec(a.raw_dim(), out).expect("same shape")
}

#[derive(Debug)]
struct SwiGlu;

impl Backward<NdArray, 2> for SwiGlu {
    /// The inputs `g` and `u` (shared, not copied).
    type State = (NdArrayTensor, NdArrayTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (g, u) = ops.state;
        let (gv, uv) = (f32_view(&g).expect("f32"), f32_view(&u).expect("f32"));
        binary::<NdArray, _, _>(
            ops.parents,
            ops.node,
            grads,
            |dy| {
                let dy = f32_view(&dy).expect("f32 gradient");
                nd(zip3(dy, gv.view(), uv.view(), |d, a, b| {
                    let s = sigmoid(a);
                    d * b * s * (1.0 + a * (1.0 - s))
                }))
            },
            |dy| {
                let dy = f32_view(&dy).expect("f32 gradient");
                nd(zip3(dy, gv.view(), gv.view(), |d, a, _| d * a * sigmoid(a)))
            },
        );
    }
}

/// `silu(g) * u`: one pass on the ndarray backend, one op with a closed-form backward on
/// `Autodiff<NdArray>`, burn's ops elsewhere.
pub fn swiglu<B: Backend, const D: usize>(g: Tensor<B, D>, u: Tensor<B, D>) -> Tensor<B, D> {
    fast(&g, &u).unwrap_or_else(|| silu(g) * u)
}

fn fast<B: Backend, const D: usize>(g: &Tensor<B, D>, u: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    if g.dims() != u.dims() {
        return None;
    }
    let fwd = |a: &NdArrayTensor, b: &NdArrayTensor| -> Option<NdArrayTensor> {
        let (a, b) = (f32_view(a)?, f32_view(b)?);
        Some(nd(zip3(a.view(), a.view(), b, |x, _, y| {
            x * sigmoid(x) * y
        })))
    };
    match cpu_inputs([g, u])? {
        CpuInputs::Plain([a, b]) => wrap(fwd(&a, &b)?),
        CpuInputs::Tracked([a, b]) => {
            let y = fwd(&a.primitive, &b.primitive)?;
            let state = || (a.primitive.clone(), b.primitive.clone());
            record(SwiGlu, [&a, &b], state, y)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::autodiff_op::{test_values as values, Ad};
    use burn::backend::ndarray::NdArrayDevice;
    use burn::tensor::TensorData;

    const DEV: NdArrayDevice = NdArrayDevice::Cpu;

    /// Value and both input gradients equal burn's `silu(g) * u` under autodiff, and the
    /// inference path gives the same values.
    #[test]
    fn matches_burns_ops() {
        let shape = [3, 5, 7];
        let (gv, uv, rv) = (values(105, 1), values(105, 2), values(105, 3));
        let t = |v: &[f32]| Tensor::<Ad, 3>::from_data(TensorData::new(v.to_vec(), shape), &DEV);
        let run = |fused: bool| {
            let (g, u) = (t(&gv).require_grad(), t(&uv).require_grad());
            let y = if fused {
                fast(&g, &u).expect("Autodiff<NdArray> takes the fused op")
            } else {
                silu(g.clone()) * u.clone()
            };
            let grads = (y.clone() * t(&rv)).sum().backward();
            let v = |x: Tensor<Ad, 3>| x.into_data().into_vec::<f32>().unwrap();
            let gi = |x: &Tensor<Ad, 3>| {
                x.grad(&grads)
                    .unwrap()
                    .into_data()
                    .into_vec::<f32>()
                    .unwrap()
            };
            (v(y.clone()), gi(&g), gi(&u))
        };
        let (a, b) = (run(true), run(false));
        for (x, y) in [(&a.0, &b.0), (&a.1, &b.1), (&a.2, &b.2)] {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "[{i}]: {p} vs {q}");
            }
        }
        let ti =
            |v: &[f32]| Tensor::<NdArray, 3>::from_data(TensorData::new(v.to_vec(), shape), &DEV);
        let inf = swiglu(ti(&gv), ti(&uv))
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        for (p, q) in inf.iter().zip(&b.0) {
            assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()));
        }
    }
}
