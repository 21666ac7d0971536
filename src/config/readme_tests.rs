//! The README's configuration table, held to the declaration: every declared variable
//! has a row, every row names declared variables (or the `RDKAFKA_*` pass-through), and
//! the defaults the README shows are the declared ones, in the row's order.

use super::ConsumerTuning;
use super::source::{declared, default_of};

const README: &str = include_str!("../../README.md");

/// The configuration table's rows: the variables of the first cell, and the backquoted
/// values of the last (its defaults; "unset" and prose are not).
fn table() -> Vec<(Vec<String>, Vec<String>)> {
    let section = README
        .split("\n## Configuration\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README.md has a Configuration section");
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
            let quoted = |cell: &str| -> Vec<String> {
                cell.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(String::from)
                    .collect()
            };
            (quoted(cells[0]), quoted(cells[cells.len() - 1]))
        })
        .collect()
}

#[test]
fn the_readme_table_lists_every_declared_variable_with_its_default() {
    let declared = declared();
    let rows = table();
    for (arg, name) in &declared {
        assert!(
            rows.iter().any(|(names, _)| names.contains(name)),
            "{name} has no row in README.md's configuration table"
        );
        assert!(arg.get_help().is_some(), "{name} has no help");
    }
    for (names, defaults) in &rows {
        let mut expected = Vec::new();
        for name in names {
            if name.starts_with("RDKAFKA_") {
                continue;
            }
            let (arg, _) = declared
                .iter()
                .find(|(_, declared)| declared == name)
                .unwrap_or_else(|| panic!("README.md names {name}, which is not declared"));
            expected.extend(default_of(arg));
        }
        assert_eq!(
            defaults, &expected,
            "the defaults of {names:?} in README.md"
        );
    }
}

/// The consumers' own librdkafka settings, which `RDKAFKA_CONSUMER_*` overrides, are
/// in the README as `property=value`.
#[test]
fn the_readme_gives_the_consumer_tuning() {
    let tuning = ConsumerTuning::default();
    for (property, value) in [
        ("queued.max.messages.kbytes", tuning.queued_max_kbytes),
        ("queued.min.messages", tuning.queued_min_messages),
        ("fetch.queue.backoff.ms", tuning.fetch_queue_backoff_ms),
        ("auto.commit.interval.ms", tuning.auto_commit_interval_ms),
        ("statistics.interval.ms", tuning.statistics_interval_ms),
    ] {
        let shown = format!("`{property}={value}`");
        assert!(README.contains(&shown), "{shown} not in README.md");
    }
}
