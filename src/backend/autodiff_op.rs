//! Recording a CPU op's output in `Autodiff<NdArray>`'s graph: the one place the fast paths
//! (`frozen_linear`, `swiglu`) meet burn-autodiff's op preparation.

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::backend::{Autodiff, NdArray};
use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};
use burn_ndarray::NdArrayTensor;

use super::cpu_matmul::cast;

/// The one autodiff backend the CPU fast paths serve (f32 ndarray, no checkpointing).
pub(crate) type Ad = Autodiff<NdArray>;
pub(crate) type AdTensor = <Ad as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;

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
    Some(Tensor::from_primitive(TensorPrimitive::Float(cast(out)?)))
}
