//! The set of stage kinds a run can use: the product's, plus any a caller (a test) registers.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::stage::StageKind;

#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Arc<dyn StageKind>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn register(&mut self, kind: Arc<dyn StageKind>) {
        self.kinds.insert(kind.name().to_string(), kind);
    }
    pub fn get(&self, name: &str) -> Option<&Arc<dyn StageKind>> {
        self.kinds.get(name)
    }
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
