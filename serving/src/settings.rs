//! `[serving]`: the serving layer's settings, with their defaults.
//!
//! ```text
//!  [serving] TOML ──serde (defaults; sizes parse themselves)──► ServingSettings
//! ```

use serde::Deserialize;
use tandem_shared::settings::ByteSize;

/// The `[serving]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServingSettings {
    /// Bound of the cache of published row groups (the view catalog's).
    pub cache_bytes: ByteSize,
}

impl Default for ServingSettings {
    fn default() -> Self {
        Self {
            cache_bytes: ByteSize(tandem_batch_layer::catalog::DEFAULT_CACHE_BYTES),
        }
    }
}
