//! `meshctl proxy-status`: every proxy connected to istiod-lite and, per type URL it
//! subscribes to, how far what it acknowledged is from what istiod-lite serves now.
//!
//! Resources are versioned one by one (a version is the digest of the resource), so "the
//! version a proxy acknowledged" is a set: name → version. A proxy is **behind** on a type by
//! the number of resources where that set disagrees with what is served now for its
//! subscription (every resource of the type for a wildcard subscription, else the names it
//! asked for): resources served at a version it has not acknowledged (new or changed), plus
//! resources it acknowledged that are no longer served (removals it has not acknowledged).
//! Behind 0 is `SYNCED`; otherwise `PENDING` while a push awaits its ACK, `NACKED` when the
//! last push was rejected, `STALE` when nothing is in flight (a push is owed).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// Where istiod-lite serves its debug JSON by default.
pub const DEFAULT_ISTIOD: &str = "http://127.0.0.1:15014";

/// How one proxy stands on one type URL.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TypeSync {
    /// The proxy's `node.id`.
    pub proxy: String,
    /// The proxy's address, as istiod-lite sees it.
    pub peer: Option<String>,
    /// The type URL.
    pub type_url: String,
    /// Resources served now for its subscription.
    pub served: usize,
    /// Resources it has acknowledged.
    pub acked: usize,
    /// Resources where the two disagree (see the module doc).
    pub behind: usize,
    /// Those resources: name → (acknowledged version, served version); `null` is "none".
    pub behind_by: BTreeMap<String, (Option<String>, Option<String>)>,
    /// Nonce of the push awaiting its ACK.
    pub pending_nonce: Option<String>,
    /// The proxy's message on the last rejected push, if still current.
    pub last_nack: Option<String>,
    /// `SYNCED`, `PENDING`, `NACKED` or `STALE`.
    pub status: &'static str,
}

/// Why `/debug/connections` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// A field is missing or has the wrong shape.
    #[error("/debug/connections: {0}")]
    Shape(String),
}

/// The short name of a type URL (`istio.workload.Address`).
pub fn short_type(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

fn versions(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default()
}

/// Computes every proxy's standing from istiod-lite's `/debug/connections` document.
pub fn proxy_status(doc: &Value) -> Result<Vec<TypeSync>, StatusError> {
    let connections =
        doc["connections"].as_array().ok_or_else(|| StatusError::Shape("no `connections` array".into()))?;
    let served_all = doc["served"]
        .as_object()
        .ok_or_else(|| StatusError::Shape("no `served` map (istiod-lite too old for proxy-status?)".into()))?;
    let mut out = Vec::new();
    for c in connections {
        let proxy = c["node_id"].as_str().unwrap_or_default().to_owned();
        let peer = c["peer"].as_str().map(str::to_owned);
        let types = c["types"].as_object().ok_or_else(|| StatusError::Shape(format!("{proxy}: no `types` map")))?;
        for (type_url, t) in types {
            let all = served_all.get(type_url).map(versions).unwrap_or_default();
            let served: BTreeMap<String, String> = if t["wildcard"].as_bool().unwrap_or(false) {
                all
            } else {
                let names: Vec<&str> = t["names"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                all.into_iter().filter(|(n, _)| names.contains(&n.as_str())).collect()
            };
            let acked = versions(&t["acked"]);
            let mut behind_by = BTreeMap::new();
            for (name, version) in &served {
                if acked.get(name) != Some(version) {
                    behind_by.insert(name.clone(), (acked.get(name).cloned(), Some(version.clone())));
                }
            }
            for (name, version) in &acked {
                if !served.contains_key(name) {
                    behind_by.insert(name.clone(), (Some(version.clone()), None));
                }
            }
            let pending_nonce = t["pending_nonce"].as_str().map(str::to_owned);
            let last_nack = t["last_nack"]["message"].as_str().map(str::to_owned);
            let status = match (behind_by.len(), &last_nack, &pending_nonce) {
                (0, _, _) => "SYNCED",
                (_, Some(_), _) => "NACKED",
                (_, None, Some(_)) => "PENDING",
                (_, None, None) => "STALE",
            };
            out.push(TypeSync {
                proxy: proxy.clone(),
                peer: peer.clone(),
                type_url: type_url.clone(),
                served: served.len(),
                acked: acked.len(),
                behind: behind_by.len(),
                behind_by,
                pending_nonce,
                last_nack,
                status,
            });
        }
    }
    out.sort_by(|a, b| (&a.proxy, &a.type_url).cmp(&(&b.proxy, &b.type_url)));
    Ok(out)
}

/// The table form.
pub fn table(rows: &[TypeSync]) -> String {
    if rows.is_empty() {
        return "no proxies connected\n".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.proxy.clone(),
                r.peer.clone().unwrap_or_else(|| "-".into()),
                short_type(&r.type_url).to_owned(),
                r.status.to_owned(),
                format!("{}/{}", r.acked, r.served),
                r.behind.to_string(),
                r.pending_nonce.clone().unwrap_or_else(|| "-".into()),
                r.last_nack.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    super::table::render(
        &["PROXY", "PEER", "TYPE", "STATUS", "ACKED/SERVED", "BEHIND", "PENDING NONCE", "LAST NACK"],
        &cells,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn behind_counts_changed_new_and_removed_resources() {
        let doc = json!({
            "connections": [{
                "node_id": "ztunnel~node-a", "peer": "10.0.0.1:5000",
                "types": {
                    "t/A": {"wildcard": true, "names": [], "acked": {"x": "1", "y": "1", "gone": "1"},
                            "pending_nonce": "7", "last_nack": null},
                    "t/B": {"wildcard": false, "names": ["p"], "acked": {"p": "2"}, "pending_nonce": null, "last_nack": null},
                }
            }],
            "served": {"t/A": {"x": "1", "y": "2", "new": "1"}, "t/B": {"p": "2", "q": "9"}},
        });
        let rows = proxy_status(&doc).unwrap();
        assert_eq!(rows.len(), 2);
        let a = &rows[0];
        assert_eq!((a.served, a.acked, a.behind, a.status), (3, 3, 3, "PENDING"));
        assert_eq!(a.behind_by["y"], (Some("1".into()), Some("2".into())));
        assert_eq!(a.behind_by["new"], (None, Some("1".into())));
        assert_eq!(a.behind_by["gone"], (Some("1".into()), None));
        // Explicit subscription: only the names asked for count.
        let b = &rows[1];
        assert_eq!((b.served, b.behind, b.status), (1, 0, "SYNCED"));
        let t = table(&rows);
        let first: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(first, ["ztunnel~node-a", "10.0.0.1:5000", "A", "PENDING", "3/3", "3", "7", "-"], "{t}");
    }
}
