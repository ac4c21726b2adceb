//! The `ztunnel-cni` binary as a container runtime runs it: environment plus
//! configuration on stdin, result or CNI error object on stdout, against a
//! stand-in agent socket that records what the plugin reports.

mod support;

use support::TempDir;

use std::io::{BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;

use serde_json::{Value, json};
use ztunnel::cni::event::{read_line, write_line};
use ztunnel::cni::{CniCommand, CniEvent, CniReply};

/// Accepts one plugin connection, answers `reply`, returns the event.
fn agent_once(path: &Path, reply: CniReply) -> JoinHandle<CniEvent> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let event: CniEvent = read_line(BufReader::new(&stream)).unwrap();
        write_line(&stream, &reply).unwrap();
        event
    })
}

fn plugin(command: &str, ns: &str, stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ztunnel-cni"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "abc123")
        .env("CNI_NETNS", "/var/run/netns/whatever")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME=web-0;K8S_POD_UID=u-1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stdout not JSON ({e}): {:?}", out))
}

fn conf(socket: &Path) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "ztunnel-cni",
        "agentSocket": socket,
        "agentTimeoutSeconds": 5,
        "runtimeConfig": {"portMappings": []},
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/whatever"}],
            "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}]
        }
    }))
    .unwrap()
}

#[test]
fn version_reports_supported_versions() {
    let out = plugin("VERSION", "default", br#"{"cniVersion":"1.0.0"}"#);
    assert!(out.status.success());
    let v = stdout_json(&out);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(v["supportedVersions"].as_array().unwrap().contains(&json!("0.4.0")));
}

#[test]
fn add_reports_to_agent_and_passes_prev_result_through() {
    let dir = TempDir::new("cni-add");
    let sock = dir.0.join("cni.sock");
    let agent = agent_once(&sock, CniReply::ok(true));
    let input = conf(&sock);
    let out = plugin("ADD", "default", &input);
    assert!(out.status.success(), "{out:?}");
    let prev: Value = serde_json::from_slice::<Value>(&input).unwrap()["prevResult"].clone();
    assert_eq!(stdout_json(&out), prev);
    let event = agent.join().unwrap();
    assert_eq!(
        event,
        CniEvent {
            command: CniCommand::Add,
            container_id: "abc123".into(),
            netns: "/var/run/netns/whatever".into(),
            ifname: "eth0".into(),
            pod_namespace: Some("default".into()),
            pod_name: Some("web-0".into()),
            pod_uid: Some("u-1".into()),
        }
    );
}

#[test]
fn refused_add_is_a_cni_error() {
    let dir = TempDir::new("cni-refuse");
    let sock = dir.0.join("cni.sock");
    let agent = agent_once(&sock, CniReply::refused("ztunnel said no"));
    let out = plugin("ADD", "default", &conf(&sock));
    assert!(!out.status.success());
    let err = stdout_json(&out);
    assert_eq!(err["code"], 100);
    assert_eq!(err["cniVersion"], "1.0.0");
    assert!(err["msg"].as_str().unwrap().contains("ztunnel said no"), "{err}");
    agent.join().unwrap();
}

#[test]
fn agent_down_fails_add_closed_but_del_succeeds() {
    let dir = TempDir::new("cni-down");
    let sock = dir.0.join("absent.sock");
    let out = plugin("ADD", "default", &conf(&sock));
    assert!(!out.status.success());
    let err = stdout_json(&out);
    assert_eq!(err["code"], 11, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("unreachable"));

    let out = plugin("DEL", "default", &conf(&sock));
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());

    // kube-system never waits for the agent.
    let out = plugin("ADD", "kube-system", &conf(&sock));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout_json(&out)["ips"][0]["address"], "10.1.0.5/24");
}

#[test]
fn malformed_input_gets_error_objects() {
    let out = plugin("ADD", "default", b"{\"cniVersion\": ");
    assert!(!out.status.success());
    let err = stdout_json(&out);
    assert_eq!(err["code"], 6);
    assert!(err["msg"].as_str().unwrap().contains("network configuration"));

    let out = plugin("ADD", "default", br#"{"cniVersion":"1.0.0","agentTimeoutSeconds":"soon"}"#);
    let err = stdout_json(&out);
    assert_eq!(err["code"], 7);
    assert!(err["msg"].as_str().unwrap().contains("agentTimeoutSeconds: invalid type"), "{err}");

    let out = plugin("ADD", "default", br#"{"cniVersion":"2.0.0"}"#);
    assert_eq!(stdout_json(&out)["code"], 1);

    let out = plugin("NOPE", "default", br#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(stdout_json(&out)["code"], 4);
}
