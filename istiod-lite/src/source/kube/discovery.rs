//! At which version the API server serves a CRD kind, from its discovery documents.
//!
//! A kind is read at the first version of [`Watched::versions`] the server serves it at. The
//! Istio security kinds are served at `v1` and `v1beta1` with one schema, the Gateway API kinds
//! at `v1` and older versions whose fields we read are the same; a cluster with older CRDs
//! (serving only `security.istio.io/v1beta1`) was taken for one without them, and every policy
//! ignored.
//!
//! Whether a kind is installed is decided here, from discovery, and not from a 404 on its list:
//! an API server still starting answers 404 for a CRD it will serve a moment later.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroup;

use super::Watched;

/// What discovery says of one kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// Served at this version, one we read.
    At(&'static str),
    /// Not served: its group is not served at all, or it is not among the group's resources.
    Absent,
    /// The group is served, but the kind at no version we read (or the group at none).
    Unreadable {
        /// The versions the server serves the group at.
        served: Vec<String>,
    },
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Asks the server about `w`'s group (`GET /apis/<group>`), then about the resources of its
/// versions (`GET /apis/<group>/<version>`). Any failure but a 404 on the group is an error
/// (a 404 on a version the group just listed is a CRD changing: asked again later).
pub(super) async fn discover(client: &kube::Client, w: &Watched) -> Result<Found, kube::Error> {
    let request = http::Request::get(format!("/apis/{}", w.group)).body(Vec::new()).map_err(kube::Error::HttpError)?;
    let group: APIGroup = match client.request(request).await {
        Ok(g) => g,
        Err(e) if is_not_found(&e) => return Ok(Found::Absent),
        Err(e) => return Err(e),
    };
    let served: Vec<String> = group.versions.iter().map(|v| v.version.clone()).collect();
    let has = async |version: &str| -> Result<bool, kube::Error> {
        let list = client.list_api_group_resources(&format!("{}/{version}", w.group)).await?;
        Ok(list.resources.iter().any(|r| r.name == w.plural))
    };
    for version in w.versions {
        if served.iter().any(|s| s == version) && has(version).await? {
            return Ok(Found::At(version));
        }
    }
    let readable = served.iter().any(|s| w.versions.contains(&s.as_str()));
    for version in served.iter().filter(|s| !w.versions.contains(&s.as_str())) {
        if has(version).await? {
            return Ok(Found::Unreadable { served });
        }
    }
    // A group served at no version we read may hold our kind in a form we cannot check: a
    // security kind must not be taken as absent then.
    if readable || !w.security() { Ok(Found::Absent) } else { Ok(Found::Unreadable { served }) }
}
