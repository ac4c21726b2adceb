//! A directory for one unit test, under the system temp dir, removed on drop (also when the
//! test panics).

use std::path::PathBuf;

/// The directory; its path is `.0`.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `<tmp>/<name>-<pid>-<random>`.
    pub(crate) fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("{name}-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
