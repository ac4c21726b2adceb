//! A chained CNI plugin that records each call (environment and configuration) as one JSON line
//! in `<record_dir>/calls.jsonl` and passes `prevResult` through unchanged. The harness's tests
//! chain it to check what a runtime hands a chained plugin such as the mesh's own.

use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::{Value, json};

fn main() -> ExitCode {
    match run() {
        Ok(out) => {
            if let Some(out) = out {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err((code, msg)) => {
            println!("{}", json!({ "cniVersion": "1.0.0", "code": code, "msg": msg }));
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<Option<Value>, (u32, String)> {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let command = env("CNI_COMMAND");
    if command == "VERSION" {
        return Ok(Some(json!({ "cniVersion": "1.0.0", "supportedVersions": ["1.0.0"] })));
    }
    let mut stdin = Vec::new();
    std::io::stdin().read_to_end(&mut stdin).map_err(|e| (5, format!("reading stdin: {e}")))?;
    // Code 6: "failed to decode content", per the CNI spec's well-known error codes.
    let conf: Value = serde_json::from_slice(&stdin).map_err(|e| (6, format!("config is not JSON: {e}")))?;
    let dir = conf.get("record_dir").and_then(Value::as_str).ok_or((7, "config has no string `record_dir`".into()))?;
    let record = json!({
        "command": command,
        "type": conf.get("type"),
        "containerId": env("CNI_CONTAINERID"),
        "netns": env("CNI_NETNS"),
        "ifname": env("CNI_IFNAME"),
        "args": env("CNI_ARGS"),
        "path": env("CNI_PATH"),
        "config": conf,
    });
    let path = std::path::Path::new(dir).join("calls.jsonl");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| (5, format!("opening {}: {e}", path.display())))?;
    writeln!(file, "{record}").map_err(|e| (5, format!("writing {}: {e}", path.display())))?;
    match command.as_str() {
        "ADD" => conf.get("prevResult").cloned().map(Some).ok_or((7, "ADD without prevResult: chain me".into())),
        "DEL" | "CHECK" => Ok(None),
        other => Err((4, format!("unknown CNI_COMMAND {other:?}"))),
    }
}
