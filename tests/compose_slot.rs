//! `docker/open-bank.yml` held against the JVM handler's compose service in SPEC §8, so
//! that the drop-in cannot drift from the slot it replaces: service and container name,
//! dependencies, restart policy, the certificate volume, and every variable of the JVM
//! service with its value. Needs no stack. The JVM service block is the fixture copied
//! from SPEC §8, checked against `../shared/SPEC.md` whenever that is beside the clone.

use std::path::Path;

use serde_yaml_ng::{Mapping, Value};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The JVM handler's service block, as the fixture copied from SPEC §8 has it. When the
/// spec is beside the clone (`../shared/SPEC.md`, as in the project's CI), the fixture is
/// first checked to be exactly the first YAML block after its §8 heading.
fn spec_slot() -> Mapping {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = read(&root.join("tests/fixtures/jvm-command-handler-slot.yml"));
    let spec_path = root.join("../shared/SPEC.md");
    if spec_path.is_file() {
        let spec = read(&spec_path);
        let section = spec
            .split_once("## 8.")
            .unwrap_or_else(|| panic!("{} has no section 8", spec_path.display()))
            .1;
        let block = section
            .split("```")
            .nth(1)
            .unwrap_or_else(|| panic!("SPEC §8 has no code block"));
        let copied: String = fixture
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            copied.trim(),
            block.trim(),
            "tests/fixtures/jvm-command-handler-slot.yml is no longer SPEC §8's block: copy it again"
        );
    }
    let parsed: Value = serde_yaml_ng::from_str(&fixture).expect("the JVM service block is YAML");
    service(&parsed, "command-handler").clone()
}

fn ours() -> (Mapping, Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/open-bank.yml");
    let file: Value = serde_yaml_ng::from_str(&read(&path)).expect("docker/open-bank.yml is YAML");
    let services = file
        .get("services")
        .expect("docker/open-bank.yml has services");
    (service(services, "command-handler").clone(), file)
}

fn service<'a>(services: &'a Value, name: &str) -> &'a Mapping {
    services
        .get(name)
        .and_then(Value::as_mapping)
        .unwrap_or_else(|| panic!("no service {name}"))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// `source:target` of a volume entry, without a mode such as `:ro`.
fn mount(entry: &Value) -> String {
    let entry = text(entry);
    let mut parts = entry.split(':');
    format!("{}:{}", parts.next().unwrap(), parts.next().unwrap_or(""))
}

#[test]
fn same_service_container_dependencies_and_restart_policy() {
    let (spec, ours) = (spec_slot(), ours().0);
    for key in ["container_name", "depends_on", "restart"] {
        assert_eq!(ours.get(key), spec.get(key), "{key}");
    }
}

#[test]
fn every_variable_of_the_jvm_service_with_its_value() {
    let (spec, ours) = (spec_slot(), ours().0);
    let spec_env = spec["environment"].as_mapping().expect("SPEC environment");
    let our_env = ours["environment"].as_mapping().expect("our environment");
    assert!(
        spec_env.len() >= 7,
        "SPEC §8 lists the JVM service's variables"
    );
    for (name, value) in spec_env {
        let ours = our_env
            .get(name)
            .unwrap_or_else(|| panic!("docker/open-bank.yml lacks {}", text(name)));
        assert_eq!(text(ours), text(value), "{}", text(name));
    }
}

#[test]
fn the_certificate_volume_mounted_where_the_jvm_handler_had_it() {
    let (spec, (ours, file)) = (spec_slot(), ours());
    let spec_mounts: Vec<String> = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(mount)
        .collect();
    let our_mounts: Vec<String> = ours["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(mount)
        .collect();
    assert_eq!(our_mounts, spec_mounts);
    assert_eq!(spec_mounts, ["open-bank-certs:/etc/kafka/secrets"]);
    // The stack's volume, not one of our own.
    assert_eq!(
        file["volumes"]["open-bank-certs"]["external"],
        Value::Bool(true),
        "open-bank-certs is declared external"
    );
}

#[test]
fn a_memory_limit_health_check_and_metrics_port() {
    let ours = ours().0;
    assert!(ours.get("mem_limit").is_some(), "mem_limit");
    let test = &ours["healthcheck"]["test"];
    assert_eq!(
        test.as_sequence()
            .unwrap()
            .iter()
            .map(text)
            .collect::<Vec<_>>(),
        ["CMD", "/usr/local/bin/command-handler", "health", "ready"]
    );
    assert_eq!(text(&ours["environment"]["HTTP_PORT"]), "8080");
}
