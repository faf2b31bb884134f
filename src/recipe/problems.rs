//! Problems found in a recipe: each with its file:line:col, collected and reported all at once.

use std::fmt;
use std::path::PathBuf;

/// A byte range in a source text.
pub(super) type Span = std::ops::Range<usize>;

/// One problem in a recipe, with its place.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The file it is in: the recipe, or a pipeline the recipe includes.
    pub file: PathBuf,
    /// Line, from 1 (0 for a problem with the whole source: a recipe that could not be read, a
    /// `--set`; then neither line nor column is shown).
    pub line: usize,
    /// Column in characters, from 1 (0 when the recipe file could not be read at all).
    pub col: usize,
    /// What is wrong, and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.file.display(), self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Every problem found (validation does not stop at the first); its message is the problems,
/// one per line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", lines(.0))]
pub struct RecipeError(pub Vec<Problem>);

impl RecipeError {
    /// The problems in file, line, column order (stable for problems at one place), without
    /// repeats.
    pub(super) fn sorted(mut problems: Vec<Problem>) -> Self {
        problems.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        problems.dedup();
        RecipeError(problems)
    }
}

/// The problems, one per line, for [`RecipeError`]'s message.
fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A source text with its path, to turn byte spans into line:column.
pub(super) struct Src {
    /// Where the text was read from (shown in problems).
    pub(super) path: PathBuf,
    /// The whole file.
    pub(super) text: String,
    /// A source with no lines to point at (a `--set` flag): its problems are about all of it.
    pub(super) whole: bool,
}

impl Src {
    /// A problem at the start of `span`: line and column (in characters) from 1.
    pub(super) fn at(&self, span: Span, message: impl Into<String>) -> Problem {
        if self.whole {
            return Problem {
                file: self.path.clone(),
                line: 0,
                col: 0,
                message: message.into(),
            };
        }
        let upto = &self.text[..span.start.min(self.text.len())];
        let line = upto.matches('\n').count() + 1;
        let col = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Problem {
            file: self.path.clone(),
            line,
            col,
            message: message.into(),
        }
    }
}
