//! The gate families: what a family of gates removes (attention heads, FFN channels, routed
//! expert channels).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a gate family's gates remove; written by name (`"heads"`, ...) in `gates.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FamilyKind {
    /// Attention: query heads, or whole KV groups.
    Heads,
    /// Channels of the dense FFN (in a MoE layer: of its shared expert).
    Channels,
    /// Channels of the routed experts.
    Experts,
}

impl FamilyKind {
    /// The family's name in `gates.json` and in metric names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Heads => "heads",
            Self::Channels => "channels",
            Self::Experts => "experts",
        }
    }
}

impl fmt::Display for FamilyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
