//! The agent's record of enrolled pods on disk (one JSON file per sandbox in
//! `<state dir>/pods/`), so a restarted agent can re-adopt the pods whose
//! namespaces still exist and forget the others.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What is remembered about an enrolled pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    /// Sandbox id (`CNI_CONTAINERID`): the key DEL arrives with.
    pub container_id: String,
    /// Uid the pod has on ZDS.
    pub uid: String,
    /// Path of its network namespace.
    pub netns: String,
    /// The namespace that path opened when the pod was enrolled (device and inode). A path
    /// like `/proc/<pid>/ns/net` can name another namespace later (pid reuse), so a restored
    /// record is adopted only if its path still opens this one. Absent in records written
    /// before it existed: unknown, then only the check against the node's own namespace applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_id: Option<crate::netns::NetnsId>,
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Whether the pod's DNS is redirected to ztunnel: the decision made at enrollment (the
    /// global `--capture-dns` or the pod's `ambient.istio.io/dns-capture` annotation), so a
    /// restarted agent re-installs the same rules. Absent in records written before it
    /// existed: the agent then uses its global setting at restore time (and records that).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_dns: Option<bool>,
}

/// Errors reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// File system error.
    #[error("state file {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The directory of pod records.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Uses (and creates) `<root>/pods`.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        let dir = root.join("pods");
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io { path: dir.clone(), source })?;
        Ok(Self { dir })
    }

    fn file(&self, container_id: &str) -> PathBuf {
        // Container ids are hex from the runtime, but never trust a name
        // that becomes a path.
        let safe: String = container_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .collect();
        self.dir.join(format!("{safe}.json"))
    }

    /// Writes a record atomically (write then rename).
    pub fn save(&self, record: &PodRecord) -> Result<(), StateError> {
        let path = self.file(&record.container_id);
        let tmp = path.with_extension("tmp");
        let io = |source| StateError::Io { path: path.clone(), source };
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// Deletes a record; a missing one is fine.
    pub fn remove(&self, container_id: &str) -> Result<(), StateError> {
        let path = self.file(container_id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::Io { path, source: e }),
            _ => Ok(()),
        }
    }

    /// Every readable record. Unreadable files are reported and deleted: a
    /// half-written record from a crash must not block start-up.
    pub fn load(&self) -> Result<Vec<PodRecord>, StateError> {
        let io = |source| StateError::Io { path: self.dir.clone(), source };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(record) => out.push(record),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "discarding unreadable pod record");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_dir::TempDir;

    fn dir() -> (TempDir, StateDir) {
        let root = TempDir::new("agent-state");
        let state = StateDir::open(&root.0).unwrap();
        (root, state)
    }

    fn record(capture_dns: Option<bool>) -> PodRecord {
        PodRecord {
            container_id: "c1".into(),
            uid: "u1".into(),
            netns: "/var/run/netns/p1".into(),
            netns_id: None,
            name: "web".into(),
            namespace: "mesh".into(),
            service_account: "web-sa".into(),
            capture_dns,
        }
    }

    #[test]
    fn dns_decision_round_trips() {
        let (_d, state) = dir();
        for v in [Some(false), Some(true)] {
            state.save(&record(v)).unwrap();
            assert_eq!(state.load().unwrap(), vec![record(v)]);
        }
    }

    #[test]
    fn record_without_dns_decision_still_loads() {
        // As written by an agent from before the per-pod decision was recorded.
        let (_d, state) = dir();
        let old = r#"{"containerId": "c1", "uid": "u1", "netns": "/var/run/netns/p1",
            "name": "web", "namespace": "mesh", "serviceAccount": "web-sa"}"#;
        std::fs::write(state.file("c1"), old).unwrap();
        assert_eq!(state.load().unwrap(), vec![record(None)]);
        let saved = serde_json::to_string(&record(None)).unwrap();
        assert!(!saved.contains("captureDns"), "{saved}");
    }
}
