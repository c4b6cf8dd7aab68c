//! The official Python SDKs (`openai`, `anthropic`) as test clients: the venv interpreter that
//! `scripts/install-deps.sh` creates, and a runner for a script whose stdout is JSON lines.

use std::path::PathBuf;

use serde_json::Value;

/// The Python interpreter of the SDK venv that `scripts/install-deps.sh` creates.
pub fn sdk_python() -> PathBuf {
    let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/install-deps.sh (it creates the SDK venv)",
        py.display()
    );
    py
}

/// Run `script` (Python source) with these arguments on the SDK venv, off the async runtime,
/// and parse every stdout line as JSON. Panics, showing stdout and stderr, when the script
/// fails or prints a line that is not JSON.
pub async fn run_sdk_script(script: &str, args: &[String]) -> Vec<Value> {
    let (python, script, args) = (sdk_python(), script.to_string(), args.to_vec());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
    })
    .await
    .expect("the SDK runner task")
    .expect("run the SDK venv's python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("SDK output line is not JSON ({e}): {l}\n{stderr}"))
        })
        .collect()
}
