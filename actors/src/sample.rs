//! The types both processes speak about measurements: a [`Sample`] as collectors make it,
//! the child sends it (`ipc`) and the supervisor keeps, exposes and uploads it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn new(name: impl Into<String>, value: f64) -> Self {
        Self { name: name.into(), tags: BTreeMap::new(), value }
    }

    /// Adds a tag (builder style).
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }
}
