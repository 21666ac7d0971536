//! The exposition as a scrape sees it, against the one captured before the metrics were
//! read at scrape time.

use super::*;
use crate::db::PoolUsage;
use crate::ops::scraped::Scraped;

/// What the loops record, and what a scrape reads, in a handler at work.
fn at_work() -> (Metrics, Scraped) {
    let metrics = Metrics::new();
    let tally = |confirmed, failed, dead_lettered| BatchTally {
        confirmed,
        failed,
        dead_lettered,
    };
    let millis = Duration::from_millis;
    let transfer = CommandTopic::MoneyTransfer;
    metrics.batch_done(transfer, "cmt", tally(2, 1, 1), 3, millis(3));
    let creation = CommandTopic::AccountCreation;
    metrics.batch_done(creation, "cac", tally(1, 0, 0), 1, millis(30));
    metrics.batch_retried("cmt");
    metrics.stage_took(transfer, Stage::Apply, millis(3));
    metrics.balance_events_published(3);
    metrics.balance_publisher(true);
    let mut topic = rdkafka::statistics::Topic::default();
    // Stored lag, committed lag before anything is stored, not known yet.
    for (partition, stored, committed) in [(0, 7, 9), (1, -1, 4), (2, -1, -1)] {
        let stats = topic.partitions.entry(partition).or_default();
        (stats.consumer_lag_stored, stats.consumer_lag) = (stored, committed);
    }
    let mut statistics = Statistics::default();
    statistics.topics.insert("cmt".to_string(), topic);
    metrics.consumer_statistics(&statistics, "cmt", &[0, 1, 2]);
    let scraped = Scraped {
        assigned: vec![("cmt".to_string(), 2), ("cac".to_string(), 1)],
        producer_queue_depth: 5,
        pool: PoolUsage {
            idle: 1,
            in_use: 2,
            max: 4,
        },
        dependencies: [
            ("database", true),
            ("schema_registry", false),
            ("kafka:cmt", true),
        ]
        .map(|(name, up)| (name.to_string(), up))
        .to_vec(),
        ready: false,
        retrying: vec![(("cmt".to_string(), 0), Duration::from_millis(12_500))],
    };
    (metrics, scraped)
}

/// The exposition as a set of lines (a family's series come in no set order); every
/// sample under its own family's `# TYPE`.
fn lines(exposition: &str) -> Vec<&str> {
    let mut family = "";
    for line in exposition.lines() {
        match line.strip_prefix("# TYPE ") {
            Some(typed) => family = typed.split(' ').next().unwrap_or_default(),
            None if !line.starts_with('#') => {
                assert!(line.starts_with(family), "{line} outside {family}");
            }
            None => {}
        }
    }
    let mut lines: Vec<&str> = exposition.lines().collect();
    lines.sort_unstable();
    lines
}

/// Names, types, helps, labels and values as the handler exposed them before the
/// scrape-time values were read through a collector (testdata, taken from it).
#[test]
fn the_exposition_is_what_it_was() {
    let (metrics, scraped) = at_work();
    let exposition = metrics.encode(scraped);
    let before = include_str!("testdata/exposition.txt");
    assert_eq!(lines(&exposition), lines(before), "{exposition}");
    assert!(exposition.ends_with("# EOF\n"));

    let idle = Scraped {
        assigned: Vec::new(),
        producer_queue_depth: 0,
        pool: PoolUsage {
            idle: 0,
            in_use: 0,
            max: 4,
        },
        dependencies: Vec::new(),
        ready: true,
        retrying: Vec::new(),
    };
    let exposition = Metrics::new().encode(idle);
    let before = include_str!("testdata/exposition_empty.txt");
    assert_eq!(lines(&exposition), lines(before), "{exposition}");
}

#[test]
fn a_partition_no_longer_assigned_loses_its_lag() {
    let (metrics, scraped) = at_work();
    metrics.consumer_statistics(&Statistics::default(), "cmt", &[]);
    let exposition = metrics.encode(scraped);
    assert!(!exposition.contains("consumer_lag{"), "{exposition}");
}
