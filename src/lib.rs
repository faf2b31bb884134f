//! ddp: structured pruning of LLMs by Deterministic Differentiable Pruning.
//!
//! Layers, from the top: [`stages`] are the product's stage kinds, small adapters from typed
//! parameters to the library; [`engine`] plans and runs the graph a [`recipe`] expands to, with
//! a content-addressed cache, and knows nothing of models. Below the stages: [`prune`] (the
//! method: gates, training, masks, slicing, one-shot baselines), [`eval`] (quality), [`bench`](mod@bench)
//! (speed) and [`report`]; [`data`] turns text into token blocks; [`model`] runs transformers
//! in burn; [`io`] reads and writes models on disk; [`backend`] is the one place that names
//! concrete burn backends. docs/ARCHITECTURE.md draws the graph.
#![warn(missing_docs)]

pub mod artifacts;
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
