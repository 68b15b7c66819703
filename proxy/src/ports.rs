//! Port lists in the config that take ranges (`server.http_ports`): each entry is a port
//! (`80` or `"80"`) or an inclusive range (`"1025-65535"`), as Squid's `Safe_ports` ACL writes
//! them. An entry that is neither names its key through `serde_path_to_error`
//! (`server.http_ports[2]: "9-3" is backwards`).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// One port or an inclusive range of ports, never containing port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    const fn new(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    pub(crate) fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// Squid's stock `Safe_ports`: the ports plain HTTP may reach unless `server.http_ports` says
/// otherwise. Mail (25), SSH (22), and the other services below 1025 that an HTTP request
/// could be smuggled into are not among them.
pub(crate) fn squid_safe_ports() -> Vec<PortRange> {
    [
        (80, 80),
        (21, 21),
        (443, 443),
        (70, 70),
        (210, 210),
        (1025, 65535),
        (280, 280),
        (488, 488),
        (591, 591),
        (777, 777),
    ]
    .into_iter()
    .map(|(first, last)| PortRange::new(first, last))
    .collect()
}

/// Whether `port` is in any of `list`'s ranges.
pub(crate) fn allows(list: &[PortRange], port: u16) -> bool {
    list.iter().any(|r| r.contains(port))
}

/// `list` as an administrator wrote it, for error pages: `80, 443, 1025-65535`.
pub(crate) fn describe(list: &[PortRange]) -> String {
    list.iter()
        .map(PortRange::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

fn port(text: &str, whole: &str) -> Result<u16, String> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{whole:?} is not a port (1-65535) or a range \"a-b\""
        ));
    }
    match text.parse::<u16>() {
        Ok(0) => Err(format!("{whole:?}: port 0 is not a valid port")),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("{whole:?}: ports go up to 65535")),
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<PortRange, String> {
        match s.split_once('-') {
            None => port(s, s).map(|p| PortRange::new(p, p)),
            Some((a, b)) => {
                let (first, last) = (port(a, s)?, port(b, s)?);
                if first > last {
                    return Err(format!("{s:?} is backwards (write \"{last}-{first}\")"));
                }
                Ok(PortRange::new(first, last))
            }
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            s.serialize_u16(self.first)
        } else {
            s.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PortRange, D::Error> {
        struct RangeVisitor;
        impl Visitor<'_> for RangeVisitor {
            type Value = PortRange;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (1-65535) or a range such as \"1025-65535\"")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                match u16::try_from(v) {
                    Ok(0) | Err(_) => Err(E::custom(format!("{v} is not a valid port (1-65535)"))),
                    Ok(p) => Ok(PortRange::new(p, p)),
                }
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(RangeVisitor)
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Doc {
        ports: Vec<PortRange>,
    }

    #[test]
    fn numbers_strings_and_ranges() {
        let doc: Doc =
            toml::from_str("ports = [80, \"443\", \"1025-65535\", \" 8000 - 8080 \"]").unwrap();
        let ports = &doc.ports;
        for (port, allowed) in [
            (80, true),
            (443, true),
            (1025, true),
            (65535, true),
            (8080, true),
            (1024, false),
            (25, false),
        ] {
            assert_eq!(allows(ports, port), allowed, "{port}");
        }
        assert_eq!(describe(ports), "80, 443, 1025-65535, 8000-8080");
        // Single ports round-trip as numbers, ranges as strings.
        let text = toml::to_string(&doc).unwrap();
        let again: Doc = toml::from_str(&text).unwrap();
        assert_eq!(again.ports, doc.ports);
        assert!(text.contains("80, 443, \"1025-65535\""), "{text}");
    }

    #[test]
    fn mistakes_are_refused_with_a_reason() {
        for (bad, why) in [
            ("0", "not a valid port"),
            ("\"0\"", "port 0"),
            ("70000", "not a valid port"),
            ("-1", "not a valid port"),
            ("\"9-3\"", "backwards"),
            ("\"http\"", "not a port"),
            ("\"80-\"", "not a port"),
            ("\"1-99999\"", "65535"),
            ("true", "a port (1-65535)"),
        ] {
            let err = toml::from_str::<Doc>(&format!("ports = [{bad}]")).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    /// Through the real config loader: the default, and errors naming the entry's key.
    #[test]
    fn server_http_ports_in_the_config() {
        let config = crate::config::Config::parse("", "t").unwrap();
        assert_eq!(config.server.http_ports, squid_safe_ports());
        let embedded = crate::config::Config::embedded_default().unwrap();
        assert_eq!(embedded.server.http_ports, squid_safe_ports());
        let err = crate::config::Config::parse("[server]\nhttp_ports = [80, \"9-3\"]\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `server.http_ports[1]`"), "{err}");
        assert!(err.contains("backwards"), "{err}");
    }

    #[test]
    fn the_default_is_squids_safe_ports() {
        let safe = squid_safe_ports();
        assert_eq!(
            describe(&safe),
            "80, 21, 443, 70, 210, 1025-65535, 280, 488, 591, 777"
        );
        for port in [22, 23, 25, 110, 143, 445, 1024] {
            assert!(!allows(&safe, port), "{port}");
        }
    }
}
