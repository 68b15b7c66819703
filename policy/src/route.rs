//! Where a decided transaction goes: straight to the origin, or through parent proxies in
//! failover order. The policy only names parents; `[[upstream.parents]]` (the proxy's config)
//! says where they are, and the proxy checks every name used here exists there.

use std::fmt;
use std::sync::Arc;

use crate::error::CompileError;

fn value(key: &str, value: &str, reason: &str) -> CompileError {
    CompileError::Value {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// The way out for one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Route {
    /// Connect to the origin ourselves.
    #[default]
    Direct,
    /// Through these parents, tried in order: the next is used when one is down.
    Parents(Arc<[Arc<str>]>),
}

impl Route {
    /// The parents to try, in order; empty for [`Route::Direct`].
    pub fn parents(&self) -> &[Arc<str>] {
        match self {
            Route::Direct => &[],
            Route::Parents(names) => names,
        }
    }

    /// Parses a `route` value: `"direct"`, one parent name, or a list of parent names. `None`
    /// for an empty list (the key was not set).
    pub(crate) fn compile(key: &str, raw: &[String]) -> Result<Option<Route>, CompileError> {
        match raw {
            [] => return Ok(None),
            [one] if one == "direct" => return Ok(Some(Route::Direct)),
            _ => {}
        }
        let mut names: Vec<Arc<str>> = Vec::with_capacity(raw.len());
        for name in raw {
            if name == "direct" {
                return Err(value(
                    key,
                    name,
                    "\"direct\" stands alone: a route is either direct or a list of parents",
                ));
            }
            if !is_parent_name(name) {
                return Err(value(
                    key,
                    name,
                    "a parent name: letters, digits, '-', '_', '.' only",
                ));
            }
            if names.iter().any(|n| **n == **name) {
                return Err(value(key, name, "listed twice"));
            }
            names.push(name.as_str().into());
        }
        Ok(Some(Route::Parents(names.into())))
    }
}

/// Parent names land in log lines and metric labels: no spaces or quotes to escape there.
pub fn is_parent_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `direct`, or the parents as a TOML-style list: `["p1", "p2"]`.
impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Direct => f.write_str("direct"),
            Route::Parents(names) => {
                f.write_str("[")?;
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{name:?}")?;
                }
                f.write_str("]")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn compile(raw: &[&str]) -> Result<Option<Route>, CompileError> {
        let raw: Vec<String> = raw.iter().map(|s| (*s).to_owned()).collect();
        Route::compile("policy.default_route", &raw)
    }

    #[test]
    fn values() {
        assert_eq!(compile(&[]).unwrap(), None);
        assert_eq!(compile(&["direct"]).unwrap(), Some(Route::Direct));
        let two = compile(&["corp", "cloud-2"]).unwrap().unwrap();
        assert_eq!(two.parents().len(), 2);
        assert_eq!(two.to_string(), "[\"corp\", \"cloud-2\"]");
        assert_eq!(Route::Direct.to_string(), "direct");
        assert!(Route::Direct.parents().is_empty());
    }

    #[test]
    fn bad_values_name_the_key() {
        for (raw, why) in [
            (&["corp", "direct"][..], "stands alone"),
            (&["corp", "corp"][..], "listed twice"),
            (&["a b"][..], "parent name"),
            (&[""][..], "parent name"),
        ] {
            let err = compile(raw).unwrap_err().to_string();
            assert!(
                err.contains("policy.default_route") && err.contains(why),
                "{raw:?}: {err}"
            );
        }
    }

    fn policy(text: &str) -> crate::Policy {
        let raw: crate::RawPolicy = toml::from_str(text).unwrap();
        crate::Policy::compile(&raw).unwrap()
    }

    fn route_of(p: &crate::Policy, host: &str) -> String {
        let client = "10.0.0.7".parse().unwrap();
        let connect = p.decide_connect(&crate::ConnectFacts::new(host, 443, client));
        let request = p.decide_request(&crate::RequestFacts::new("GET", host, 80, "/", client));
        assert_eq!(connect.route, request.route, "{host}");
        connect.route.to_string()
    }

    /// The deciding rule's route, else `default_route`; the Outlook profile goes direct unless
    /// `policy.outlook.route` or a rule before it says otherwise.
    #[test]
    fn decisions_carry_their_route() {
        let p = policy(
            r#"
            default_route = ["corp", "backup"]
            [[rules]]
            name = "partner"
            host = "*.partner.example"
            action = "tunnel"
            route = "direct"
            [[rules]]
            name = "mail-via-cloud"
            host = "outlook.office365.com"
            action = "tunnel"
            route = "cloud"
            [[rules]]
            name = "inspected"
            host = "www.example.com"
            action = "inspect"
            [[rules]]
            name = "blocked"
            host = "bad.example"
            action = "deny"
            reason = "no"
            "#,
        );
        assert_eq!(route_of(&p, "a.partner.example"), "direct");
        assert_eq!(route_of(&p, "www.example.com"), "[\"corp\", \"backup\"]");
        assert_eq!(route_of(&p, "unknown.example"), "[\"corp\", \"backup\"]");
        // The Outlook profile routes direct, whatever the default says...
        assert_eq!(route_of(&p, "outlook.office.com"), "direct");
        // ...but a route rule that matches first wins.
        assert_eq!(route_of(&p, "outlook.office365.com"), "[\"cloud\"]");
        // A deny stays a deny; its route is never used.
        let client = "10.0.0.7".parse().unwrap();
        let d = p.decide_connect(&crate::ConnectFacts::new("bad.example", 443, client));
        assert!(matches!(d.action, crate::Action::Deny { .. }));
        assert!(
            d.to_string().contains("route [\"corp\", \"backup\"]"),
            "{d}"
        );
        // `policy explain` prints every decision's route.
        let e = p.explain_connect(&crate::ConnectFacts::new("www.example.com", 443, client));
        assert!(
            e.to_string().contains("route:    [\"corp\", \"backup\"]\n"),
            "{e}"
        );
    }

    #[test]
    fn the_outlook_profile_can_be_routed_as_a_whole() {
        let p = policy("[outlook]\nroute = \"cloud\"\n");
        assert_eq!(route_of(&p, "outlook.office365.com"), "[\"cloud\"]");
        assert_eq!(route_of(&p, "www.example.com"), "direct");
        let raw: crate::RawPolicy = toml::from_str("[outlook]\nroute = [\"a\", \"a\"]\n").unwrap();
        let err = crate::Policy::compile(&raw).unwrap_err().to_string();
        assert!(err.contains("policy.outlook.route"), "{err}");
        let raw: crate::RawPolicy =
            toml::from_str("[[rules]]\nhost = \"x.test\"\naction = \"tunnel\"\nroute = \"a b\"\n")
                .unwrap();
        let err = crate::Policy::compile(&raw).unwrap_err().to_string();
        assert!(err.contains("policy.rules[0].route"), "{err}");
    }
}
