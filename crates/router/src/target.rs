//! The routing headers: parsing and validation with upstream's rules and error texts.

use std::net::IpAddr;
use std::time::Duration;

use http::HeaderMap;

/// Header naming the sandbox (a DNS-1123 label).
pub const SANDBOX_ID: &str = "x-sandbox-id";
/// Header naming the namespace (default `default`).
pub const SANDBOX_NAMESPACE: &str = "x-sandbox-namespace";
/// Header naming the port inside the sandbox (default 8888).
pub const SANDBOX_PORT: &str = "x-sandbox-port";
/// Header giving the pod IP directly (checked by the SSRF guard).
pub const SANDBOX_POD_IP: &str = "x-sandbox-pod-ip";
/// Header giving the sandbox or pod UID (a cache key).
pub const SANDBOX_UID: &str = "x-sandbox-uid";
/// Header giving a per-request timeout in seconds (capped by the router's own).
pub const SANDBOX_TIMEOUT: &str = "x-sandbox-timeout";

/// The port used when `X-Sandbox-Port` is absent (upstream's python runtime port).
pub const DEFAULT_PORT: u16 = 8888;

/// Where a request should go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Sandbox name.
    pub id: String,
    /// Namespace.
    pub namespace: String,
    /// Port inside the sandbox.
    pub port: u16,
    /// Pod IP given by the caller.
    pub pod_ip: Option<IpAddr>,
    /// UID given by the caller.
    pub uid: Option<String>,
    /// Per-request timeout.
    pub timeout: Option<Duration>,
}

/// A header that does not satisfy the contract; the message is upstream's `detail` text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// `X-Sandbox-ID` is absent.
    #[error("X-Sandbox-ID header is required.")]
    MissingId,
    /// `X-Sandbox-ID` is not a DNS-1123 label.
    #[error("Invalid sandbox ID format.")]
    InvalidId,
    /// `X-Sandbox-Namespace` is not a DNS-1123 label.
    #[error("Invalid namespace format.")]
    InvalidNamespace,
    /// `X-Sandbox-Port` is not an integer in 1..=65535.
    #[error("Invalid port format.")]
    InvalidPort,
    /// `X-Sandbox-Pod-IP` is not an IP, or points somewhere the SSRF guard refuses.
    #[error("Invalid target IP address.")]
    InvalidPodIp,
    /// `X-Sandbox-Timeout` is not a finite positive number of seconds.
    #[error("Invalid timeout format.")]
    InvalidTimeout,
}

/// Whether `s` is a DNS-1123 label: 1–63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether the SSRF guard lets a caller-supplied IP through: never unspecified, multicast or
/// link-local (cloud metadata lives there); loopback only when the router is configured to
/// allow it (tests, single-machine setups).
pub fn pod_ip_allowed(ip: IpAddr, allow_loopback: bool) -> bool {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    let mapped_v4 = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        IpAddr::V4(_) => None,
    };
    if let Some(v4) = mapped_v4 {
        return pod_ip_allowed(IpAddr::V4(v4), allow_loopback);
    }
    !(ip.is_unspecified()
        || ip.is_multicast()
        || link_local
        || (ip.is_loopback() && !allow_loopback))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").trim())
}

impl Target {
    /// Parses the routing headers. `max_timeout` caps `X-Sandbox-Timeout`.
    pub fn from_headers(
        headers: &HeaderMap,
        allow_loopback: bool,
        max_timeout: Duration,
    ) -> Result<Self, HeaderError> {
        let id = header(headers, SANDBOX_ID)
            .filter(|s| !s.is_empty())
            .ok_or(HeaderError::MissingId)?;
        if !is_dns_label(id) {
            return Err(HeaderError::InvalidId);
        }
        let namespace = header(headers, SANDBOX_NAMESPACE)
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        if !is_dns_label(namespace) {
            return Err(HeaderError::InvalidNamespace);
        }
        let port = match header(headers, SANDBOX_PORT).filter(|s| !s.is_empty()) {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or(HeaderError::InvalidPort)?,
        };
        let pod_ip = match header(headers, SANDBOX_POD_IP).filter(|s| !s.is_empty()) {
            None => None,
            Some(ip) => Some(
                ip.parse::<IpAddr>()
                    .ok()
                    .filter(|ip| pod_ip_allowed(*ip, allow_loopback))
                    .ok_or(HeaderError::InvalidPodIp)?,
            ),
        };
        let timeout = match header(headers, SANDBOX_TIMEOUT).filter(|s| !s.is_empty()) {
            None => None,
            Some(t) => {
                let secs = t.parse::<f64>().ok().filter(|s| s.is_finite() && *s > 0.0);
                Some(
                    Duration::from_secs_f64(secs.ok_or(HeaderError::InvalidTimeout)?)
                        .min(max_timeout),
                )
            }
        };
        let uid = header(headers, SANDBOX_UID)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        Ok(Self {
            id: id.to_owned(),
            namespace: namespace.to_owned(),
            port,
            pod_ip,
            uid,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Target, HeaderError> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Target::from_headers(&h, false, Duration::from_secs(180))
    }

    #[test]
    fn defaults() {
        let t = parse(&[("X-Sandbox-ID", "sb-1")]).unwrap();
        assert_eq!(
            (t.namespace.as_str(), t.port, t.pod_ip, t.timeout),
            ("default", 8888, None, None)
        );
    }

    #[test]
    fn errors_match_upstream_texts() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "X-Sandbox-ID header is required."),
            (
                &[("X-Sandbox-ID", "Bad_Name")],
                "Invalid sandbox ID format.",
            ),
            (
                &[("X-Sandbox-ID", &"a".repeat(64))],
                "Invalid sandbox ID format.",
            ),
            (
                &[("X-Sandbox-ID", "a"), ("X-Sandbox-Namespace", "-ns")],
                "Invalid namespace format.",
            ),
            (
                &[("X-Sandbox-ID", "a"), ("X-Sandbox-Port", "0")],
                "Invalid port format.",
            ),
            (
                &[("X-Sandbox-ID", "a"), ("X-Sandbox-Port", "65536")],
                "Invalid port format.",
            ),
            (
                &[("X-Sandbox-ID", "a"), ("X-Sandbox-Port", "http")],
                "Invalid port format.",
            ),
            (
                &[("X-Sandbox-ID", "a"), ("X-Sandbox-Pod-IP", "127.0.0.1")],
                "Invalid target IP address.",
            ),
            (
                &[
                    ("X-Sandbox-ID", "a"),
                    ("X-Sandbox-Pod-IP", "169.254.169.254"),
                ],
                "Invalid target IP address.",
            ),
            (
                &[
                    ("X-Sandbox-ID", "a"),
                    ("X-Sandbox-Pod-IP", "::ffff:127.0.0.1"),
                ],
                "Invalid target IP address.",
            ),
            (
                &[("X-Sandbox-ID", "a"), ("X-Sandbox-Pod-IP", "0.0.0.0")],
                "Invalid target IP address.",
            ),
            (
                &[("X-Sandbox-ID", "a"), ("X-Sandbox-Pod-IP", "224.0.0.1")],
                "Invalid target IP address.",
            ),
            (
                &[("X-Sandbox-ID", "a"), ("X-Sandbox-Pod-IP", "fe80::1")],
                "Invalid target IP address.",
            ),
            (
                &[("X-Sandbox-ID", "a"), ("X-Sandbox-Pod-IP", "not-an-ip")],
                "Invalid target IP address.",
            ),
            (
                &[("X-Sandbox-ID", "a"), ("X-Sandbox-Timeout", "-1")],
                "Invalid timeout format.",
            ),
            (
                &[("X-Sandbox-ID", "a"), ("X-Sandbox-Timeout", "inf")],
                "Invalid timeout format.",
            ),
        ];
        for (headers, detail) in cases {
            assert_eq!(
                parse(headers).unwrap_err().to_string(),
                *detail,
                "{headers:?}"
            );
        }
    }

    #[test]
    fn valid_overrides() {
        let t = parse(&[
            ("X-Sandbox-ID", "sb"),
            ("X-Sandbox-Namespace", "team-a"),
            ("X-Sandbox-Port", "9090"),
            ("X-Sandbox-Pod-IP", "10.88.0.7"),
            ("X-Sandbox-UID", "u-1"),
            ("X-Sandbox-Timeout", "999"),
        ])
        .unwrap();
        assert_eq!(t.namespace, "team-a");
        assert_eq!(t.port, 9090);
        assert_eq!(t.pod_ip, Some("10.88.0.7".parse().unwrap()));
        assert_eq!(t.uid.as_deref(), Some("u-1"));
        assert_eq!(
            t.timeout,
            Some(Duration::from_secs(180)),
            "capped by the router timeout"
        );
    }

    #[test]
    fn loopback_allowed_only_when_configured() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!pod_ip_allowed(ip, false));
        assert!(pod_ip_allowed(ip, true));
        assert!(!pod_ip_allowed("169.254.1.1".parse().unwrap(), true));
    }
}
