//! Built-in services and groups: the ports Outlook and Windows clients need outside the proxy.
//!
//! Hand-written firewall scripts get these wrong in predictable ways (IMAP 143 forgotten, 465
//! labelled "SMTPS" next to 587, LDAP without its UDP half), so the table is data with one place
//! to check it.

/// A built-in service: a name, why clients need it, and its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinService {
    pub name: &'static str,
    pub description: &'static str,
    pub tcp: &'static [u16],
    pub udp: &'static [u16],
}

/// A built-in group of services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinGroup {
    pub name: &'static str,
    pub description: &'static str,
    pub members: &'static [&'static str],
}

const fn svc(
    name: &'static str,
    description: &'static str,
    tcp: &'static [u16],
    udp: &'static [u16],
) -> BuiltinService {
    BuiltinService {
        name,
        description,
        tcp,
        udp,
    }
}

/// Every built-in service.
pub const BUILTIN_SERVICES: &[BuiltinService] = &[
    svc("smtp", "SMTP, server-to-server mail (MX)", &[25], &[]),
    svc(
        "submissions",
        "mail submission over implicit TLS (RFC 8314)",
        &[465],
        &[],
    ),
    svc(
        "submission",
        "mail submission with STARTTLS (RFC 6409)",
        &[587],
        &[],
    ),
    svc("pop3", "POP3", &[110], &[]),
    svc("pop3s", "POP3 over TLS", &[995], &[]),
    svc("imap", "IMAP", &[143], &[]),
    svc("imaps", "IMAP over TLS", &[993], &[]),
    svc(
        "ldap",
        "LDAP; UDP is CLDAP, the domain-controller locator",
        &[389],
        &[389],
    ),
    svc("ldaps", "LDAP over TLS", &[636], &[]),
    svc(
        "global-catalog",
        "Active Directory Global Catalog (LDAP 3268, LDAPS 3269)",
        &[3268, 3269],
        &[],
    ),
    svc(
        "dns",
        "DNS; TCP for large answers and zone data",
        &[53],
        &[53],
    ),
    svc(
        "kerberos",
        "Kerberos KDC; Negotiate auth to the proxy needs it",
        &[88],
        &[88],
    ),
    svc("kpasswd", "Kerberos password change", &[464], &[464]),
    svc("ssh", "SSH, for administering the proxy host", &[22], &[]),
];

/// Every built-in group.
pub const BUILTIN_GROUPS: &[BuiltinGroup] = &[
    BuiltinGroup {
        name: "mail",
        description: "sending and fetching mail",
        members: &[
            "smtp",
            "submissions",
            "submission",
            "pop3",
            "pop3s",
            "imap",
            "imaps",
        ],
    },
    BuiltinGroup {
        name: "directory",
        description: "Active Directory: LDAP, Global Catalog, DNS, Kerberos",
        members: &[
            "ldap",
            "ldaps",
            "global-catalog",
            "dns",
            "kerberos",
            "kpasswd",
        ],
    },
    BuiltinGroup {
        name: "outlook",
        description:
            "everything an Outlook client needs besides HTTPS (which goes through the proxy)",
        members: &["mail", "directory"],
    },
];

/// The built-in service called `name`.
pub fn builtin_service(name: &str) -> Option<&'static BuiltinService> {
    BUILTIN_SERVICES.iter().find(|s| s.name == name)
}

/// The built-in group called `name`.
pub fn builtin_group(name: &str) -> Option<&'static BuiltinGroup> {
    BUILTIN_GROUPS.iter().find(|g| g.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table is the product's promise; check each port against the issue, one line each.
    #[test]
    fn ports_are_the_documented_ones() {
        let cases: &[(&str, &[u16], &[u16])] = &[
            ("smtp", &[25], &[]),
            ("submissions", &[465], &[]),
            ("submission", &[587], &[]),
            ("pop3", &[110], &[]),
            ("pop3s", &[995], &[]),
            ("imap", &[143], &[]),
            ("imaps", &[993], &[]),
            ("ldap", &[389], &[389]),
            ("ldaps", &[636], &[]),
            ("global-catalog", &[3268, 3269], &[]),
            ("dns", &[53], &[53]),
            ("kerberos", &[88], &[88]),
            ("kpasswd", &[464], &[464]),
            ("ssh", &[22], &[]),
        ];
        assert_eq!(cases.len(), BUILTIN_SERVICES.len());
        for (name, tcp, udp) in cases {
            let s = builtin_service(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!((s.tcp, s.udp), (*tcp, *udp), "{name}");
        }
    }

    #[test]
    fn group_members_exist_and_outlook_has_all_but_ssh() {
        for g in BUILTIN_GROUPS {
            for m in g.members {
                assert!(
                    builtin_service(m).is_some() || builtin_group(m).is_some(),
                    "{}: {m}",
                    g.name
                );
            }
        }
        let mut outlook: Vec<&str> = Vec::new();
        for g in ["mail", "directory"] {
            outlook.extend(builtin_group(g).map(|g| g.members).unwrap_or_default());
        }
        let mut all: Vec<&str> = BUILTIN_SERVICES
            .iter()
            .map(|s| s.name)
            .filter(|n| *n != "ssh")
            .collect();
        outlook.sort_unstable();
        all.sort_unstable();
        assert_eq!(outlook, all);
    }
}
