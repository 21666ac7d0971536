//! A broker of the stack stopped and started again through `dev/stack`, and which
//! broker leads which partition of a topic.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::Signal;
use super::timeline::Timeline;
use crate::client::Stack;

/// The stack's tool, from the source tree this bench was built from.
const DEV_STACK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dev/stack");

/// The broker the broker scenarios stop: any but the first, which the load's clients
/// bootstrap from first.
pub const BROKER: &str = "kafka-2";

/// The `dev/stack` command that stops a service with `signal`.
fn stop_command(signal: Signal) -> &'static str {
    match signal {
        Signal::Term => "stop-service",
        Signal::Kill => "kill-service",
    }
}

/// Stops `service` of the stack in `stack_dir` with `signal` (SIGTERM: a controlled
/// shutdown, leadership handed over first; SIGKILL: a crash), and `down` after it is
/// gone starts it again, marking each moment.
pub fn stop_and_start(
    stack_dir: &Path,
    service: &str,
    signal: Signal,
    down: Duration,
    timeline: &Timeline,
) -> Result<(), String> {
    let signalled = timeline.action(format!(
        "{service} {} (dev/stack {})",
        signal.name(),
        stop_command(signal)
    ));
    dev_stack(stack_dir, stop_command(signal), service)?;
    let gone = timeline.mark(format!(
        "{service} gone, {:.1} s after {}",
        timeline.now_s() - signalled,
        signal.name()
    ));
    std::thread::sleep(down);
    timeline.mark(format!("{service} starting"));
    dev_stack(stack_dir, "start-service", service)?;
    timeline.mark(format!(
        "{service} ready, {:.1} s after it was gone",
        timeline.now_s() - gone
    ));
    Ok(())
}

fn dev_stack(stack_dir: &Path, command: &str, service: &str) -> Result<(), String> {
    let output = Command::new(DEV_STACK)
        .arg(command)
        .arg(service)
        .arg(stack_dir)
        .output()
        .map_err(|e| format!("cannot run {DEV_STACK}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "dev/stack {command} {service} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Which broker leads which partitions of `topic`: "kafka-1: 0 3 6 · kafka-2: 1 4 7".
/// Brokers are named as `dev/stack` names its services, by their place in
/// `KAFKA_BROKERS`.
pub fn leaders(stack: &Stack, topic: &str) -> Result<String, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack.get("KAFKA_BROKERS"))
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let addresses: Vec<&str> = stack.get("KAFKA_BROKERS").split(',').collect();
    let service = |host: &str, port: i32| {
        let address = format!("{host}:{port}");
        match addresses.iter().position(|a| *a == address) {
            Some(_) if addresses.len() == 1 => "kafka".to_string(),
            Some(i) => format!("kafka-{}", i + 1),
            None => address,
        }
    };
    let names: HashMap<i32, String> = metadata
        .brokers()
        .iter()
        .map(|b| (b.id(), service(b.host(), b.port())))
        .collect();
    let mut led: Vec<(String, Vec<i32>)> = Vec::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let leader = names
            .get(&partition.leader())
            .cloned()
            .unwrap_or_else(|| format!("none ({})", partition.leader()));
        match led.iter_mut().find(|(name, _)| *name == leader) {
            Some((_, partitions)) => partitions.push(partition.id()),
            None => led.push((leader, vec![partition.id()])),
        }
    }
    led.sort();
    Ok(led
        .iter_mut()
        .map(|(name, partitions)| {
            partitions.sort();
            let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
            format!("{name}: {}", list.join(" "))
        })
        .collect::<Vec<String>>()
        .join(" · "))
}
