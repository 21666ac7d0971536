//! `command-handler health [live|ready]`: the container image's health check. The
//! runtime image has no shell and no curl, so the binary asks its own running
//! instance: `/health/live` by default (the image's HEALTHCHECK), `/health/ready` on
//! request (the compose files).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Which endpoint the `health` command asks (its argument, `live` or `ready`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    /// `/health/live`: the process runs and its loops make progress
    Live,
    /// `/health/ready`: every dependency answers
    Ready,
}

impl Probe {
    fn path(self) -> &'static str {
        match self {
            Probe::Live => "/health/live",
            Probe::Ready => "/health/ready",
        }
    }
}

/// Asks the running handler's health endpoint on this host; Ok when it answers 200.
/// `http_address` is the handler's own (`HTTP_PORT`, `HTTP_BIND_ADDRESS`).
pub fn probe(http_address: Option<SocketAddr>, probe: Probe) -> Result<(), String> {
    let Some(mut address) = http_address else {
        return Err("HTTP_PORT is not set: the handler serves no health endpoint".into());
    };
    if address.port() == 0 {
        return Err("HTTP_PORT is 0 (a free port chosen at start): nothing to probe".into());
    }
    // Bound to every address: ask on loopback.
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let url = format!("http://{address}{}", probe.path());
    // Loopback, never through a proxy that HTTP_PROXY may name.
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let response = client.get(&url).send().map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        let body = response.text().unwrap_or_default();
        Err(format!("{url} answered {status}: {}", body.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(vars: &[(&str, &str)]) -> Option<SocketAddr> {
        crate::config::Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .unwrap()
            .http_address
    }

    /// The default (`live`) is declared with the `health` command, in main.rs.
    #[test]
    fn live_or_ready_nothing_else() {
        use clap::ValueEnum;
        assert_eq!(Probe::from_str("live", false), Ok(Probe::Live));
        assert_eq!(Probe::from_str("ready", false), Ok(Probe::Ready));
        assert!(Probe::from_str("--ready", false).is_err());
        assert!(Probe::from_str("Ready", false).is_err());
    }

    #[test]
    fn without_a_fixed_http_port_there_is_nothing_to_probe() {
        let no_port = probe(address(&[]), Probe::Live).unwrap_err();
        assert!(no_port.contains("HTTP_PORT is not set"), "{no_port}");
        let any_port = probe(address(&[("HTTP_PORT", "0")]), Probe::Live).unwrap_err();
        assert!(any_port.contains("HTTP_PORT is 0"), "{any_port}");
    }

    #[test]
    fn a_port_nobody_serves_is_unhealthy() {
        // Bound and dropped: nothing listens there now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let port = port.to_string();
        let why = probe(
            address(&[("HTTP_PORT", &port), ("HTTP_BIND_ADDRESS", "0.0.0.0")]),
            Probe::Ready,
        )
        .unwrap_err();
        assert!(
            why.contains(&format!("http://127.0.0.1:{port}/health/ready")),
            "{why}"
        );
    }
}
