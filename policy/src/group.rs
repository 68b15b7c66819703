//! Group and account names in one spelling, so that a `group` rule cannot be missed (or a
//! `deny` by group dodged) by case, by DN spacing, by naming a group by CN instead of DN, or by
//! presenting the user as `DOMAIN\user` instead of `user@REALM`.
//!
//! - [`normalize_group`]: the spelling rules are compiled to and group sources report in:
//!   lower case (Unicode), and for a distinguished name no blanks around `,`, `=` and `+`.
//! - [`group_aliases`]: the names one directory group is known by — its DN and its CN.
//! - [`account_name`]: the key a user's groups are looked up by: the bare account name, lower
//!   case, without `DOMAIN\` or `@REALM`.

/// Whether `name` is written as a distinguished name (`cn=finance,ou=groups,...`).
fn is_dn(name: &str) -> bool {
    name.contains('=')
}

/// The one spelling of a group name. A DN loses the blanks around its separators (`CN=Finance,
/// OU=Groups` and `cn=finance,ou=groups` are one group); escaped characters (`\,`) are kept.
pub fn normalize_group(name: &str) -> String {
    let lower = name.trim().to_lowercase();
    if !is_dn(&lower) {
        return lower;
    }
    let mut out = String::with_capacity(lower.len());
    let mut escaped = false;
    let mut pending_blank = false;
    // At the start, or right after an unescaped separator: blanks here are dropped.
    let mut after_separator = true;
    for c in lower.chars() {
        if escaped {
            out.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => {
                if pending_blank {
                    out.push(' ');
                    pending_blank = false;
                }
                out.push(c);
                escaped = true;
                after_separator = false;
            }
            ',' | '=' | '+' => {
                // Blanks before a separator go; so do those after it (skipped below).
                pending_blank = false;
                out.push(c);
                after_separator = true;
            }
            c if c.is_whitespace() => {
                if !after_separator {
                    pending_blank = true;
                }
            }
            c => {
                after_separator = false;
                if pending_blank {
                    out.push(' ');
                    pending_blank = false;
                }
                out.push(c);
            }
        }
    }
    out
}

/// Whether a group the user is in (`have`, as a source reported it) is the rule's group
/// (`want`, already normalised when the rule was compiled). Sources report normalised names;
/// anything else is normalised here, so a caller that forgets cannot open a gap.
pub(crate) fn group_matches(have: &str, want: &str) -> bool {
    let plain = have.is_ascii() && !is_dn(have) && have.trim() == have;
    if plain {
        have.eq_ignore_ascii_case(want)
    } else {
        normalize_group(have) == want
    }
}

/// The names a directory group is known by, normalised: its DN and, when the DN's first RDN is
/// `cn=…`, that CN. A rule may name the group either way.
pub fn group_aliases(dn: &str) -> Vec<String> {
    let dn = normalize_group(dn);
    let cn = first_rdn_value(&dn, "cn");
    let mut names = vec![dn];
    if let Some(cn) = cn {
        if !names.contains(&cn) {
            names.push(cn);
        }
    }
    names
}

/// The value of the first RDN of a normalised DN when its attribute is `attr`, unescaped.
fn first_rdn_value(dn: &str, attr: &str) -> Option<String> {
    let rest = dn.strip_prefix(attr)?.strip_prefix('=')?;
    let mut value = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => value.push(chars.next()?),
            ',' | '+' => break,
            c => value.push(c),
        }
    }
    (!value.is_empty()).then_some(value)
}

/// The account a user's groups belong to: `LAB\alice`, `alice@LAB.TEST` and `Alice` are all
/// `alice`. Directory filters (`sAMAccountName={user}`) and group files use this name.
pub fn account_name(user: &str) -> String {
    let user = user.trim();
    let user = user.rsplit_once('\\').map_or(user, |(_domain, u)| u);
    let user = user.split_once('@').map_or(user, |(u, _realm)| u);
    user.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_spellings_meet() {
        for (raw, want) in [
            ("Finance", "finance"),
            ("  FINANCE ", "finance"),
            (
                "CN=Finance, OU=Groups ,DC=lab,DC=test",
                "cn=finance,ou=groups,dc=lab,dc=test",
            ),
            ("cn = Finance Team,ou=groups", "cn=finance team,ou=groups"),
            ("cn=a\\, b,ou=g", "cn=a\\, b,ou=g"),
            ("Ärzte", "ärzte"),
        ] {
            assert_eq!(normalize_group(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn matching_normalises_what_a_source_reports() {
        assert!(group_matches("finance", "finance"));
        assert!(group_matches("FINANCE", "finance"));
        assert!(group_matches(
            "CN=Finance, OU=Groups,DC=lab,DC=test",
            "cn=finance,ou=groups,dc=lab,dc=test"
        ));
        assert!(group_matches("ÄRZTE", "ärzte"));
        assert!(!group_matches("finance2", "finance"));
        assert!(!group_matches(
            "cn=finance,ou=other",
            "cn=finance,ou=groups"
        ));
    }

    #[test]
    fn a_directory_group_is_known_by_dn_and_cn() {
        assert_eq!(
            group_aliases("CN=Finance,OU=Groups,DC=lab,DC=test"),
            vec!["cn=finance,ou=groups,dc=lab,dc=test", "finance"]
        );
        assert_eq!(
            group_aliases("cn=a\\, b,ou=g"),
            vec!["cn=a\\, b,ou=g", "a, b"]
        );
        // Not a CN first: only the DN.
        assert_eq!(group_aliases("ou=Groups,dc=x"), vec!["ou=groups,dc=x"]);
    }

    /// A `deny` by group holds whatever spelling the rule or the source uses: case, DN
    /// spacing, CN or DN; a user outside the group, or whose groups are unknown, passes.
    #[test]
    fn a_deny_by_group_cannot_be_dodged_by_spelling() {
        use crate::decision::{Action, ConnectFacts, Identity};
        let raw: crate::RawPolicy = toml::from_str(
            "[outlook]\nmode = \"off\"\n\
             [[rules]]\nname = \"no-finance\"\nhost = \"*.test\"\ngroup = \"Finance\"\naction = \"deny\"\nreason = \"no\"\n\
             [[rules]]\nname = \"no-staff\"\nhost = \"*.test\"\ngroup = \"CN=Staff, OU=Groups,DC=lab,DC=test\"\naction = \"deny\"\nreason = \"no\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let policy = crate::Policy::compile(&raw).unwrap_or_else(|e| panic!("{e}"));
        let decide = |groups: &[&str]| {
            let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
            let identity = Identity::with_groups("alice", &groups);
            let facts =
                ConnectFacts::new("a.test", 443, [10, 0, 0, 1].into()).with_user(Some(identity));
            let d = policy.decide_connect(&facts);
            (
                matches!(d.action, Action::Deny { .. }),
                d.rule.name.to_string(),
            )
        };
        for (groups, rule) in [
            (&["finance"][..], "no-finance"),
            (&["FINANCE"], "no-finance"),
            (&["cn=other,ou=groups", "finance"], "no-finance"),
            (
                &group_aliases_ref("cn=finance,ou=groups,dc=lab,dc=test"),
                "no-finance",
            ),
            (&["cn=staff,ou=groups,dc=lab,dc=test"], "no-staff"),
            (&["CN=Staff,OU=Groups, DC=lab, DC=test"], "no-staff"),
        ] {
            assert_eq!(decide(groups), (true, rule.to_owned()), "{groups:?}");
        }
        for groups in [
            &[][..],
            &["finance2"],
            &["cn=staff,ou=other,dc=lab,dc=test"],
            &["staff"],
        ] {
            assert!(!decide(groups).0, "{groups:?}");
        }
    }

    fn group_aliases_ref(dn: &str) -> [&'static str; 2] {
        let names = group_aliases(dn);
        [
            Box::leak(names[0].clone().into_boxed_str()),
            Box::leak(names[1].clone().into_boxed_str()),
        ]
    }

    #[test]
    fn account_names_meet() {
        for raw in [
            "alice",
            "Alice",
            "LAB\\alice",
            "lab\\ALICE",
            "alice@LAB.TEST",
            " ALICE@lab.test ",
        ] {
            assert_eq!(account_name(raw), "alice", "{raw:?}");
        }
        assert_eq!(account_name("bob.smith"), "bob.smith");
    }
}
