//! Pruning: final masks and slicing (gates, surrogates, annealing and the Lagrangian of
//! training arrive with the anneal-train stage).

pub mod mask;
pub mod slice;
pub mod surrogate;
pub mod train;
