//! The shipped deployment examples are checked, not just written: every file in `conf/`
//! passes `--check-config`, the Kubernetes example hangs together (probes, ports, labels, the
//! mounted config, shutdown timings), and README's docker commands match the Dockerfile.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde::Deserialize;
use serde_yaml::Value;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Keys that example configs read with `api_key_env`, as a deployment would set them.
const EXAMPLE_ENV: &[(&str, &str)] = &[
    ("OPENAI_API_KEY", "sk-example-placeholder"),
    ("TEAM_A_KEY", "sk-example-client"),
    ("TEAM_B_KEY", "sk-example-client-b"),
    ("AI_PROXY_ADMIN_KEY", "sk-example-admin"),
];

fn check_config(path: &Path) {
    let out = run_gateway_cmd(&["--check-config", path.to_str().unwrap()], EXAMPLE_ENV);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(": OK, "),
        "{} fails --check-config: {stdout}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_conf_file_passes_check_config() {
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(repo_file("conf")).unwrap() {
        let path = entry.unwrap().path();
        check_config(&path);
        checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    checked.sort();
    for example in [
        "env-only.env",
        "openai-ocf.yaml",
        "shared-limits.yaml",
        "vllm-fleet.yaml",
    ] {
        assert!(checked.iter().any(|c| c == example), "{example} is missing");
    }
}

#[test]
fn check_config_rejects_a_bad_env_file_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.env");
    std::fs::write(&bad, "# comment\nENDPOINTS=http://a:8000\nnot a variable\n").unwrap();
    let out = run_gateway_cmd(&["--check-config", bad.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3"));
    let url = dir.path().join("url.env");
    std::fs::write(&url, "ENDPOINTS=ftp://a\n").unwrap();
    let out = run_gateway_cmd(&["--check-config", url.to_str().unwrap()], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("env ENDPOINTS"));
}

/// The documents of the Kubernetes example, by kind.
fn kubernetes_docs() -> Vec<Value> {
    let text = read("deploy/kubernetes.yaml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML document"))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes.yaml"))
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

#[test]
fn kubernetes_example_hangs_together() {
    let docs = kubernetes_docs();
    assert_eq!(docs.len(), 3);
    let (config_map, deployment, service) = (
        kind(&docs, "ConfigMap"),
        kind(&docs, "Deployment"),
        kind(&docs, "Service"),
    );
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];

    // Probes: liveness on /health, readiness on /ready, on the container's named port.
    let port = &container["ports"][0];
    let port_name = str_of(&port["name"], "port name");
    let container_port = port["containerPort"].as_u64().expect("containerPort");
    for (probe, path) in [("livenessProbe", "/health"), ("readinessProbe", "/ready")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some(port_name), "{probe}");
    }

    // The Service reaches the pods: its selector is their labels, its target their port.
    let labels = pod["metadata"]["labels"].as_mapping().expect("pod labels");
    for (k, v) in service["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(labels.get(k), Some(v), "selector {k:?}");
    }
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"]
    );
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"].as_str(),
        Some(port_name)
    );

    // The config file the container is started with is the ConfigMap's, mounted as a
    // directory (a subPath mount would never see an edit).
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    let config_path = Path::new(args[args.iter().position(|a| *a == "--config").unwrap() + 1]);
    let mount = &container["volumeMounts"][0];
    assert!(mount.get("subPath").is_none());
    assert_eq!(
        Path::new(str_of(&mount["mountPath"], "mountPath")),
        config_path.parent().unwrap()
    );
    let volume = &pod["spec"]["volumes"][0];
    assert_eq!(volume["name"], mount["name"]);
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    let file = config_path.file_name().unwrap().to_str().unwrap();
    let yaml = str_of(&config_map["data"][file], "the ConfigMap's config");

    // That config is valid as the gateway reads it, with the env the Deployment sets.
    for var in container["env"].as_sequence().expect("env") {
        let name = str_of(&var["name"], "env name");
        assert!(EXAMPLE_ENV.iter().any(|(k, _)| *k == name), "{name}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    std::fs::write(&path, yaml).unwrap();
    check_config(&path);
    let config: Value = serde_yaml::from_str(yaml).unwrap();
    let listen = str_of(&config["listen"], "listen");
    assert!(
        listen.ends_with(&format!(":{container_port}")),
        "the gateway listens on the container port: {listen}"
    );

    // Kubernetes waits longer than the gateway's own drain before it kills the pod.
    let delay = config["shutdown_delay_secs"]
        .as_f64()
        .expect("shutdown_delay_secs");
    let grace = config["shutdown_grace_secs"]
        .as_f64()
        .expect("shutdown_grace_secs");
    let termination = pod["spec"]["terminationGracePeriodSeconds"]
        .as_f64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > delay + grace,
        "{termination} <= {delay} + {grace}"
    );
}

#[test]
fn readme_docker_commands_match_the_dockerfile() {
    let dockerfile = read("Dockerfile");
    let readme = read("README.md");
    let section = readme
        .split("\n### Docker\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Docker section");
    let exposed = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE")
        .trim();
    let config = "/etc/ai-proxy/ai-proxy.yaml";
    assert!(dockerfile.contains(&format!("COPY conf/ai-proxy.yaml {config}")));
    assert!(section.contains("docker build -t ai-proxy ."));
    let runs: Vec<&str> = section
        .lines()
        .filter(|l| l.trim_start().starts_with("docker run"))
        .collect();
    assert!(runs.len() >= 2, "a run with a config file and one env-only");
    for run in &runs {
        assert!(
            run.contains(&format!(":{exposed} ")),
            "{run:?} publishes the exposed port {exposed}"
        );
        if let Some(mount) = run
            .split_whitespace()
            .find(|w| w.contains(":/etc/ai-proxy"))
        {
            assert!(
                mount.contains(config) || mount.ends_with(":/etc/ai-proxy:ro"),
                "{mount}"
            );
        }
        if let Some(file) = run.split("--env-file ").nth(1) {
            let file = file.split_whitespace().next().unwrap();
            assert!(repo_file(file).is_file(), "{file} exists");
        }
    }
}
