//! The paths inside a queue directory (the files are described in `FORMAT.md`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The paths inside a queue directory.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    root: Arc<PathBuf>,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Layout {
        Layout {
            root: Arc::new(root.to_path_buf()),
        }
    }
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
    pub(crate) fn meta(&self) -> PathBuf {
        self.root.join("meta")
    }
    pub(crate) fn segments(&self) -> PathBuf {
        self.root.join("segments")
    }
    pub(crate) fn append_lock(&self) -> PathBuf {
        self.root.join("append.lock")
    }
    pub(crate) fn sync_lock(&self) -> PathBuf {
        self.root.join("sync.lock")
    }
    pub(crate) fn synced(&self) -> PathBuf {
        self.root.join("synced")
    }
    pub(crate) fn state_lock(&self) -> PathBuf {
        self.root.join("state.lock")
    }
    pub(crate) fn state_log(&self) -> PathBuf {
        self.root.join("state.log")
    }
    pub(crate) fn consumers(&self) -> PathBuf {
        self.root.join("consumers")
    }
    pub(crate) fn dead(&self) -> PathBuf {
        self.root.join("dead")
    }
    pub(crate) fn poisoned(&self) -> PathBuf {
        self.root.join("POISONED")
    }
}
