//! Offline checks of what installs the mesh on a real cluster: every document of every YAML
//! file under `manifests/`, the Dockerfiles under `docker/`, and the CNI install script.
//!
//! - Built-in kinds are validated against Kubernetes' own JSON schemas (the PyPI package
//!   `kubernetes-validate`, strict: unknown fields are errors) for the oldest and newest
//!   Kubernetes versions we target; custom resources against the `openAPIV3Schema` of our CRDs
//!   in `install.yaml`, closed to unknown fields as strict `kubectl apply` is; the CRDs also
//!   against the structural-schema rules; all by `tests/support/validate_manifests.py`.
//! - Gateway API `Gateway`, `HTTPRoute` and `GRPCRoute` are read by istiod-lite's own parser,
//!   which is what decides whether the mesh accepts them.
//! - Broken copies (a wrong type, an unknown field, a bad enum value, a non-structural CRD, a
//!   bad route) must each be reported, naming the object and the field, and only them.
//! - Each Dockerfile builds real workspace binaries and exposes exactly the ports its program
//!   listens on by default (from the program's own `--help`); every flag `install.yaml` passes
//!   to a container exists in that container's program.
//! - istiod-lite's ClusterRole lists and watches exactly what its Kubernetes source watches.
//! - The CNI install script chains the plugin last, once, and leaves unreadable lists alone.
//!
//! Needs `python3` with `kubernetes-validate` (installed by `.ci/run`) and `jq`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::Scratch;
use istiod_lite::ObjectError;
use serde::Deserialize;
use serde_yaml::Value;

/// Oldest and newest Kubernetes versions the manifests must be valid for (1.30: bound
/// service-account tokens carry the node name the CA relies on).
const K8S_VERSIONS: &[&str] = &["1.30", "1.36"];

/// Packages whose Dockerfile exists before the package is merged into this workspace: their
/// Dockerfile is checked as soon as the package is a workspace member.
const PENDING_PACKAGES: &[&str] = &["waypoint"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e is inside the workspace").to_owned()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    out.sort();
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() { copy_tree(&p, &dest) } else { std::fs::copy(&p, &dest).map(|_| ()).unwrap() }
    }
}

/// One document's verdict from the Python validator.
#[derive(Debug, Deserialize)]
struct Report {
    file: PathBuf,
    document: usize,
    kind: String,
    name: String,
    namespace: String,
    validator: String,
    errors: Vec<String>,
}

impl Report {
    fn object(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Validates `files`: the reports of every document, and every problem found, each naming
/// file, document, object and field.
fn validate(files: &[PathBuf]) -> (Vec<Report>, Vec<String>) {
    let script = repo().join("e2e/tests/support/validate_manifests.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script);
    for v in K8S_VERSIONS {
        cmd.args(["--k8s", v]);
    }
    let out = cmd.args(files).output().expect("python3 is needed to validate manifests");
    assert!(
        out.status.success(),
        "{} failed (is kubernetes-validate installed? `.ci/run --setup-only` installs it): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<Report> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("validator printed {l:?}: {e}")))
        .collect();
    let mut problems = Vec::new();
    for r in &reports {
        for e in &r.errors {
            problems.push(format!("{} document {} {}: {e}", r.file.display(), r.document, r.object()));
        }
        if r.validator == "none" && r.errors.is_empty() {
            problems.push(format!("{} document {} {}: nothing validated it", r.file.display(), r.document, r.object()));
        }
    }
    // istiod-lite reads every file as its directory source would; its verdicts stand for the
    // Gateway API objects, and any other error it finds is a problem too (the samples are its
    // input), except for kinds it does not read that the schemas above validated.
    for file in files {
        let parsed = istiod_lite::source::parse_file(file, &std::fs::read_to_string(file).unwrap());
        for e in &parsed.errors {
            let schema_checked_elsewhere =
                matches!(&e.error, ObjectError::UnsupportedKind { kind, .. } if kind == "GatewayClass");
            if !schema_checked_elsewhere {
                problems.push(format!("istiod-lite: {e}"));
            }
        }
        for r in reports.iter().filter(|r| &r.file == file && r.validator == "istiod-lite") {
            let read = parsed.objects.iter().any(|o| o.object.key().to_string() == r.object());
            let rejected = parsed.errors.iter().any(|e| e.object.as_ref().is_some_and(|k| k.to_string() == r.object()));
            if !read && !rejected {
                problems.push(format!("{} {}: istiod-lite did not read it", file.display(), r.object()));
            }
        }
    }
    (reports, problems)
}

#[test]
fn every_manifest_document_is_valid() {
    let mut files = Vec::new();
    yaml_files(&repo().join("manifests"), &mut files);
    let (reports, problems) = validate(&files);
    assert!(problems.is_empty(), "invalid manifests:\n{}", problems.join("\n"));

    let by_object: BTreeMap<String, &Report> = reports.iter().map(|r| (r.object(), r)).collect();
    let validator = |o: &str| by_object.get(o).map(|r| r.validator.as_str()).unwrap_or_else(|| panic!("{o} not seen"));
    for o in ["Deployment istio-system/istiod", "DaemonSet istio-system/ztunnel", "Service istio-system/istiod"] {
        assert!(validator(o).starts_with("kubernetes"), "{o}: {}", validator(o));
    }
    assert_eq!(validator("AuthorizationPolicy shop/catalog-allow-curl"), "crd authorizationpolicies.security.istio.io");
    assert_eq!(validator("PeerAuthentication shop/default"), "crd peerauthentications.security.istio.io");
    assert_eq!(validator("Gateway shop/waypoint"), "istiod-lite");
    assert_eq!(validator("HTTPRoute shop/catalog-api"), "istiod-lite");
    assert_eq!(validator("GatewayClass istio-waypoint"), "gateway-api");

    // The CRDs serve v1 (stored) and v1beta1 with one schema.
    let install = std::fs::read_to_string(repo().join("manifests/install.yaml")).unwrap();
    let mut crds = 0;
    for doc in serde_yaml::Deserializer::from_str(&install) {
        let v = Value::deserialize(doc).unwrap();
        if v["kind"] != "CustomResourceDefinition" {
            continue;
        }
        crds += 1;
        let versions = v["spec"]["versions"].as_sequence().unwrap();
        let summary: Vec<(&str, bool, bool)> = versions
            .iter()
            .map(|x| (x["name"].as_str().unwrap(), x["served"].as_bool().unwrap(), x["storage"].as_bool().unwrap()))
            .collect();
        assert_eq!(
            summary,
            [("v1", true, true), ("v1beta1", true, false)],
            "{}",
            v["metadata"]["name"].as_str().unwrap()
        );
        assert_eq!(versions[0]["schema"], versions[1]["schema"]);
    }
    assert_eq!(crds, 2);
}

/// Replaces `from` by `to` in `file`, exactly once.
fn mutate(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert_eq!(text.matches(from).count(), 1, "{from:?} must occur once in {}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn broken_manifests_are_reported_by_object_and_field() {
    let scratch = Scratch::new("broken_manifests");
    let dir = scratch.path().join("manifests");
    copy_tree(&repo().join("manifests"), &dir);
    let install = dir.join("install.yaml");
    // A number as a string, an unknown field, a CRD that is not structural.
    mutate(
        &install,
        "- name: grpc-xds-tls\n              containerPort: 15012",
        "- name: grpc-xds-tls\n              containerPort: \"15012\"",
    );
    mutate(&install, "priorityClassName: system-node-critical", "priorityClassNam: system-node-critical");
    mutate(
        &install,
        "openAPIV3Schema:\n          type: object\n          description: Whether",
        "openAPIV3Schema:\n          description: Whether",
    );
    // A value outside the enum, a field Istio does not have, in custom resources.
    let policies = dir.join("samples/policies.yaml");
    mutate(&policies, "action: ALLOW", "action: PERMIT");
    mutate(&policies, "namespaces: [\"legacy\"]", "namespace: [\"legacy\"]");
    // Gateway API objects istiod-lite must refuse.
    let example = dir.join("examples/waypoint.yaml");
    mutate(&example, "    port: 15008\n", "    port: hbone\n");
    mutate(&example, "    port: 80\n  rules:", "    port: eighty\n  rules:");

    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    let (_, problems) = validate(&files);
    let expected = [
        ("Deployment istio-system/istiod", "containerPort"),
        ("DaemonSet istio-system/ztunnel", "priorityClassNam"),
        ("CustomResourceDefinition peerauthentications.security.istio.io", "openAPIV3Schema.type"),
        ("AuthorizationPolicy shop/catalog-allow-curl", "spec.action"),
        ("AuthorizationPolicy shop/deny-legacy", "'namespace' was unexpected"),
        ("Gateway shop/waypoint", "spec.listeners[0].port"),
        ("HTTPRoute shop/catalog-api", "spec.parentRefs[0].port"),
    ];
    for (object, field) in expected {
        assert!(
            problems.iter().any(|p| p.contains(object) && p.contains(field)),
            "no problem names {object} and {field}:\n{}",
            problems.join("\n")
        );
    }
    // Nothing else: every other document still validates.
    let unexpected: Vec<&String> =
        problems.iter().filter(|p| !expected.iter().any(|(object, _)| p.contains(object))).collect();
    assert!(unexpected.is_empty(), "problems in documents that were not broken:\n{unexpected:#?}");
}

/// What a Dockerfile builds and runs.
#[derive(Debug, Default)]
struct Dockerfile {
    /// `(package, bin)` of every `cargo build` line.
    builds: Vec<(String, String)>,
    exposed: BTreeSet<u16>,
    entrypoint: String,
}

fn parse_dockerfile(path: &Path) -> Dockerfile {
    let text = std::fs::read_to_string(path).unwrap().replace("\\\n", " ");
    let mut d = Dockerfile::default();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        if let Some(at) = line.find("cargo build") {
            let command = line[at..].split("&&").next().unwrap();
            let words: Vec<&str> = command.split_whitespace().collect();
            let arg =
                |flag: &str| words.windows(2).filter(|w| w[0] == flag).map(|w| w[1].to_owned()).collect::<Vec<_>>();
            let packages = arg("-p");
            assert_eq!(packages.len(), 1, "{}: one -p per cargo build: {line}", path.display());
            let bins = arg("--bin");
            assert!(!bins.is_empty(), "{}: cargo build names no --bin: {line}", path.display());
            d.builds.extend(bins.into_iter().map(|b| (packages[0].clone(), b)));
        } else if let Some(ports) = line.strip_prefix("EXPOSE ") {
            d.exposed
                .extend(ports.split_whitespace().map(|p| p.parse::<u16>().unwrap_or_else(|_| panic!("EXPOSE {p}"))));
        } else if let Some(ep) = line.strip_prefix("ENTRYPOINT ") {
            let argv: Vec<String> = serde_json::from_str(ep).expect("ENTRYPOINT in exec form");
            d.entrypoint = Path::new(&argv[0]).file_name().unwrap().to_string_lossy().into_owned();
        }
    }
    d
}

/// Workspace packages and their binaries, from `cargo metadata`.
fn workspace_bins() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut bins = BTreeMap::new();
    for p in meta["packages"].as_array().unwrap() {
        let names = p["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        bins.insert(p["name"].as_str().unwrap().to_owned(), names);
    }
    bins
}

/// A program's `--help` (built by `cargo test --workspace` or `cargo build --bins`).
fn help(bin: &str) -> String {
    let path = e2e::mesh::bin(bin).unwrap_or_else(|e| {
        panic!("{e}: build it first (cargo build --bins -p <its package>; cargo test --workspace does)")
    });
    let out = Command::new(&path).arg("--help").output().unwrap();
    assert!(out.status.success(), "{} --help: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Ports of the non-loopback addresses a program listens on by default (`[default: ...]`).
fn default_listen_ports(help: &str) -> BTreeSet<u16> {
    help.split("[default: ")
        .skip(1)
        // The value runs to the end of its line (clap prints `[default: …]` last), so an IPv6
        // default such as `[::]:15008` keeps its own brackets.
        .filter_map(|rest| rest.lines().next()?.trim_end().strip_suffix(']'))
        .filter_map(|v| v.parse::<SocketAddr>().ok())
        .filter(|a| !a.ip().is_loopback())
        .map(|a| a.port())
        .collect()
}

#[test]
fn dockerfiles_build_workspace_binaries_and_expose_their_default_ports() {
    let bins = workspace_bins();
    let mut dockerfiles: Vec<PathBuf> = std::fs::read_dir(repo().join("docker"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".Dockerfile"))
        .collect();
    dockerfiles.sort();
    assert!(dockerfiles.len() >= 3, "{dockerfiles:?}");
    let mut checked = 0;
    for path in &dockerfiles {
        let d = parse_dockerfile(path);
        assert!(!d.builds.is_empty(), "{}: no cargo build", path.display());
        let package = &d.builds[0].0;
        if !bins.contains_key(package) && PENDING_PACKAGES.contains(&package.as_str()) {
            eprintln!("{}: package {package} is not in this workspace yet; not checked", path.display());
            continue;
        }
        for (p, b) in &d.builds {
            let known = bins.get(p).unwrap_or_else(|| panic!("{}: no workspace package {p}", path.display()));
            assert!(known.contains(b), "{}: package {p} has no binary {b} (it has {known:?})", path.display());
        }
        assert!(
            d.builds.iter().any(|(_, b)| *b == d.entrypoint),
            "{}: ENTRYPOINT {} is not built here",
            path.display(),
            d.entrypoint
        );
        let listens = default_listen_ports(&help(&d.entrypoint));
        assert!(!listens.is_empty(), "{}: no default listen address in {} --help", path.display(), d.entrypoint);
        assert_eq!(d.exposed, listens, "{}: EXPOSE vs what {} listens on by default", path.display(), d.entrypoint);
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} Dockerfiles checked");
}

#[test]
fn install_yaml_uses_real_flags_and_ports() {
    let install = std::fs::read_to_string(repo().join("manifests/install.yaml")).unwrap();
    let mut containers = 0;
    for doc in serde_yaml::Deserializer::from_str(&install) {
        let v = Value::deserialize(doc).unwrap();
        let kind = v["kind"].as_str().unwrap_or("");
        if kind != "Deployment" && kind != "DaemonSet" {
            continue;
        }
        let pod = &v["spec"]["template"]["spec"];
        let all = pod["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .chain(pod["initContainers"].as_sequence().into_iter().flatten());
        for c in all {
            let name =
                format!("{kind} {} container {}", v["metadata"]["name"].as_str().unwrap(), c["name"].as_str().unwrap());
            let image = c["image"].as_str().unwrap();
            let image_name = image.rsplit('/').next().unwrap().split(':').next().unwrap();
            let dockerfile = parse_dockerfile(&repo().join(format!("docker/{image_name}.Dockerfile")));
            let program = match c["command"].as_sequence() {
                Some(cmd) => Path::new(cmd[0].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned(),
                None => dockerfile.entrypoint.clone(),
            };
            if program == "install-cni" {
                // A script, tested below; its image must ship it.
                let text = std::fs::read_to_string(repo().join(format!("docker/{image_name}.Dockerfile"))).unwrap();
                assert!(
                    text.contains("docker/install-cni.sh /usr/local/bin/install-cni"),
                    "{name}: image lacks install-cni"
                );
                continue;
            }
            assert!(dockerfile.builds.iter().any(|(_, b)| *b == program), "{name}: {image} does not contain {program}");
            let help = help(&program);
            for arg in c["args"].as_sequence().into_iter().flatten().filter_map(Value::as_str) {
                if let Some(flag) = arg.strip_prefix("--") {
                    let flag = flag.split('=').next().unwrap();
                    assert!(
                        help.contains(&format!("--{flag} ")) || help.contains(&format!("--{flag}\n")),
                        "{name}: {program} has no flag --{flag}"
                    );
                }
            }
            let ports: BTreeSet<u16> = c["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|p| p["containerPort"].as_u64().unwrap() as u16)
                .collect();
            if program == dockerfile.entrypoint {
                assert_eq!(ports, dockerfile.exposed, "{name}: containerPorts vs the image's EXPOSE");
            }
            for probe in ["readinessProbe", "livenessProbe"] {
                let p = &c[probe];
                if let Some(port) = p["httpGet"]["port"].as_u64().or(p["tcpSocket"]["port"].as_u64()) {
                    assert!(ports.contains(&(port as u16)), "{name}: {probe} on {port}, not a container port");
                }
            }
            containers += 1;
        }
    }
    assert_eq!(containers, 3, "istiod-lite, ztunnel and the agent");
}

/// Runs the CNI install script with the host directories under `root`.
fn install_cni(root: &Path, action: &str) -> std::process::Output {
    Command::new("sh")
        .arg(repo().join("docker/install-cni.sh"))
        .arg(action)
        .env("CNI_BIN_DIR", root.join("bin"))
        .env("CNI_NET_DIR", root.join("net.d"))
        .env("CNI_PLUGIN", root.join("plugin"))
        .env("WAIT_SECONDS", "2")
        .output()
        .expect("sh")
}

#[test]
fn install_cni_chains_the_plugin_last_once_and_uninstalls() {
    assert!(
        Command::new("jq").arg("--version").output().is_ok_and(|o| o.status.success()),
        "jq is needed (.ci/run installs it)"
    );
    let scratch = Scratch::new("install_cni");
    let root = scratch.path();
    std::fs::create_dir_all(root.join("net.d")).unwrap();
    std::fs::write(root.join("plugin"), "#!/bin/sh\necho plugin\n").unwrap();
    Command::new("chmod").arg("0755").arg(root.join("plugin")).status().unwrap();
    let primary = r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
    std::fs::write(root.join("net.d/10-k8s.conflist"), primary).unwrap();
    // A later file the runtime does not use stays untouched.
    std::fs::write(root.join("net.d/99-other.conflist"), primary).unwrap();

    for _ in 0..2 {
        let out = install_cni(root, "install");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let chained: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("net.d/10-k8s.conflist")).unwrap()).unwrap();
    let plugins = chained["plugins"].as_array().unwrap();
    let types: Vec<&str> = plugins.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["bridge", "portmap", "ztunnel-cni"], "chained last, once");
    assert_eq!(plugins[0]["bridge"], "cni0", "the primary plugins keep their settings");
    assert_eq!(plugins[2]["agentSocket"], ztunnel::cni::DEFAULT_AGENT_SOCKET);
    assert_eq!(plugins[2]["excludeNamespaces"], serde_json::json!(["kube-system", "istio-system"]));
    assert_eq!(std::fs::read_to_string(root.join("net.d/99-other.conflist")).unwrap(), primary);
    let installed = root.join("bin/ztunnel-cni");
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(root.join("plugin")).unwrap());
    assert!(Command::new(&installed).output().unwrap().status.success(), "installed plugin is executable");
    let leftovers: Vec<_> = std::fs::read_dir(root.join("net.d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "no temporary files left: {leftovers:?}");

    let out = install_cni(root, "uninstall");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unchained: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("net.d/10-k8s.conflist")).unwrap()).unwrap();
    assert_eq!(unchained, serde_json::from_str::<serde_json::Value>(primary).unwrap());
    assert!(!installed.exists());

    // A list it cannot read is left as it was, and the failure says which file.
    std::fs::write(root.join("net.d/10-k8s.conflist"), "not json").unwrap();
    let out = install_cni(root, "install");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("10-k8s.conflist"));
    assert_eq!(std::fs::read_to_string(root.join("net.d/10-k8s.conflist")).unwrap(), "not json");
    // A single-plugin .conf first in line cannot be chained: refused, not rewritten.
    std::fs::write(root.join("net.d/05-single.conf"), r#"{"cniVersion":"1.0.0","name":"x","type":"bridge"}"#).unwrap();
    let out = install_cni(root, "install");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("05-single.conf"));
}

/// The `(apiGroup, resource)` pairs a ClusterRole grants `verb` on.
fn granted(role: &Value, verb: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_sequence().unwrap() {
        let has = |k: &str, v: &str| rule[k].as_sequence().unwrap().iter().any(|x| x.as_str() == Some(v));
        if !has("verbs", verb) {
            continue;
        }
        for g in rule["apiGroups"].as_sequence().unwrap() {
            for r in rule["resources"].as_sequence().unwrap() {
                out.insert((g.as_str().unwrap().to_owned(), r.as_str().unwrap().to_owned()));
            }
        }
    }
    out
}

#[test]
fn istiod_role_grants_exactly_what_the_kube_source_watches() {
    let install = std::fs::read_to_string(repo().join("manifests/install.yaml")).unwrap();
    let role = serde_yaml::Deserializer::from_str(&install)
        .map(|d| Value::deserialize(d).unwrap())
        .find(|v| v["kind"] == "ClusterRole" && v["metadata"]["name"] == "istiod-lite")
        .expect("ClusterRole istiod-lite");
    let watched: BTreeSet<(String, String)> =
        istiod_lite::source::kube::WATCHED.iter().map(|w| (w.group.to_owned(), w.plural.to_owned())).collect();
    for verb in ["list", "watch"] {
        assert_eq!(granted(&role, verb), watched, "{verb}: least privilege is exactly what is watched");
    }
    assert!(granted(&role, "get").is_empty(), "no get: watchers list");
    assert!(granted(&role, "delete").is_empty());
    assert!(!granted(&role, "list").iter().chain(&granted(&role, "create")).any(|(_, r)| r == "secrets"));
    assert_eq!(
        granted(&role, "create").iter().filter(|(g, r)| g == "authentication.k8s.io" && r == "tokenreviews").count(),
        1
    );
}

#[test]
fn ztunnel_agent_role_grants_only_what_enrollment_reads() {
    let install = std::fs::read_to_string(repo().join("manifests/install.yaml")).unwrap();
    let docs: Vec<Value> =
        serde_yaml::Deserializer::from_str(&install).map(|d| Value::deserialize(d).unwrap()).collect();
    let role = docs
        .iter()
        .find(|v| v["kind"] == "ClusterRole" && v["metadata"]["name"] == "ztunnel-agent")
        .expect("ClusterRole ztunnel-agent");
    let read: BTreeSet<(String, String)> =
        [("", "namespaces"), ("", "pods")].iter().map(|(g, r)| (g.to_string(), r.to_string())).collect();
    for verb in ["get", "list", "watch"] {
        assert_eq!(granted(role, verb), read, "{verb}");
    }
    for verb in ["create", "update", "patch", "delete"] {
        assert!(granted(role, verb).is_empty(), "{verb}: the agent only reads");
    }
    let binding = docs
        .iter()
        .find(|v| v["kind"] == "ClusterRoleBinding" && v["roleRef"]["name"] == "ztunnel-agent")
        .expect("a binding of ztunnel-agent");
    assert_eq!(binding["subjects"][0]["name"], "ztunnel");
    assert_eq!(binding["subjects"][0]["namespace"], "istio-system");
    // The agent uses the API source, for its own node.
    let ds = docs.iter().find(|v| v["kind"] == "DaemonSet" && v["metadata"]["name"] == "ztunnel").unwrap();
    let agent = ds["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "agent")
        .expect("agent container");
    let args: Vec<&str> = agent["args"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(args.windows(2).any(|w| w == ["--enrollment-source", "kube"]), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["--node-name", "$(NODE_NAME)"]), "{args:?}");
}
