//! The recipes the integration tests run, in one place (each test writes one into a temporary
//! directory; fixture paths are filled in).

use std::path::Path;

use super::fixtures;

/// The stories260k pipeline (load .. slice) with a threshold rule and slice layout.
pub fn stories(rule: &str, uniform: bool) -> String {
    format!(
        r#"
name = "stories"
[model]
source = "{model}"
[data]
calibration = "{data}"
[stages.load]
kind = "load"
model = "${{model.source}}"
[stages.gate-insert]
kind = "gate-insert"
after = ["load"]
sparsity = 0.4
[stages.calibrate]
kind = "calibrate"
after = ["load"]
data = "${{data.calibration}}"
seq_len = 64
max_tokens = 8000
[stages.anneal-train]
kind = "anneal-train"
after = ["gate-insert", "calibrate"]
steps = 30
warmup = 3
checkpoint_every = 10
[stages.threshold]
kind = "threshold"
after = ["anneal-train"]
rule = "{rule}"
multiple = 8
[stages.slice]
kind = "slice"
after = ["threshold"]
uniform = {uniform}
multiple = 8
"#,
        model = fixtures().join("stories260k").display(),
        data = fixtures().join("corpora/sotu/*.txt").display(),
    )
}

/// stories260k through load -> gate-insert (0.5) -> calibrate -> anneal-train (`steps`, `train`
/// appended to its table), then `tail` (more tables).
pub fn training(steps: usize, train: &str, tail: &str) -> String {
    format!(
        r#"
name = "training"
[stages.load]
kind = "load"
model = "{model}"
[stages.gate-insert]
kind = "gate-insert"
after = ["load"]
sparsity = 0.5
[stages.calibrate]
kind = "calibrate"
after = ["load"]
data = "{data}"
seq_len = 32
max_tokens = 1500
[stages.anneal-train]
kind = "anneal-train"
after = ["gate-insert", "calibrate"]
steps = {steps}
warmup = 1
mu_end = 0.5
{train}
{tail}
"#,
        model = fixtures().join("stories260k").display(),
        data = fixtures().join("corpora/sotu/*.txt").display(),
    )
}

/// The tiny-MoE pipeline: DDP and wanda-sp, each thresholded and sliced.
pub fn moe(model_dir: &Path) -> String {
    format!(
        r#"
name = "moe"
[model]
source = "{model}"
[stages.load]
kind = "load"
model = "${{model.source}}"
[stages.gate-insert]
kind = "gate-insert"
after = ["load"]
sparsity = 0.4
[stages.calibrate]
kind = "calibrate"
after = ["load"]
data = "{data}"
seq_len = 32
max_tokens = 3000
activation_stats = 4
[stages.anneal-train]
kind = "anneal-train"
after = ["gate-insert", "calibrate"]
steps = 25
warmup = 3
[stages.threshold]
kind = "threshold"
after = ["anneal-train"]
rule = "topk"
[stages.slice]
kind = "slice"
after = ["threshold"]
[stages.oneshot]
kind = "oneshot"
after = ["gate-insert", "calibrate"]
method = "wanda-sp"
[stages.threshold-oneshot]
kind = "threshold"
after = ["oneshot"]
rule = "uniform"
multiple = 4
[stages.slice-oneshot]
kind = "slice"
after = ["threshold-oneshot"]
uniform = true
multiple = 4
"#,
        model = model_dir.display(),
        data = fixtures().join("corpora/sotu/*.txt").display(),
    )
}

/// A stories260k sweep: DDP and two one-shot baselines at two sparsities, evaluated,
/// benchmarked and reported; `eval_data` is the evaluation text.
pub fn sweep(eval_data: &str) -> String {
    format!(
        r#"
name = "sweep"
[model]
source = "{model}"
[data]
calibration = "{calib}"
evaluation = "{eval}"
[sweep]
sparsity = [0.3, 0.5]
oneshot = {{ param = "method", values = ["wanda-sp", "magnitude"], stages = ["oneshot"] }}
[stages.load]
kind = "load"
model = "${{model.source}}"
[stages.gate-insert]
kind = "gate-insert"
after = ["load"]
[stages.calibrate]
kind = "calibrate"
after = ["load"]
data = "${{data.calibration}}"
seq_len = 64
max_tokens = 4000
activation_stats = 8
[stages.anneal-train]
kind = "anneal-train"
after = ["gate-insert", "calibrate"]
steps = 12
warmup = 2
[stages.oneshot]
kind = "oneshot"
after = ["gate-insert", "calibrate"]
[stages.threshold]
kind = "threshold"
after = ["anneal-train"]
rule = "topk"
[stages.threshold-oneshot]
kind = "threshold"
after = ["oneshot"]
rule = "topk"
[stages.slice]
kind = "slice"
after = ["threshold"]
[stages.slice-oneshot]
kind = "slice"
after = ["threshold-oneshot"]
[stages.evaluate-dense]
kind = "evaluate"
after = ["load", "calibrate"]
data = "${{data.evaluation}}"
seq_len = 128
max_tokens = 1024
cloze_items = 8
max_len = 64
[stages.evaluate]
kind = "evaluate"
after = ["slice", "calibrate", "evaluate-dense"]
data = "${{data.evaluation}}"
seq_len = 128
max_tokens = 1024
cloze_items = 8
max_len = 64
[stages.evaluate-oneshot]
kind = "evaluate"
after = ["slice-oneshot", "calibrate", "evaluate-dense"]
data = "${{data.evaluation}}"
seq_len = 128
max_tokens = 1024
cloze_items = 8
max_len = 64
[stages.benchmark]
kind = "benchmark"
inputs = {{ model = "slice", dense = "load" }}
prompt_lens = [16]
batches = [1]
decode_tokens = 4
repeats = 2
[stages.benchmark-oneshot]
kind = "benchmark"
inputs = {{ model = "slice-oneshot", dense = "load" }}
prompt_lens = [16]
batches = [1]
decode_tokens = 4
repeats = 2
[stages.report]
kind = "report"
after = ["evaluate-dense", "evaluate", "evaluate-oneshot", "benchmark", "benchmark-oneshot"]
"#,
        model = fixtures().join("stories260k").display(),
        calib = fixtures().join("corpora/sotu/*.txt").display(),
        eval = eval_data,
    )
}
