//! ddp: structured pruning of LLMs by Deterministic Differentiable Pruning.
#![warn(missing_docs)]
//!
//! Layers, from the top: [`engine`] runs [`recipe`]s of [`stages`]; stages call [`bench`](mod@bench) (and
//! the pruning and evaluation modules to come); [`model`] runs transformers in burn; [`io`]
//! reads models. [`backend`] is the one place that knows about concrete burn backends.

pub mod backend;
pub mod bench;
pub mod data;
pub mod engine;
pub mod error;
pub mod eval;
pub mod io;
pub mod model;
pub mod prune;
pub mod recipe;
pub mod report;
pub mod stages;

pub use error::{Error, Result};
