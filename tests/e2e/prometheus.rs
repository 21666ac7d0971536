//! The shipped alerting and recording rules (`docker/prometheus/`) and the Grafana
//! dashboard's queries (`docker/grafana/dashboards/`), on a real Prometheus (Debian's
//! 2.42, fetched by `dev/prometheus`) scraping a real handler at work: every rule loads
//! and evaluates to data, every panel's query does, and a stalled partition fires the
//! stall alert.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::barrier::poll_until;
use crate::harness::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A Prometheus server on a free loopback port, scraping one target every second and
/// evaluating the repository's rules as often; killed when dropped (its log is printed
/// when the test fails).
struct Prometheus {
    child: Child,
    base: String,
    log_path: PathBuf,
}

impl Prometheus {
    fn scraping(name: &str, target: &str) -> Prometheus {
        let installed = Command::new(Path::new(REPO).join("dev/prometheus"))
            .arg("bin")
            .output()
            .expect("run dev/prometheus bin");
        assert!(
            installed.status.success(),
            "dev/prometheus could not install Prometheus: {}",
            String::from_utf8_lossy(&installed.stderr)
        );
        let bin = PathBuf::from(String::from_utf8(installed.stdout).unwrap().trim());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("prometheus-{name}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let rules = Path::new(REPO).join("docker/prometheus/command-handler.rules.yml");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: command-handler\n    \
                 static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let log_path = dir.join("prometheus.log");
        let log = fs::File::create(&log_path).unwrap();
        let child = Command::new(bin.join("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}/prometheus: {e}", bin.display()));
        let mut prometheus = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log_path,
        };
        let ready = format!("{}/-/ready", prometheus.base);
        poll_until(
            "Prometheus to be ready",
            WAIT,
            Duration::from_millis(200),
            || {
                if let Some(status) = prometheus.child.try_wait().unwrap() {
                    panic!("Prometheus exited ({status}):\n{}", prometheus.log());
                }
                match reqwest::blocking::get(&ready) {
                    Ok(reply) if reply.status().is_success() => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        );
        prometheus
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// An API answer's `data`, failing the test on an error answer.
    fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.base), query).unwrap();
        let reply = reqwest::blocking::Client::new()
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .unwrap_or_else(|e| panic!("no answer from Prometheus {path}: {e}"));
        let body: Value = reply.json().expect("Prometheus answers JSON");
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        body["data"].clone()
    }

    /// How many series `expr` evaluates to now.
    fn series(&self, expr: &str) -> usize {
        let data = self.api("/api/v1/query", &[("query", expr)]);
        data["result"].as_array().map_or(0, Vec::len)
    }

    fn alert_firing(&self, name: &str) -> Option<Value> {
        let data = self.api("/api/v1/alerts", &[]);
        data["alerts"]
            .as_array()?
            .iter()
            .find(|alert| alert["labels"]["alertname"] == name && alert["state"] == "firing")
            .cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- Prometheus log ({}) ----", self.log_path.display());
            for line in self
                .log()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .iter()
                .rev()
            {
                eprintln!("{line}");
            }
        }
    }
}

/// What an alert compares with its threshold: its expression without the trailing
/// `<op> <number>` (the rules file writes every alert so).
fn signal(expr: &str) -> String {
    let expr = expr.trim();
    let (rest, threshold) = expr.rsplit_once(' ').expect("an alert ends in a threshold");
    assert!(
        threshold.parse::<f64>().is_ok(),
        "alert {expr:?} does not end in a number"
    );
    let (rest, op) = rest.trim_end().rsplit_once(' ').expect("an operator");
    assert!(
        ["==", "!=", ">", "<", ">=", "<="].contains(&op),
        "alert {expr:?} does not compare its signal with its threshold"
    );
    rest.trim().to_string()
}

/// Each dashboard panel's title and queries.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(REPO).join("docker/grafana/dashboards/command-handler.json");
    let dashboard: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queries = Vec::new();
    for panel in panels {
        let targets = panel["targets"]
            .as_array()
            .expect("every panel has queries");
        assert!(!targets.is_empty(), "{panel}");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL query").to_string();
            queries.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    queries
}

/// A handler at work (answers of both kinds, a dead letter, the outbox published), then
/// a partition stalled behind a topic that refuses its answers: while it is, every rule
/// of the shipped rules file has loaded and evaluates to data (the recorded series, and
/// each alert's signal), every dashboard query evaluates to data, and the stall alert
/// fires. Once the topic takes records again, the command is answered.
#[test]
fn every_rule_and_panel_evaluates_against_the_handler_and_a_stall_fires_its_alert() {
    let mut env = TestEnv::with_partitions("prometheus", 1);
    let handler = env.start_handler(&[
        ("HTTP_PORT", "0"),
        ("HTTP_BIND_ADDRESS", "127.0.0.1"),
        ("RDKAFKA_CONSUMER_STATISTICS_INTERVAL_MS", "500"),
    ]);
    let target = env.handler(handler).http_address();
    let prometheus = Prometheus::scraping(&env.group, &target);

    let (iban, token) = env.open_account();
    assert_eq!(env.transfer(&TransferCmd::new("", 5, "cash", &iban)), None);
    assert_eq!(
        env.transfer(&TransferCmd::new("wrong token", 1, &iban, "cash"))
            .as_deref(),
        Some("invalid token")
    );
    assert_eq!(
        env.transfer(&TransferCmd::new(&token, 2, &iban, "cash")),
        None
    );
    env.dead_letter_a_poison_record();
    let cmt = env.topics.cmt.clone();

    // The answers' topic refuses every record: the partition retries its batch.
    let mtf = env.topics.mtf.clone();
    env.stack
        .set_topic_config(&mtf, &[("max.message.bytes", "16")]);
    let stalled = TransferCmd::new("", 4, "cash", &iban);
    env.send_transfer(&stalled);
    env.flush();

    let fired = poll_until(
        "the stall alert to fire",
        WAIT,
        Duration::from_millis(500),
        || {
            prometheus
                .alert_firing("CommandHandlerPartitionStalled")
                .ok_or_else(|| format!("alerts: {}", prometheus.api("/api/v1/alerts", &[])))
        },
    );
    assert_eq!(fired["labels"]["topic"], cmt.as_str(), "{fired}");
    assert_eq!(fired["labels"]["partition"], "0", "{fired}");
    assert_eq!(fired["labels"]["severity"], "page", "{fired}");

    // Still stalled: every rule and every panel query has data.
    let groups = prometheus.api("/api/v1/rules", &[]);
    let rules: Vec<Value> = groups["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(rules.len() >= 10, "the rules file did not load: {groups}");
    let mut checks = Vec::new();
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        let query = rule["query"].as_str().unwrap();
        let (what, expr) = match rule["type"].as_str() {
            Some("recording") => ("recording rule", rule["name"].as_str().unwrap().to_string()),
            _ => ("alert", signal(query)),
        };
        checks.push((format!("{what} {}", rule["name"]), expr));
    }
    for (panel, expr) in dashboard_queries() {
        checks.push((format!("panel {panel:?}"), expr));
    }
    poll_until(
        "every rule's and panel's query to have data",
        WAIT,
        Duration::from_secs(1),
        || {
            let empty: Vec<String> = checks
                .iter()
                .filter(|(_, expr)| prometheus.series(expr) == 0)
                .map(|(what, expr)| format!("{what}: {expr}"))
                .collect();
            if empty.is_empty() {
                Ok(())
            } else {
                Err(format!("no data for:\n{}", empty.join("\n")))
            }
        },
    );

    env.stack
        .set_topic_config(&mtf, &[("max.message.bytes", "1048588")]);
    env.await_answer(stalled.id);
    env.handler(handler).stop_cleanly();
}
