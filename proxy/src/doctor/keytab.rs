//! Reads a keytab's entries (principal, kvno, enctype) — never the keys — so the doctor can say
//! which service principals and enctypes it holds. MIT's file format, version 0x502 (what
//! `ktutil`, `kadmin ktadd` and Windows' `ktpass` write); a bounded walk that returns an error on
//! anything unexpected and never panics.

/// One key in the keytab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// `HTTP/proxy.example.com@EXAMPLE.COM`.
    pub principal: String,
    pub kvno: u32,
    pub enctype: i32,
}

/// The largest keytab read; real ones are a few KB.
const MAX_SIZE: u64 = 1024 * 1024;

pub(super) fn read(path: &std::path::Path) -> Result<Vec<Entry>, String> {
    use std::io::Read as _;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_SIZE)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&bytes).map_err(|e| format!("{} is not a keytab: {e}", path.display()))
}

pub(super) fn parse(bytes: &[u8]) -> Result<Vec<Entry>, &'static str> {
    let mut r = Reader(bytes);
    if r.take(2)? != [0x05, 0x02] {
        return Err("not MIT keytab format 0x0502");
    }
    let mut entries = Vec::new();
    while !r.0.is_empty() {
        let size = i32::from_be_bytes(r.array()?);
        let len = usize::try_from(size.unsigned_abs()).map_err(|_| "bad entry size")?;
        let body = r.take(len)?;
        // A negative size is a hole left by a deleted entry.
        if size > 0 {
            entries.push(entry(body)?);
        }
    }
    Ok(entries)
}

fn entry(body: &[u8]) -> Result<Entry, &'static str> {
    let mut r = Reader(body);
    let components = u16::from_be_bytes(r.array()?);
    let realm = r.string()?;
    let mut names = Vec::new();
    for _ in 0..components {
        names.push(r.string()?);
    }
    let _name_type: [u8; 4] = r.array()?;
    let _timestamp: [u8; 4] = r.array()?;
    let [vno8] = r.array()?;
    let enctype = i32::from(u16::from_be_bytes(r.array()?));
    let key_len = usize::from(u16::from_be_bytes(r.array()?));
    r.take(key_len)?;
    // Since krb5 1.14 a 32-bit kvno follows when the 8-bit one overflowed; 0 means "use vno8".
    let kvno = match r.array::<4>() {
        Ok(wide) if u32::from_be_bytes(wide) != 0 => u32::from_be_bytes(wide),
        _ => u32::from(vno8),
    };
    Ok(Entry {
        principal: format!("{}@{realm}", names.join("/")),
        kvno,
        enctype,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("truncated");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        self.take(N)?.try_into().map_err(|_| "truncated")
    }

    fn string(&mut self) -> Result<String, &'static str> {
        let len = usize::from(u16::from_be_bytes(self.array()?));
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a name is not UTF-8")
    }
}

/// Names for the enctype numbers of RFC 3961/8009 (what `klist -e` shows).
pub(super) fn enctype_name(enctype: i32) -> String {
    match enctype {
        1 => "des-cbc-crc".to_owned(),
        3 => "des-cbc-md5".to_owned(),
        16 => "des3-cbc-sha1".to_owned(),
        17 => "aes128-cts-hmac-sha1-96".to_owned(),
        18 => "aes256-cts-hmac-sha1-96".to_owned(),
        19 => "aes128-cts-hmac-sha256-128".to_owned(),
        20 => "aes256-cts-hmac-sha384-192".to_owned(),
        23 => "arcfour-hmac".to_owned(),
        25 => "camellia128-cts-cmac".to_owned(),
        26 => "camellia256-cts-cmac".to_owned(),
        other => format!("enctype {other}"),
    }
}

/// AES: what Windows domain controllers issue tickets with by default since 2022, and what
/// MIT krb5 permits by default (`allow_weak_crypto = false`).
pub(super) fn is_strong(enctype: i32) -> bool {
    matches!(enctype, 17..=20 | 25 | 26)
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn counted(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn entry_bytes(
        names: &[&str],
        realm: &str,
        vno8: u8,
        enctype: u16,
        wide: Option<u32>,
    ) -> Vec<u8> {
        let mut e = (names.len() as u16).to_be_bytes().to_vec();
        e.extend(counted(realm));
        for n in names {
            e.extend(counted(n));
        }
        e.extend([0, 0, 0, 1, 0x60, 0, 0, 0, vno8]);
        e.extend(enctype.to_be_bytes());
        e.extend(counted("0123456789abcdef"));
        if let Some(w) = wide {
            e.extend(w.to_be_bytes());
        }
        let mut out = (e.len() as i32).to_be_bytes().to_vec();
        out.extend(e);
        out
    }

    #[test]
    fn reads_principals_kvnos_and_enctypes_and_skips_holes() {
        let mut kt = vec![5, 2];
        kt.extend(entry_bytes(
            &["HTTP", "proxy.lab.test"],
            "LAB.TEST",
            3,
            18,
            None,
        ));
        kt.extend((-8i32).to_be_bytes());
        kt.extend([0u8; 8]);
        kt.extend(entry_bytes(
            &["HTTP", "proxy.lab.test"],
            "LAB.TEST",
            0,
            17,
            Some(300),
        ));
        let entries = parse(&kt).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].principal, "HTTP/proxy.lab.test@LAB.TEST");
        assert_eq!((entries[0].kvno, entries[0].enctype), (3, 18));
        assert_eq!((entries[1].kvno, entries[1].enctype), (300, 17));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut kt = vec![5, 2];
        kt.extend(entry_bytes(&["HTTP", "x"], "R", 1, 18, None));
        for cut in 2..kt.len() {
            let _ = parse(&kt[..cut]);
        }
        assert!(parse(b"").is_err());
        assert!(parse(&[5, 1, 0, 0, 0, 1]).is_err());
        assert!(parse(&[5, 2, 0x7f, 0xff, 0xff, 0xff]).is_err());
    }
}
