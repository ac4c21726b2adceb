//! The plugin-to-agent protocol: over a unix stream socket the plugin writes
//! one [`CniEvent`] as a line of JSON and reads one [`CniReply`] line back.

use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};

/// Longest line either side accepts.
pub const MAX_LINE: usize = 64 * 1024;

/// The CNI operation being reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CniCommand {
    /// The pod's network was just set up.
    Add,
    /// The pod's network is being torn down.
    Del,
    /// The runtime checks that the pod's setup is still in place.
    Check,
}

/// One pod event, as the plugin saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniEvent {
    /// ADD, DEL or CHECK.
    pub command: CniCommand,
    /// `CNI_CONTAINERID`: the sandbox id.
    pub container_id: String,
    /// `CNI_NETNS`: path of the pod's network namespace (may be empty on DEL).
    #[serde(default)]
    pub netns: String,
    /// `CNI_IFNAME`.
    #[serde(default)]
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    #[serde(default)]
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    #[serde(default)]
    pub pod_name: Option<String>,
    /// `K8S_POD_UID` from `CNI_ARGS`.
    #[serde(default)]
    pub pod_uid: Option<String>,
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniReply {
    /// The event was handled; for ADD, the pod may start.
    pub ok: bool,
    /// The pod is enrolled in the mesh.
    #[serde(default)]
    pub enrolled: bool,
    /// Why not, when `ok` is false.
    #[serde(default)]
    pub error: Option<String>,
}

impl CniReply {
    /// Success.
    pub fn ok(enrolled: bool) -> Self {
        Self { ok: true, enrolled, error: None }
    }

    /// Failure with a reason.
    pub fn refused(error: impl Into<String>) -> Self {
        Self { ok: false, enrolled: false, error: Some(error.into()) }
    }
}

/// Writes `value` as one JSON line.
pub fn write_line<T: Serialize>(mut w: impl Write, value: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Reads one JSON line of at most [`MAX_LINE`] bytes.
pub fn read_line<T: for<'de> Deserialize<'de>>(r: impl BufRead) -> io::Result<T> {
    let mut line = Vec::new();
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a message"));
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message longer than {MAX_LINE} bytes or unterminated"),
        ));
    }
    serde_json::from_slice(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
