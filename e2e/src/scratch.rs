//! Scratch directories for tests: unique per call, removed on drop (also when the test panics).

use std::path::{Path, PathBuf};

/// A directory under the system's temporary directory, removed with everything in it on drop.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// Creates a fresh directory named after `test`.
    pub fn new(test: &str) -> Self {
        let p = std::env::temp_dir().join(format!("{test}-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating scratch directory {}: {e}", p.display()));
        Scratch(p)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
