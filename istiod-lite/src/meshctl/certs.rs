//! `meshctl certs`: the workload certificates each ztunnel holds, from its admin `/certs`.

use serde::Serialize;
use serde_json::Value;

use super::fetch::{self, FetchError};
use super::table;

/// Where ztunnel's admin endpoint listens by default.
pub const DEFAULT_ZTUNNEL_ADMIN: &str = "http://127.0.0.1:15000";

/// One certificate one ztunnel holds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeldCert {
    /// The ztunnel's admin URL.
    pub ztunnel: String,
    /// The SPIFFE identity.
    pub identity: String,
    /// Serial number, hex.
    pub serial: String,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Seconds left.
    pub expires_in_seconds: u64,
    /// SHA-256 of the root it chains to, hex.
    pub root_fingerprint: Option<String>,
}

/// Why a ztunnel's certificates could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// The admin endpoint did not answer with JSON.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The answer lacks a field.
    #[error("{url}: certificate {index}: missing `{field}`")]
    Shape {
        /// The URL.
        url: String,
        /// Position in the list.
        index: usize,
        /// The field.
        field: &'static str,
    },
}

/// Reads the `/certs` document of the ztunnel at `admin`.
pub fn parse(admin: &str, doc: &Value) -> Result<Vec<HeldCert>, CertsError> {
    let url = fetch::join(admin, "/certs");
    let list = doc["certificates"].as_array().ok_or(CertsError::Shape {
        url: url.clone(),
        index: 0,
        field: "certificates",
    })?;
    list.iter()
        .enumerate()
        .map(|(index, c)| {
            let missing = |field| CertsError::Shape { url: url.clone(), index, field };
            let secs = |field: &'static str| c[field].as_u64().ok_or_else(|| missing(field));
            Ok(HeldCert {
                ztunnel: admin.to_owned(),
                identity: c["identity"].as_str().ok_or_else(|| missing("identity"))?.to_owned(),
                serial: c["serial"].as_str().unwrap_or("-").to_owned(),
                not_before: table::rfc3339(secs("notBefore")?),
                not_after: table::rfc3339(secs("notAfter")?),
                expires_in_seconds: secs("expiresInSeconds")?,
                root_fingerprint: c["rootFingerprintSha256"].as_str().map(str::to_owned),
            })
        })
        .collect()
}

/// Fetches and reads the certificates of the ztunnel at `admin`.
pub async fn fetch(admin: &str) -> Result<Vec<HeldCert>, CertsError> {
    let doc = fetch::get_json(&fetch::join(admin, "/certs")).await?;
    parse(admin, &doc)
}

/// The table form; fingerprints shortened to 16 hex digits (JSON has them whole).
pub fn table(rows: &[HeldCert]) -> String {
    if rows.is_empty() {
        return "no certificates held\n".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|c| {
            vec![
                c.ztunnel.clone(),
                c.identity.clone(),
                c.serial.clone(),
                c.not_before.clone(),
                c.not_after.clone(),
                table::short_duration(std::time::Duration::from_secs(c.expires_in_seconds)),
                c.root_fingerprint.as_deref().map_or("-".into(), |f| f.chars().take(16).collect()),
            ]
        })
        .collect();
    table::render(&["ZTUNNEL", "IDENTITY", "SERIAL", "NOT BEFORE", "NOT AFTER", "LEFT", "ROOT SHA-256"], &cells)
}
