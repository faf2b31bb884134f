//! The integration tests, one crate so that burn and ddp link once: each module is one area
//! (the former `tests/<area>.rs`), `common` their shared fixtures and the f64 reference model.

mod common;

mod bad_text;
mod cache_trust;
mod campaign;
mod cli;
mod cli_flags;
mod dropin;
mod engine;
mod errors;
mod eval;
mod exposure;
mod formats;
mod fuzz;
mod gguf_export;
mod golden;
mod heads;
mod layers;
mod llama_cpp;
mod model;
mod pipeline;
mod quants;
mod report;
mod resume;
mod slice;
mod train;
