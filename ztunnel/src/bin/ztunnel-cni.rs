//! The `ztunnel-cni` CNI plugin: reports pod events to the node agent.

use std::io::{Read, Write};
use std::process::ExitCode;

use ztunnel::cni::{CniEnv, run};

fn main() -> ExitCode {
    let env = CniEnv::from_vars(std::env::vars_os());
    let mut stdin = Vec::new();
    // CNI has no stdin for VERSION sometimes; an unreadable stdin is just empty.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let (out, code) = match run(&env, &stdin) {
        Ok(serde_json::Value::Null) => (None, ExitCode::SUCCESS),
        Ok(value) => (Some(value), ExitCode::SUCCESS),
        Err((error, version)) => {
            eprintln!("ztunnel-cni: {error}");
            (Some(error.to_json(&version)), ExitCode::FAILURE)
        }
    };
    if let Some(out) = out {
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "{out}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    code
}
