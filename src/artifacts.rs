//! The names of the files stages write into their cache entries and read from their inputs'
//! entries, in one place: what each holds, which stage kind writes it and which read it. A leaf
//! module, so that `stages` and `report` (which reads entries too) share it without depending
//! on each other.

/// `model.json`: where the model is (`location`: `cache_relative`, `entry_relative` or `path`)
/// and its config. Written by `load` (with the source, format, dtype and parameter counts) and
/// by `slice` (pointing at its [`MODEL_DIR`]); copied unchanged into their entries by
/// `gate-insert`, `calibrate`, `anneal-train`, `oneshot` and `threshold`, so every stage down
/// the chain finds its model (`stages::common::ModelRef`, one typed shape for all writers).
pub const MODEL: &str = "model.json";

/// `model/`: the sliced model as a Hugging Face directory (safetensors, config.json,
/// tokenizer.json). Written by `slice`; read through [`MODEL`] by `evaluate` and `benchmark`.
pub const MODEL_DIR: &str = "model";

/// `model.gguf`: the sliced model as a GGUF for llama.cpp (per-layer widths as its `deci`
/// architecture). Written by `export` when its `formats` include "gguf".
pub const MODEL_GGUF: &str = "model.gguf";

/// `gates.json`: the gate state (`prune::train::GateState`: families, targets, z, multipliers,
/// step). Written by `gate-insert` (initial), `anneal-train` (trained) and `oneshot` (scores);
/// read by `anneal-train`, `oneshot` (from `gate-insert`) and `threshold`.
pub const GATES: &str = "gates.json";

/// `checkpoint.json`: the gate state at the last checkpoint of an unfinished run. Written and
/// read (to resume after a kill) by `anneal-train` in its own output directory; removed when it
/// finishes.
pub const CHECKPOINT: &str = "checkpoint.json";

/// `train_log.csv`: one row per step and gate family (loss, ce, kl, mu, lr_z, expected
/// sparsity, multipliers, binarity, seconds, tokens). Written by `anneal-train`; read by the
/// report for its training curves.
pub const TRAIN_LOG: &str = "train_log.csv";

/// `blocks.json`: the calibration token blocks (`data::Blocks`: train and validation). Written
/// by `calibrate`; read by `anneal-train` (training blocks) and `evaluate` (to refuse
/// overlapping evaluation text).
pub const BLOCKS: &str = "blocks.json";

/// `activation_stats.json`: input statistics of every o_proj and down_proj
/// (`prune::oneshot::LayerStats` per layer). Written by `calibrate` when `activation_stats > 0`;
/// read by `oneshot` (wanda-sp, flap).
pub const ACTIVATION_STATS: &str = "activation_stats.json";

/// `teacher.json`: the header (k, blocks, positions) of the cached teacher distributions.
/// Written with [`TEACHER_DATA`] by `calibrate` when `teacher_topk > 0` (through
/// `prune::teacher::TopK::write`, which names both files itself: keep them in step); read by
/// `anneal-train` with `teacher = "cached"`.
pub const TEACHER_HEADER: &str = "teacher.json";

/// `teacher.bin`: the cached teacher's top-k token ids, log-probabilities and tail masses
/// (little-endian), described by [`TEACHER_HEADER`]. Written by `calibrate`; read by
/// `anneal-train`.
pub const TEACHER_DATA: &str = "teacher.bin";

/// `mask.json`: the final mask (`prune::mask::FinalMask`: per layer, the kept scale of every
/// head, channel and expert channel; 0 removes). Written by `threshold`; read by `slice` and by
/// the report for its kept-unit maps.
pub const MASK: &str = "mask.json";

/// `eval.json`: the evaluation results (perplexity, cloze and task accuracies). Written by
/// `evaluate`; its metrics reach the report through the manifest.
pub const EVAL: &str = "eval.json";

/// `eval.md`: the evaluation as a Markdown table, with deltas against the dense model. Written
/// by `evaluate`, for people.
pub const EVAL_MD: &str = "eval.md";

/// `bench.json`: the throughput comparison (`bench::Comparison`). Written by `benchmark`; its
/// metrics reach the report through the manifest.
pub const BENCH: &str = "bench.json";

/// `bench.md`: the comparison as a Markdown table. Written by `benchmark`, for people.
pub const BENCH_MD: &str = "bench.md";

/// `report.md`: the run's report (table and plots). Written by `report`.
pub const REPORT_MD: &str = "report.md";

/// `report.json`: the report's title, rows and plot paths. Written by `report`.
pub const REPORT_JSON: &str = "report.json";

/// `report.csv`: the report's table. Written by `report`.
pub const REPORT_CSV: &str = "report.csv";
