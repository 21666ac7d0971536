//! Where a batch's time goes: the handler's own per-stage histograms
//! (`command_handler_stage_seconds`, on `/metrics` when `HTTP_PORT` is set), read
//! before and after a load step, as the mean and p99 per batch of each stage.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The stages in the order the loop takes them.
pub const STAGES: [&str; 6] = [
    "poll",
    "decode",
    "apply",
    "hand_over",
    "acknowledge",
    "store_offsets",
];

/// One stage over one step, for the money transfers the bench sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageTime {
    pub stage: String,
    pub batches: f64,
    pub mean_ms: f64,
    /// The upper bound of the histogram bucket holding the 99th percentile.
    pub p99_ms: f64,
}

/// One stage's histogram as scraped: sum, count, and cumulative counts by bucket bound.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    sum: f64,
    count: f64,
    buckets: Vec<(f64, f64)>,
}

/// Every stage's histogram of the money transfer loop, by stage.
#[derive(Clone, Debug, Default)]
pub struct Scrape(BTreeMap<String, Histogram>);

/// Reads the stage histograms now; None when the handler does not answer.
pub fn scrape(url: &str) -> Option<Scrape> {
    let body = reqwest::blocking::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .ok()?
        .text()
        .ok()?;
    Some(parse(&body))
}

fn parse(exposition: &str) -> Scrape {
    let mut stages: BTreeMap<String, Histogram> = BTreeMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("command_handler_stage_seconds_") else {
            continue;
        };
        let Some((series, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let label = |name: &str| {
            let start = series.find(&format!("{name}=\""))? + name.len() + 2;
            let end = series[start..].find('"')? + start;
            Some(series[start..end].to_string())
        };
        if label("command").as_deref() != Some("money_transfer") {
            continue;
        }
        let Some(stage) = label("stage") else {
            continue;
        };
        let histogram = stages.entry(stage).or_default();
        if series.starts_with("sum") {
            histogram.sum = value;
        } else if series.starts_with("count") {
            histogram.count = value;
        } else if series.starts_with("bucket") {
            let bound = match label("le").as_deref() {
                Some("+Inf") => f64::INFINITY,
                Some(le) => le.parse().unwrap_or(f64::INFINITY),
                None => continue,
            };
            histogram.buckets.push((bound, value));
        }
    }
    for histogram in stages.values_mut() {
        histogram.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Scrape(stages)
}

/// Each stage's mean and p99 per batch between two scrapes, in the loop's order.
pub fn between(before: &Scrape, after: &Scrape) -> Vec<StageTime> {
    let empty = Histogram::default();
    STAGES
        .iter()
        .filter_map(|stage| {
            let after = after.0.get(*stage)?;
            let before = before.0.get(*stage).unwrap_or(&empty);
            let batches = after.count - before.count;
            if batches <= 0.0 {
                return None;
            }
            let wanted = 0.99 * batches;
            let p99 = after
                .buckets
                .iter()
                .map(|(bound, cumulative)| {
                    let earlier = before
                        .buckets
                        .iter()
                        .find(|(b, _)| b == bound)
                        .map_or(0.0, |(_, c)| *c);
                    (*bound, cumulative - earlier)
                })
                .find(|(_, cumulative)| *cumulative >= wanted)
                .map_or(f64::INFINITY, |(bound, _)| bound);
            Some(StageTime {
                stage: stage.to_string(),
                batches,
                mean_ms: (after.sum - before.sum) / batches * 1000.0,
                p99_ms: p99 * 1000.0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_between_two_scrapes() {
        let before = parse(
            "command_handler_stage_seconds_sum{command=\"money_transfer\",stage=\"apply\"} 0.01\n\
             command_handler_stage_seconds_count{command=\"money_transfer\",stage=\"apply\"} 2\n\
             command_handler_stage_seconds_bucket{le=\"0.001\",command=\"money_transfer\",stage=\"apply\"} 0\n\
             command_handler_stage_seconds_bucket{le=\"0.008\",command=\"money_transfer\",stage=\"apply\"} 2\n\
             command_handler_stage_seconds_bucket{le=\"+Inf\",command=\"money_transfer\",stage=\"apply\"} 2\n",
        );
        let after = parse(
            "command_handler_stage_seconds_sum{command=\"money_transfer\",stage=\"apply\"} 0.11\n\
             command_handler_stage_seconds_count{command=\"money_transfer\",stage=\"apply\"} 102\n\
             command_handler_stage_seconds_bucket{le=\"0.001\",command=\"money_transfer\",stage=\"apply\"} 98\n\
             command_handler_stage_seconds_bucket{le=\"0.008\",command=\"money_transfer\",stage=\"apply\"} 102\n\
             command_handler_stage_seconds_bucket{le=\"+Inf\",command=\"money_transfer\",stage=\"apply\"} 102\n\
             command_handler_stage_seconds_count{command=\"account_creation\",stage=\"apply\"} 9\n",
        );
        let times = between(&before, &after);
        assert_eq!(times.len(), 1);
        assert_eq!(times[0].stage, "apply");
        assert_eq!(times[0].batches, 100.0);
        assert!((times[0].mean_ms - 1.0).abs() < 1e-9, "{times:?}");
        assert_eq!(times[0].p99_ms, 8.0);
    }
}
