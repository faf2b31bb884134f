//! Pruning: the gate surrogates and annealing, mask-only training with the Lagrangian,
//! final-mask rules and slicing.

pub mod budget;
pub(crate) mod distill;
pub mod family;
pub mod mask;
pub mod oneshot;
pub mod slice;
pub(crate) mod surrogate;
pub mod teacher;
pub mod train;
