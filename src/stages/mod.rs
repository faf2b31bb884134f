//! The product's stage kinds: small adapters from parameters and inputs to library calls.

pub mod load;

use std::sync::Arc;

use crate::engine::registry::Registry;

/// Every stage kind this build provides.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(load::Load));
    r
}
