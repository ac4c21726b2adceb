//! meshctl's `proxy-status`, `certs` and `check` against real components on loopback:
//! istiod-lite started by `serve::start` with real xDS clients connected, ztunnel's admin
//! server listing a real certificate store, host checks on temporary CNI directories and
//! ports the test binds; and the meshctl binary run as an operator would.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use istiod_lite::ca::CaSigner;
use istiod_lite::config::Config;
use istiod_lite::meshctl::check::{self, Level};
use istiod_lite::meshctl::{certs, fetch, proxy_status};
use proto::istio::workload::Address;
use support::{TempDir, samples_dir};
use tonic::transport::Endpoint;
use xds::{Client, ClientHandle, Names, cache_handler};

const WAIT: Duration = Duration::from_secs(10);

/// istiod-lite on loopback over the samples plus one bad document, plaintext xDS on.
fn config(dir: &TempDir) -> Config {
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    for f in ["namespaces.yaml", "shop.yaml", "policies.yaml"] {
        dir.write(&format!("config/{f}"), &std::fs::read_to_string(samples_dir().join(f)).unwrap());
    }
    dir.write(
        "config/bad.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: typo\n  namespace: shop\nspec:\n  acton: DENY\n",
    );
    dir.write("tokens.yaml", "node-a: node-a-bootstrap-token-0123456789\n");
    let p = |s: &str| dir.path().join(s).to_string_lossy().into_owned();
    Config::try_parse_from([
        "istiod-lite".to_owned(),
        "--config-dir".into(),
        p("config"),
        "--ca-dir".into(),
        p("ca"),
        "--bootstrap-tokens".into(),
        p("tokens.yaml"),
        "--tls-addr".into(),
        "127.0.0.1:0".into(),
        "--plaintext-addr".into(),
        "127.0.0.1:0".into(),
        "--monitoring-addr".into(),
        "127.0.0.1:0".into(),
    ])
    .unwrap()
}

/// An xDS client of Addresses; `accept` false NACKs every push.
fn xds_client(addr: SocketAddr, node: &str, accept: bool) -> ClientHandle {
    let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let (_cache, handler) =
        cache_handler(move |_: &str, a: Address| if accept { Ok(a) } else { Err("refused by the test".to_owned()) });
    let node = proto::envoy::config::core::v3::Node { id: node.to_owned(), ..Default::default() };
    Client::new(node)
        .subscribe(proto::ADDRESS_TYPE_URL, Names::Wildcard, handler)
        .spawn_with(move || std::future::ready(Ok(channel.clone())))
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the meshctl binary; returns exit code and stdout.
async fn meshctl(args: Vec<String>) -> (i32, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_meshctl")).args(&args).output().unwrap()
    })
    .await
    .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_shows_synced_and_nacking_proxies() {
    let dir = TempDir::new("meshctl-status");
    let cfg = config(&dir);
    let running = istiod_lite::serve::start(&cfg).await.unwrap();
    let xds_addr = running.plaintext_addr.unwrap();
    let base = format!("http://{}", running.monitoring_addr);
    let good = xds_client(xds_addr, "ztunnel~node-a", true);
    let bad = xds_client(xds_addr, "ztunnel~node-b", false);
    until("an ACK and a NACK", || {
        good.status().types[proto::ADDRESS_TYPE_URL].acks >= 1 && bad.status().types[proto::ADDRESS_TYPE_URL].nacks >= 1
    })
    .await;
    let served = running.translator.lock().unwrap().addresses().len();
    assert!(served >= 3);

    let doc = fetch::get_json(&fetch::join(&base, "/debug/connections")).await.unwrap();
    let rows = proxy_status::proxy_status(&doc).unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let (a, b) = (&rows[0], &rows[1]);
    assert_eq!((a.proxy.as_str(), a.type_url.as_str()), ("ztunnel~node-a", proto::ADDRESS_TYPE_URL));
    assert_eq!((a.status, a.served, a.acked, a.behind, a.last_nack.as_deref()), ("SYNCED", served, served, 0, None));
    assert_eq!(b.proxy, "ztunnel~node-b");
    assert_eq!((b.status, b.served, b.acked, b.behind), ("NACKED", served, 0, served));
    assert!(b.last_nack.as_deref().unwrap().contains("refused by the test"), "{b:?}");
    assert!(b.behind_by.values().all(|(acked, now)| acked.is_none() && now.is_some()));

    // A change: the accepting proxy acknowledges it and is synced again at the new count.
    dir.write(
        "config/extra.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: extra\n  namespace: shop\nspec:\n  nodeName: node-a\n  serviceAccountName: catalog\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: 10.244.1.77\n  phase: Running\n",
    );
    until("the extra pod served", || running.translator.lock().unwrap().addresses().len() == served + 1).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let doc = fetch::get_json(&fetch::join(&base, "/debug/connections")).await.unwrap();
        let rows = proxy_status::proxy_status(&doc).unwrap();
        if rows[0].status == "SYNCED" && rows[0].acked == served + 1 {
            assert_eq!(rows[1].behind, served + 1);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never synced: {rows:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The binary: a table and JSON of the same.
    let (code, table) = meshctl(vec!["proxy-status".into(), "--istiod".into(), base.clone()]).await;
    assert_eq!(code, 0, "{table}");
    let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0][..4], ["PROXY", "PEER", "TYPE", "STATUS"]);
    let a = lines.iter().find(|l| l[0] == "ztunnel~node-a").unwrap();
    let counts = format!("{0}/{0}", served + 1);
    assert_eq!(a[2..6], ["istio.workload.Address", "SYNCED", counts.as_str(), "0"]);
    let b = lines.iter().find(|l| l[0] == "ztunnel~node-b").unwrap();
    assert_eq!(b[3], "NACKED");
    let (code, json) = meshctl(vec!["proxy-status".into(), "--istiod".into(), base, "-o".into(), "json".into()]).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[1]["behind"], served + 1);
    assert_eq!(v[1]["status"], "NACKED");
}

/// A certificate for `id` from `ca`, as ztunnel would hold it.
fn workload_cert(ca: &CaSigner, id: &str, ttl: Duration) -> hbone::WorkloadCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let chain = ca.sign(&csr, &id.parse().unwrap(), Some(ttl)).unwrap();
    hbone::WorkloadCert::from_pem(chain.join("").as_bytes(), key.serialize_pem().as_bytes()).unwrap()
}

/// The leaf's serial number, hex, read from its DER by hand (Certificate → TBSCertificate →
/// optional `[0]` version → INTEGER serial), independently of the code under test.
fn serial_hex(cert: &hbone::WorkloadCert) -> String {
    fn header(d: &[u8]) -> (u8, usize, usize) {
        let (tag, first) = (d[0], d[1] as usize);
        if first < 0x80 {
            return (tag, 2, first);
        }
        let n = first & 0x7f;
        (tag, 2 + n, d[2..2 + n].iter().fold(0, |a, b| (a << 8) | *b as usize))
    }
    let der: &[u8] = &cert.certified_key().cert[0];
    let (_, h, _) = header(der); // Certificate SEQUENCE
    let tbs = &der[h..];
    let (_, h, _) = header(tbs); // TBSCertificate SEQUENCE
    let mut rest = &tbs[h..];
    let (tag, h, len) = header(rest);
    if tag == 0xa0 {
        rest = &rest[h + len..];
    }
    let (tag, h, len) = header(rest);
    assert_eq!(tag, 0x02, "serial INTEGER");
    let mut bytes = &rest[h..h + len];
    while bytes.len() > 1 && bytes[0] == 0 {
        bytes = &bytes[1..];
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn certs_lists_what_a_ztunnel_holds() {
    let dir = TempDir::new("meshctl-certs");
    let ca = CaSigner::load_or_generate(&dir.path().join("ca"), "cluster.local").unwrap();
    let other = CaSigner::load_or_generate(&dir.path().join("other-ca"), "cluster.local").unwrap();
    let roots = hbone::TrustRoots::from_der(vec![ca.root_der(), other.root_der()]).unwrap();
    let store = hbone::CertStore::new(roots);
    let catalog = workload_cert(&ca, "spiffe://cluster.local/ns/shop/sa/catalog", Duration::from_secs(3600));
    let curl = workload_cert(&other, "spiffe://cluster.local/ns/tools/sa/curl", Duration::from_secs(600));
    let (catalog_serial, curl_serial) = (serial_hex(&catalog), serial_hex(&curl));
    let (catalog_not_after, catalog_not_before) = (catalog.not_after(), catalog.not_before());
    store.insert(catalog);
    store.insert(curl);

    // ztunnel's admin server, answering /certs as ztunnel's admin routes do.
    let (listener, addr) = ztunnel::admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let routes: ztunnel::admin::Routes = Arc::new(move |call| match call.path {
        "/certs" => {
            ztunnel::admin::Reply::json(&ztunnel::cert_report::certs_json(&store, std::time::SystemTime::now()))
        }
        _ => ztunnel::admin::Reply::error(http::StatusCode::NOT_FOUND, "no\n"),
    });
    let server = tokio::spawn(ztunnel::admin::serve(listener, routes));
    let admin = format!("http://{addr}");

    let raw = fetch::get(&fetch::join(&admin, "/certs")).await.unwrap().1;
    let raw = String::from_utf8(raw.to_vec()).unwrap();
    // No key material, and no field that would hold some (outside `fetchFailures`, whose
    // fields are failure reasons such as `key_mismatch`).
    fn field_names(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => m.iter().filter(|(k, _)| *k != "fetchFailures").for_each(|(k, v)| {
                out.push(k.to_lowercase());
                field_names(v, out);
            }),
            serde_json::Value::Array(a) => a.iter().for_each(|v| field_names(v, out)),
            _ => {}
        }
    }
    let mut names = Vec::new();
    field_names(&serde_json::from_str(&raw).unwrap(), &mut names);
    assert!(!raw.contains("PRIVATE KEY") && !names.iter().any(|n| n.contains("key")), "{raw}");

    let held = certs::fetch(&admin).await.unwrap();
    assert_eq!(held.len(), 2, "{held:#?}");
    let (c, u) = (&held[0], &held[1]);
    assert_eq!(c.identity, "spiffe://cluster.local/ns/shop/sa/catalog");
    assert_eq!(c.serial, catalog_serial);
    assert_eq!(u.serial, curl_serial);
    assert_ne!(c.serial, u.serial);
    let unix = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(c.not_after, istiod_lite::meshctl::table::rfc3339(unix(catalog_not_after)));
    assert_eq!(c.not_before, istiod_lite::meshctl::table::rfc3339(unix(catalog_not_before)));
    assert!((3590..=3600).contains(&c.expires_in_seconds), "{c:?}");
    assert!((590..=600).contains(&u.expires_in_seconds), "{u:?}");
    // Each names the root it chains to.
    assert_eq!(c.root_fingerprint.as_deref(), Some(ztunnel::cert_report::sha256_hex(&ca.root_der()).as_str()));
    assert_eq!(u.root_fingerprint.as_deref(), Some(ztunnel::cert_report::sha256_hex(&other.root_der()).as_str()));

    // The binary, over two "ztunnels" (the same one twice): a row per certificate each.
    let (code, out) =
        meshctl(vec!["certs".into(), "--ztunnel-admin".into(), admin.clone(), "--ztunnel-admin".into(), admin.clone()])
            .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().filter(|l| l.contains("sa/catalog") && l.contains(&catalog_serial)).count(), 2, "{out}");
    assert!(out.lines().next().unwrap().starts_with("ZTUNNEL"));
    let (code, out) = meshctl(vec!["certs".into(), "--ztunnel-admin".into(), admin, "-o".into(), "json".into()]).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[1]["serial"], curl_serial);
    server.abort();

    // A ztunnel that is not there: an error naming the address.
    let (code, _) = meshctl(vec!["certs".into(), "--ztunnel-admin".into(), format!("http://{addr}")]).await;
    assert_ne!(code, 0);
}

#[test]
fn sha256_of_a_known_vector() {
    assert_eq!(
        ztunnel::cert_report::sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

fn conflist(dir: &TempDir, name: &str, types: &[&str]) {
    let plugins: Vec<_> = types.iter().map(|t| serde_json::json!({"type": t})).collect();
    dir.write(name, &serde_json::json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": plugins}).to_string());
}

#[test]
fn cni_chain_check() {
    let dir = TempDir::new("meshctl-cni");
    let c = check::cni_chain(dir.path(), "ztunnel-cni");
    assert_eq!(c.level, Level::Fail);
    assert!(c.detail.contains("no *.conflist"), "{c:?}");

    conflist(&dir, "10-bridge.conflist", &["bridge", "portmap"]);
    let c = check::cni_chain(dir.path(), "ztunnel-cni");
    assert_eq!(c.level, Level::Fail);
    assert!(c.detail.contains("not chained"), "{c:?}");

    conflist(&dir, "10-bridge.conflist", &["ztunnel-cni", "bridge"]);
    assert!(check::cni_chain(dir.path(), "ztunnel-cni").detail.contains("after the interface plugin"));

    conflist(&dir, "10-bridge.conflist", &["bridge", "portmap", "ztunnel-cni"]);
    let c = check::cni_chain(dir.path(), "ztunnel-cni");
    assert_eq!(c.level, Level::Ok, "{c:?}");
    assert!(c.detail.contains("bridge → portmap → ztunnel-cni"), "{c:?}");

    // The runtime reads the lexically first list: one without our plugin before it wins.
    conflist(&dir, "05-other.conflist", &["ptp"]);
    assert_eq!(check::cni_chain(dir.path(), "ztunnel-cni").level, Level::Fail);

    dir.write("00-broken.conflist", "{not json");
    assert!(check::cni_chain(dir.path(), "ztunnel-cni").detail.contains("not JSON"));
    assert_eq!(check::cni_chain(&dir.path().join("missing"), "ztunnel-cni").level, Level::Fail);
}

#[test]
fn port_check_sees_the_owner() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let me = std::fs::read_to_string("/proc/self/comm").unwrap().trim().to_owned();
    let pid = std::process::id();
    let c = check::port(port, "ztunnel");
    assert_eq!(c.level, Level::Fail, "{c:?}");
    assert_eq!(c.detail, format!("in use by {me} (pid {pid}), not ztunnel"));
    // Held by the allowed owner: fine.
    let c = check::port(port, &me);
    assert_eq!(c.level, Level::Ok, "{c:?}");
    drop(l);
    let c = check::port(port, "ztunnel");
    assert_eq!((c.level, c.detail.as_str()), (Level::Ok, "free"));
}

#[test]
fn ip_forward_and_netns_checks_read_what_they_are_given() {
    let dir = TempDir::new("meshctl-proc");
    let f = dir.write("ip_forward", "1\n");
    assert_eq!(check::ip_forward(&f).level, Level::Ok);
    dir.write("ip_forward", "0\n");
    assert_eq!(check::ip_forward(&f).level, Level::Warn);
    assert_eq!(check::ip_forward(&dir.path().join("nope")).level, Level::Fail);

    // A fake /proc: no namespace link → fail; a link and a zero limit → fail; a limit → ok.
    assert_eq!(check::netns(dir.path()).level, Level::Fail);
    std::fs::create_dir_all(dir.path().join("self/ns")).unwrap();
    std::os::unix::fs::symlink("net:[4026531840]", dir.path().join("self/ns/net")).unwrap();
    std::fs::create_dir_all(dir.path().join("sys/user")).unwrap();
    dir.write("sys/user/max_net_namespaces", "0\n");
    assert_eq!(check::netns(dir.path()).level, Level::Fail);
    dir.write("sys/user/max_net_namespaces", "1000\n");
    assert_eq!(check::netns(dir.path()).level, Level::Ok);
    assert_eq!(check::netns(Path::new("/proc")).level, Level::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_binary_reports_each_check_and_fails_on_a_failure() {
    let dir = TempDir::new("meshctl-check");
    let cfg = config(&dir);
    let running = istiod_lite::serve::start(&cfg).await.unwrap();
    let base = format!("http://{}", running.monitoring_addr);
    until("the first load", || running.translator.lock().unwrap().addresses().len() >= 3).await;
    let cni = TempDir::new("meshctl-check-cni");
    conflist(&cni, "10-k8s.conflist", &["bridge", "ztunnel-cni"]);
    let held = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    let free_port = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
    // A ztunnel readiness port that is not there.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();

    let args = |ports: String| {
        vec![
            "check".to_owned(),
            "--cni-conf-dir".into(),
            cni.path().to_string_lossy().into_owned(),
            "--ports".into(),
            ports,
            "--istiod".into(),
            base.clone(),
        ]
    };
    let (code, out) = meshctl(args(format!("{free_port},{held_port}"))).await;
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.splitn(3, "  ").map(str::trim).collect()).collect();
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name}  ")) || l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert!(rows.len() >= 8, "{out}");
    assert_eq!(code, 1, "a held port fails the check\n{out}");
    assert_eq!(row("cni chain")[2], "ok", "{out}");
    assert_eq!(row(&format!("port {free_port}"))[2..], ["ok", "free"], "{out}");
    assert_eq!(row(&format!("port {held_port}"))[2], "fail", "{out}");
    assert!(
        row(&format!("port {held_port}")).join(" ").contains(&format!("(pid {}), not ztunnel", std::process::id())),
        "{out}"
    );
    assert_eq!(row("istiod-lite")[1], "ok", "{out}");
    // bad.yaml is one config error.
    let config = row("istiod-lite config");
    assert_eq!(config[2..5], ["warn", "1", "config"], "{out}");

    // Nothing held, ztunnel readiness asked of an absent one: that fails; JSON form.
    drop(held);
    let mut a = args(format!("{free_port}"));
    a.extend(["--ztunnel-ready".into(), format!("http://{gone}"), "-o".into(), "json".into()]);
    let (code, out) = meshctl(a).await;
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let z = v.as_array().unwrap().iter().find(|c| c["name"] == format!("ztunnel http://{gone}")).unwrap();
    assert_eq!(z["level"], "fail");
    assert!(z["detail"].as_str().unwrap().contains("connecting"), "{z}");

    // Only passing checks (host checks may warn on this machine, never fail) → exit 0.
    let (code, out) = meshctl(vec![
        "check".into(),
        "--ports".into(),
        format!("{free_port}"),
        "--istiod".into(),
        base.clone(),
        "--cni-conf-dir".into(),
        cni.path().to_string_lossy().into_owned(),
    ])
    .await;
    let fails: Vec<&str> = out.lines().filter(|l| l.split_whitespace().any(|w| w == "fail")).collect();
    assert_eq!(code, i32::from(!fails.is_empty()), "{out}");
    // istiod-lite gone: fails, naming the address.
    drop(running);
    let (code, out) =
        meshctl(vec!["check".into(), "--ports".into(), format!("{free_port}"), "--istiod".into(), base.clone()]).await;
    assert_eq!(code, 1);
    assert!(out.lines().any(|l| l.starts_with("istiod-lite") && l.contains("fail") && l.contains(&base)), "{out}");
}
