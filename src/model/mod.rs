//! The transformer in burn: config and architecture table, layers, RoPE, KV cache,
//! generation, weight loading. Knows nothing of pruning beyond accepting gates.

pub mod accounting;
pub mod config;
pub mod generate;
pub mod inner;
pub mod layers;
pub mod load;
pub mod rope;
pub mod transformer;
pub mod weights;

pub use config::{Arch, ModelConfig};
pub use transformer::{Gates, KvCache, LayerGates, Logits, Model};
