//! Test helpers: a temporary directory removed on drop, and proto decoding.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use prost::Message;
use proto::istio::security::Authorization;
use proto::istio::workload::{Address, Service, Workload, address};

/// A directory under the system temp dir, removed on drop (also on panic).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(test: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("istiod-lite-{test}-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() as u64
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/samples")
}

pub fn decode_workload(any: &prost_types::Any) -> Workload {
    assert_eq!(any.type_url, proto::ADDRESS_TYPE_URL);
    match Address::decode(any.value.as_slice()).unwrap().r#type {
        Some(address::Type::Workload(w)) => w,
        other => panic!("not a workload: {other:?}"),
    }
}

pub fn decode_service(any: &prost_types::Any) -> Service {
    assert_eq!(any.type_url, proto::ADDRESS_TYPE_URL);
    match Address::decode(any.value.as_slice()).unwrap().r#type {
        Some(address::Type::Service(s)) => s,
        other => panic!("not a service: {other:?}"),
    }
}

pub fn decode_authz(any: &prost_types::Any) -> Authorization {
    assert_eq!(any.type_url, proto::AUTHORIZATION_TYPE_URL);
    Authorization::decode(any.value.as_slice()).unwrap()
}
