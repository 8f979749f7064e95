//! `allowed_outbound_hosts`, matched the way Spin matches it.
//!
//! An entry is `scheme://host[:port]`: `*` may stand for the scheme, the host
//! or the port, `*.example.com` for any subdomain, a port may be a range
//! `8000..9000`, and an entry with no port gets the scheme's well-known port.
//! Entries may contain `{{ variable }}` templates; they are resolved before
//! parsing, as Spin does. An entry with a path is an error.

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    Any,
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    /// `*.example.com`, stored as `.example.com`.
    AnySubdomain(String),
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Port {
    Any,
    One(u16),
    /// Half-open, like Spin's `start..end`.
    Range(u16, u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    original: String,
    scheme: Scheme,
    host: Host,
    port: Port,
}

/// A component's whole allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<AllowedHost>);

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "postgres" | "postgresql" => Some(5432),
        "mysql" => Some(3306),
        "redis" => Some(6379),
        "rediss" => Some(6380),
        "mqtt" => Some(1883),
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl AllowedHost {
    pub fn parse(entry: &str) -> Result<Self> {
        let original = entry.to_string();
        let entry = entry.trim();
        let Some((scheme, rest)) = entry.split_once("://") else {
            bail!("{entry:?} does not contain a scheme (e.g. 'http://' or '*://')");
        };
        // `[::1]:8080`: the port follows the closing bracket of an IPv6 literal.
        let (host, port_and_path) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((ipv6, after)) => (ipv6, after.strip_prefix(':').unwrap_or(after)),
            None => rest.rsplit_once(':').unwrap_or((rest, "")),
        };
        let port = match port_and_path.split_once('/') {
            Some((_, path)) if !path.is_empty() => {
                bail!("{entry:?} has a path but allowed hosts may not")
            }
            Some((port, _)) => port,
            None => port_and_path,
        };
        let host = host.trim_end_matches('/');
        if host.contains('/') {
            bail!("{entry:?} has a path but allowed hosts may not");
        }
        let scheme = match scheme {
            "*" => Scheme::Any,
            s if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphabetic()) => {
                Scheme::Named(s.to_string())
            }
            s => bail!("scheme {s:?} in {entry:?} is not alphabetic"),
        };
        let host = match host {
            "*" => Host::Any,
            h if h.starts_with("*.") => {
                let domain = &h[1..];
                if domain[1..].contains('*') {
                    bail!("{entry:?}: wildcards are allowed only as a leading `*.`");
                }
                Host::AnySubdomain(domain.to_ascii_lowercase())
            }
            h if h.contains('*') => bail!("{entry:?}: wildcards are allowed only as subdomains"),
            "" => bail!("{entry:?} has no host"),
            h => Host::Exact(h.to_ascii_lowercase()),
        };
        let port = match port {
            "" => match &scheme {
                Scheme::Named(s) => Port::One(well_known_port(s).with_context(|| {
                    format!("{entry:?} has no port and {s:?} has no well-known port")
                })?),
                Scheme::Any => bail!("{entry:?} needs a port (or `*`) with a wildcard scheme"),
            },
            "*" => Port::Any,
            p => match p.split_once("..") {
                Some((start, end)) => Port::Range(
                    start
                        .parse()
                        .with_context(|| format!("bad port range in {entry:?}"))?,
                    end.parse()
                        .with_context(|| format!("bad port range in {entry:?}"))?,
                ),
                None => Port::One(
                    p.parse()
                        .with_context(|| format!("bad port in {entry:?}"))?,
                ),
            },
        };
        Ok(Self {
            original,
            scheme,
            host,
            port,
        })
    }

    fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let scheme_ok = match &self.scheme {
            Scheme::Any => true,
            Scheme::Named(s) => s == scheme,
        };
        let host_ok = match &self.host {
            Host::Any => true,
            Host::AnySubdomain(suffix) => host.ends_with(suffix.as_str()),
            Host::Exact(h) => h == host,
        };
        let port_ok = match (&self.port, port.or_else(|| well_known_port(scheme))) {
            (Port::Any, _) => true,
            (_, None) => false,
            (Port::One(p), Some(port)) => *p == port,
            (Port::Range(start, end), Some(port)) => (*start..*end).contains(&port),
        };
        scheme_ok && host_ok && port_ok
    }
}

impl AllowedHosts {
    /// Parses already-resolved entries (templates filled in).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self> {
        if entries.len() == 1 && entries[0].as_ref() == "insecure:allow-all" {
            bail!("'insecure:allow-all' is not allowed: use '*://*:*'");
        }
        entries
            .iter()
            .map(|e| AllowedHost::parse(e.as_ref()))
            .collect::<Result<Vec<_>>>()
            .map(Self)
    }

    /// Whether a URL (`redis://...`, `postgres://user:pw@host/db`, `https://...`) may be reached.
    pub fn allows_url(&self, url: &str) -> bool {
        let Ok(parsed) = url::Url::parse(url) else {
            return false;
        };
        let Some(host) = parsed.host_str() else {
            return false;
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.0
            .iter()
            .any(|h| h.allows(parsed.scheme(), &host, parsed.port()))
    }

    pub fn entries(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|h| h.original.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(entries: &[&str], url: &str) -> bool {
        AllowedHosts::parse(entries).unwrap().allows_url(url)
    }

    #[test]
    fn exact_host_and_default_port() {
        assert!(allows(
            &["https://api.openai.com"],
            "https://api.openai.com/v1/embeddings"
        ));
        assert!(allows(
            &["https://api.openai.com"],
            "https://api.openai.com:443/v1"
        ));
        assert!(!allows(
            &["https://api.openai.com"],
            "https://api.openai.com:8443/v1"
        ));
        assert!(!allows(
            &["https://api.openai.com"],
            "http://api.openai.com/v1"
        ));
        assert!(!allows(&["https://api.openai.com"], "https://evil.com/v1"));
    }

    #[test]
    fn redis_and_postgres_addresses_with_credentials_and_paths() {
        let list = ["redis://127.0.0.1:6390", "postgres://db.internal"];
        assert!(allows(&list, "redis://127.0.0.1:6390/3"));
        assert!(!allows(&list, "redis://127.0.0.1:6391"));
        assert!(allows(&list, "postgres://app:secret@db.internal/chatbot"));
        assert!(allows(&list, "postgres://db.internal:5432/chatbot"));
        assert!(!allows(&list, "postgres://db.internal:5433/chatbot"));
    }

    #[test]
    fn wildcards() {
        assert!(allows(&["*://*:*"], "redis://anything:1"));
        assert!(allows(&["http://localhost:*"], "http://localhost:12345/x"));
        assert!(allows(
            &["https://*.example.com"],
            "https://a.b.example.com/"
        ));
        assert!(!allows(&["https://*.example.com"], "https://example.com/"));
        assert!(allows(
            &["http://127.0.0.1:8000..8010"],
            "http://127.0.0.1:8009/"
        ));
        assert!(!allows(
            &["http://127.0.0.1:8000..8010"],
            "http://127.0.0.1:8010/"
        ));
    }

    #[test]
    fn invalid_entries_are_errors() {
        for bad in [
            "api.openai.com",
            "https://api.openai.com/v1",
            "https://ex*ample.com",
            "foo://host",
            "insecure:allow-all",
        ] {
            assert!(
                AllowedHosts::parse(&[bad]).is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn empty_list_denies_everything() {
        assert!(!AllowedHosts::parse::<&str>(&[])
            .unwrap()
            .allows_url("http://127.0.0.1/"));
    }
}
