//! A pod added to a running mesh (`Mesh::add_pod`) is enrolled, gets its certificate and is
//! reachable through the mesh. Needs root and the binaries (`cargo build -p ztunnel -p
//! istiod-lite --bins`; `cargo test --workspace` builds them).

use std::time::Duration;

use e2e::mesh::{Mesh, MeshSpec, PodSpec};

type Res = Result<(), Box<dyn std::error::Error>>;

#[test]
fn a_pod_added_later_is_enrolled_and_reachable() {
    e2e::sandboxed_with(Duration::from_secs(120), || -> Res {
        let mut mesh = Mesh::start(MeshSpec {
            nodes: 2,
            ambient_namespaces: vec!["shop".into()],
            pods: vec![PodSpec::new(1, "shop", "client")],
            control_plane: true,
            ..MeshSpec::default()
        })?;
        let web = mesh.add_pod(PodSpec::new(2, "shop", "late"))?.clone();
        mesh.wait_pods_served(2, 1)?;
        let _server = web.netns.http_server(8080, "shop/late")?;
        // Its certificate comes from the CA a moment after ZDS hands the pod over (as at start).
        let id = "spiffe://cluster.local/ns/shop/sa/late";
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !mesh.config_dump(2)?["certificates"].to_string().contains(id) {
            assert!(std::time::Instant::now() < deadline, "no certificate for {id}: {}", mesh.config_dump(2)?);
            std::thread::sleep(Duration::from_millis(50));
        }
        for n in [1, 2] {
            mesh.wait_state_mentions(n, &web.ip.to_string())?;
        }
        let body = mesh.get(("shop", "client"), &format!("http://{}:8080/", web.ip))?;
        assert!(body.contains("hello from shop/late"), "{body}");
        Ok(())
    });
}
