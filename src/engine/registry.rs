//! The set of stage kinds a run can use: the product's, plus any a caller (a test) registers.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::stage::StageKind;

/// Stage kinds by name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Arc<dyn StageKind>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `kind` under its name, replacing any kind already registered by that name.
    pub fn register(&mut self, kind: Arc<dyn StageKind>) {
        self.kinds.insert(kind.name().to_string(), kind);
    }

    /// The kind called `name`, if registered.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn StageKind>> {
        self.kinds.get(name)
    }

    /// Registered kind names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.kinds.keys().map(String::as_str).collect()
    }

    /// Why `name` cannot be used, for a validation message.
    pub fn unknown_kind_message(&self, name: &str) -> String {
        format!(
            "unknown stage kind `{name}` (available: {})",
            self.names().join(", ")
        )
    }
}
