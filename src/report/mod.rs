//! Tables over a run or a sweep, built from manifests / lock files (never from logs): the
//! report stage's rows and plots, and `ddp-run compare`'s table.

mod compare;
pub(crate) mod plots;
pub(crate) mod sweep;
pub(crate) mod write;

pub use compare::{compare, headline_metrics, Columns, CompareError, CompareOptions, Comparison};
