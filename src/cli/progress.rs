//! Progress bars on a terminal (hidden when stderr is not one, so logs stay clean).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use ddp::io::ModelFiles;
use ddp::model::load;

/// A bar with `template` on a terminal, hidden otherwise or when `show` is false.
fn bar(len: u64, show: bool, template: &str) -> ProgressBar {
    let bar = if show && std::io::stderr().is_terminal() {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    // The templates are constants of this file, so a parse failure is a bug caught by any run.
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    bar
}

/// A bar of benchmark runs or rounds.
pub fn rounds(what: &str) -> ProgressBar {
    bar(
        0,
        true,
        &format!("{what} {{pos}}/{{len}} [{{bar:30}}] eta {{eta}}"),
    )
}

/// A bar of tensors loaded, shown for models of more than 50 tensors.
pub fn loading(files: &ModelFiles) -> ProgressBar {
    let n = load::tensor_count(files.weights.as_ref());
    bar(
        n,
        n > 50,
        "loading {pos}/{len} tensors [{bar:30}] {per_sec} eta {eta}",
    )
}

/// A bar of scored sequences, its message the task being scored.
pub fn sequences() -> ProgressBar {
    bar(
        0,
        true,
        "{msg:>10} {pos}/{len} sequences [{bar:30}] {per_sec} eta {eta}",
    )
}
