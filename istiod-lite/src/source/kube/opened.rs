//! Which watches the API server has opened.
//!
//! kube's watcher yields nothing when a watch request succeeds: a kind whose watch failed (an
//! API server restart) and came back without a change to its objects stayed failing, its
//! recovery unlogged, and its next failure, being "the same problem", was not reported at all.
//! The source's client is wrapped to say, per kind, when a watch request is answered 2xx.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use kube::client::Body;
use tokio::sync::mpsc;

use super::{WATCHED, Watched};

/// `client`, sending on `opened` the kind of each watch request the server answers 2xx.
/// Needs a Tokio runtime (the client spawns its buffer task).
pub(super) fn observed(client: kube::Client, opened: mpsc::UnboundedSender<&'static Watched>) -> kube::Client {
    let namespace = client.default_namespace().to_owned();
    kube::Client::new(Observed { client, opened }, namespace)
}

#[derive(Clone)]
struct Observed {
    client: kube::Client,
    opened: mpsc::UnboundedSender<&'static Watched>,
}

// tonic re-exports tower's `Service`, the trait `kube::Client::new` takes.
impl tonic::codegen::Service<http::Request<Body>> for Observed {
    type Response = http::Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The wrapped client has its own buffer, which waits for readiness in `send`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let watched = watched(request.uri());
        let (client, opened) = (self.client.clone(), self.opened.clone());
        Box::pin(async move {
            let response = client.send(request).await?;
            if let Some(w) = watched
                && response.status().is_success()
            {
                // Closed only once the source is gone.
                let _ = opened.send(w);
            }
            Ok(response)
        })
    }
}

/// The kind a request watches, if it is a watch of one of ours (kube's `watch=true`).
fn watched(uri: &http::Uri) -> Option<&'static Watched> {
    uri.query()?.split('&').find(|kv| *kv == "watch=true" || *kv == "watch=1")?;
    WATCHED.iter().find(|w| w.versions.iter().any(|v| w.path_at(v) == uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    #[test]
    fn watches_of_our_kinds_are_told_from_lists_and_other_paths() {
        let kind = |uri: &str| watched(&uri.parse().unwrap()).map(|w| w.kind);
        assert_eq!(kind("/api/v1/pods?&watch=true&timeoutSeconds=290&resourceVersion=7"), Some(Kind::Pod));
        assert_eq!(
            kind("/apis/gateway.networking.k8s.io/v1beta1/referencegrants?watch=true"),
            Some(Kind::ReferenceGrant)
        );
        assert_eq!(
            kind("/apis/security.istio.io/v1beta1/authorizationpolicies?watch=true"),
            Some(Kind::AuthorizationPolicy)
        );
        assert_eq!(kind("/api/v1/pods?limit=500"), None);
        assert_eq!(kind("/api/v1/pods?watch=false"), None);
        assert_eq!(kind("/api/v1/configmaps?watch=true"), None);
        assert_eq!(kind("/api/v1/namespaces/shop/pods?watch=true"), None);
    }
}
