//! Where the CPU fast paths meet burn's backends: which of the two CPU backends some tensors
//! live on ([`cpu_inputs`]), and recording an op's output in `Autodiff<NdArray>`'s graph
//! ([`record`]) — written once for every fast path.

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::backend::{Autodiff, NdArray};
use std::any::TypeId;

use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};
use burn_ndarray::NdArrayTensor;

use super::cpu_matmul::cast;

/// The one autodiff backend the CPU fast paths serve (f32 ndarray, no checkpointing).
pub(crate) type Ad = Autodiff<NdArray>;
pub(crate) type AdTensor = <Ad as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;

/// The float primitives of some tensors, on the CPU backend they share.
pub(crate) enum CpuInputs<const N: usize> {
    /// The ndarray backend: compute on them, return with [`wrap`].
    Plain([NdArrayTensor; N]),
    /// `Autodiff<NdArray>`: compute on their `.primitive`, return with [`record`].
    Tracked([AdTensor; N]),
}

/// `ts`' primitives when they live on ndarray or `Autodiff<NdArray>` and the fast paths are on;
/// `None` elsewhere (the caller takes burn's ops).
pub(crate) fn cpu_inputs<B: Backend, const N: usize, const D: usize>(
    ts: [&Tensor<B, D>; N],
) -> Option<CpuInputs<N>> {
    fn all<P: 'static, T: 'static, const N: usize>(ps: Vec<P>) -> Option<[T; N]> {
        let v: Option<Vec<T>> = ps.into_iter().map(cast).collect();
        v?.try_into().ok()
    }
    if !super::fast_paths() {
        return None;
    }
    let ps = ts
        .iter()
        .map(|t| match (*t).clone().into_primitive() {
            TensorPrimitive::Float(p) => Some(p),
            TensorPrimitive::QFloat(_) => None,
        })
        .collect::<Option<Vec<_>>>()?;
    if TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<NdArrayTensor>() {
        return all(ps).map(CpuInputs::Plain);
    }
    if TypeId::of::<B>() == TypeId::of::<Ad>() {
        return all(ps).map(CpuInputs::Tracked);
    }
    None
}

/// An f32 primitive's array, of any layout.
pub(crate) fn f32_view(t: &NdArrayTensor) -> Option<ndarray::ArrayViewD<'_, f32>> {
    match t {
        NdArrayTensor::F32(a) => Some(a.view()),
        _ => None,
    }
}

/// An f32 primitive's array as a view of fixed rank `D`, if it has that rank.
pub(crate) fn f32_view_as<D: ndarray::Dimension>(
    t: &NdArrayTensor,
) -> Option<ndarray::ArrayView<'_, f32, D>> {
    f32_view(t)?.into_dimensionality().ok()
}

/// `f(i, chunk)` for the `size`-long chunks of `out`: on rayon's pool when `out` has at least
/// `parallel_min` values, else on the caller (a pool job from a thread outside it costs a
/// wake-up of tens of microseconds, more than a decoding step's rows take).
pub(crate) fn for_each_chunk(
    out: &mut [f32],
    size: usize,
    parallel_min: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    use rayon::prelude::*;
    let size = size.max(1);
    if out.len() < parallel_min {
        out.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        out.par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
}

/// An owned f32 array as the ndarray backend's primitive.
pub(crate) fn nd<D: ndarray::Dimension>(a: ndarray::Array<f32, D>) -> NdArrayTensor {
    NdArrayTensor::from(a.into_dyn().into_shared())
}

/// A result's primitive (`NdArrayTensor`, or the autodiff one) as a tensor of `B`, whose float
/// primitive it is.
pub(crate) fn wrap<B: Backend, P: 'static, const D: usize>(y: P) -> Option<Tensor<B, D>> {
    Some(Tensor::from_primitive(TensorPrimitive::Float(cast(y)?)))
}

/// `y`, computed from `parents` by `op`, as a tensor of `B` (= [`Ad`]) whose backward is `op`'s;
/// `state` is built only when some parent is tracked.
pub(crate) fn record<B: Backend, O: Backward<NdArray, N>, const N: usize, const D: usize>(
    op: O,
    parents: [&AdTensor; N],
    state: impl FnOnce() -> O::State,
    y: NdArrayTensor,
) -> Option<Tensor<B, D>> {
    let out = match op
        .prepare::<NoCheckpointing>(parents.map(|p| p.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state(), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    wrap(out)
}

/// Deterministic test inputs in [-4, 4], distinct per `seed`.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 29 + seed * 13) % 97) as f32 - 48.0) / 12.0)
        .collect()
}
