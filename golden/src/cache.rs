//! Sharing weight sets between cases. Four Qwen3-sized cases share one 8 MiB weights file:
//! reading and hashing it once per case would dominate loading, so each file is read once per
//! cache, even when many threads ask for it at the same time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::weights::{self, LoadedWeights};
use crate::{GoldenError, WeightsEntry};

/// One file's slot: its own lock, so that different files load in parallel while threads that
/// want the same file wait for the first one's read instead of repeating it.
type Slot = Arc<Mutex<Option<Arc<LoadedWeights>>>>;

/// Verified weight sets, keyed by file path and pinned sha256 (two manifests never share a slot
/// by accident). `Sync`: share one by reference across loader threads. Failed loads are not
/// remembered, so a later call reports the error again.
#[derive(Debug, Default)]
pub struct WeightsCache {
    slots: Mutex<HashMap<(PathBuf, String), Slot>>,
    files_read: AtomicUsize,
}

impl WeightsCache {
    pub fn new() -> WeightsCache {
        WeightsCache::default()
    }

    /// How many weights files this cache has read from disk (successfully or not).
    pub fn files_read(&self) -> usize {
        self.files_read.load(Ordering::Relaxed)
    }

    /// The verified weights of `entry`, stored at `path`, read on first use.
    pub(crate) fn get(&self, path: &Path, entry: &WeightsEntry) -> Result<Arc<LoadedWeights>, GoldenError> {
        // A panic in another loader cannot leave a slot half-written (it is only assigned a
        // finished value), so a poisoned lock is safe to keep using.
        let slot: Slot = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.entry((path.to_path_buf(), entry.sha256.to_ascii_lowercase())).or_default().clone()
        };
        let mut loaded = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(weights) = loaded.as_ref() {
            return Ok(weights.clone());
        }
        self.files_read.fetch_add(1, Ordering::Relaxed);
        let weights = Arc::new(weights::load(path, entry)?);
        *loaded = Some(weights.clone());
        Ok(weights)
    }
}
