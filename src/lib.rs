//! ddp: structured pruning of LLMs by Deterministic Differentiable Pruning.
//!
//! Layers, from the bottom: [`io`] reads models, [`model`] runs them in burn, [`bench`] measures
//! them; [`backend`] is the one place that knows about concrete burn backends.

pub mod backend;
pub mod bench;
pub mod error;
pub mod io;
pub mod model;

pub use error::{Error, Result};
