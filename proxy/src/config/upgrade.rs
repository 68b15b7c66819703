//! `server.allowed_upgrades` entries: protocol names an administrator lets requests switch to
//! (what is done with them is `http/upgrade.rs`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A protocol name an administrator allows upgrades to (`websocket`), lowercase. Never `h2c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeProtocol(String);

impl UpgradeProtocol {
    pub(crate) fn websocket() -> UpgradeProtocol {
        UpgradeProtocol("websocket".to_owned())
    }

    pub(crate) fn parse(text: &str) -> Result<UpgradeProtocol, String> {
        let name = text.trim().to_ascii_lowercase();
        if name == "h2c" {
            return Err(
                "h2c is never forwarded: after the switch, the client's HTTP/2 requests \
                        would reach the origin without the policy or the access log seeing them"
                    .into(),
            );
        }
        // RFC 9110 §5.6.2 token characters; the name only, without a `/version`.
        let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(tchar) {
            return Err(format!(
                "{text:?} is not a protocol name such as \"websocket\""
            ));
        }
        Ok(UpgradeProtocol(name))
    }
}

impl UpgradeProtocol {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UpgradeProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for UpgradeProtocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UpgradeProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<UpgradeProtocol, D::Error> {
        let text = String::deserialize(d)?;
        UpgradeProtocol::parse(&text).map_err(serde::de::Error::custom)
    }
}
