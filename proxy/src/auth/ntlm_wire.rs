//! NTLM message layout, read only as far as GSS-API needs it: the message type, and one
//! re-layout that lets gss-ntlmssp accept curl's messages. No NTLM cryptography here — the
//! proof is verified by gss-ntlmssp (shared/recipes/NTLM.md).
//!
//! curl writes no 8-byte Version field: its NEGOTIATE (type 1) is 32 bytes where gss-ntlmssp
//! wants at least 40, and its AUTHENTICATE (type 3) puts the payload right after the 64-byte
//! header, at offset 64, while gss-ntlmssp — having offered NEGOTIATE_VERSION in its
//! CHALLENGE — expects it at 72 or later and rejects the message. [`relayout`] pads the first
//! and inserts an empty Version into the second (shifting the six payload offsets). The
//! NTLMv2 proof does not cover the layout, and a message with a MIC (Windows) already has a
//! Version field and is left alone, so nothing a client proves is altered.

/// `NTLMSSP\0`: every NTLM message starts with it.
pub(super) const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
const HEADER_TYPE3: usize = 64;
const VERSION_LEN: usize = 8;
const MIN_TYPE1: usize = 40;

/// The message type (1 NEGOTIATE, 2 CHALLENGE, 3 AUTHENTICATE) of a raw NTLM token.
pub(super) fn message_type(token: &[u8]) -> Option<u32> {
    if !token.starts_with(SIGNATURE) {
        return None;
    }
    let bytes: [u8; 4] = token.get(8..12)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

/// The six payload offsets of a type 3 message (LM, NT, domain, user, workstation, session key).
fn type3_offsets(token: &[u8]) -> Option<[u32; 6]> {
    let mut offsets = [0u32; 6];
    for (i, slot) in offsets.iter_mut().enumerate() {
        let at = 16 + 8 * i;
        let bytes: [u8; 4] = token.get(at..at + 4)?.try_into().ok()?;
        *slot = u32::from_le_bytes(bytes);
    }
    Some(offsets)
}

/// Lays curl's messages out the way gss-ntlmssp decodes them; any other token is returned
/// unchanged. Never panics on malformed input (it is the client's).
pub(super) fn relayout(mut token: Vec<u8>) -> Vec<u8> {
    match message_type(&token) {
        Some(1) if token.len() < MIN_TYPE1 => {
            token.resize(MIN_TYPE1, 0);
            token
        }
        Some(3) if token.len() >= HEADER_TYPE3 => {
            let Some(offsets) = type3_offsets(&token) else {
                return token;
            };
            let first = offsets.iter().copied().filter(|&o| o != 0).min();
            if first != Some(HEADER_TYPE3 as u32) {
                return token;
            }
            for (i, offset) in offsets.iter().enumerate() {
                if *offset != 0 {
                    let at = 16 + 8 * i;
                    let moved = offset.saturating_add(VERSION_LEN as u32).to_le_bytes();
                    token[at..at + 4].copy_from_slice(&moved);
                }
            }
            token.splice(HEADER_TYPE3..HEADER_TYPE3, [0u8; VERSION_LEN]);
            token
        }
        _ => token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn curls_negotiate_is_padded_to_carry_a_version() {
        // curl 7.88's type 1, captured (shared/recipes/NTLM.md).
        let t1 = base64::engine::general_purpose::STANDARD
            .decode("TlRMTVNTUAABAAAABoIIAAAAAAAAAAAAAAAAAAAAAAA=")
            .unwrap_or_default();
        assert_eq!(t1.len(), 32);
        assert_eq!(message_type(&t1), Some(1));
        let out = relayout(t1.clone());
        assert_eq!(out.len(), 40);
        assert_eq!(&out[..32], &t1[..]);
    }

    #[test]
    fn a_type3_without_version_gets_one_and_its_offsets_move() {
        let mut t3 = Vec::from(&SIGNATURE[..]);
        t3.extend_from_slice(&3u32.to_le_bytes());
        // Six buffers: (len, maxlen, offset); the user name at 64, the NT response after it.
        let buffers = [(0u16, 64u32), (4, 68), (0, 0), (2, 64), (0, 72), (0, 0)];
        for (len, offset) in buffers {
            t3.extend_from_slice(&len.to_le_bytes());
            t3.extend_from_slice(&len.to_le_bytes());
            t3.extend_from_slice(&offset.to_le_bytes());
        }
        t3.extend_from_slice(&0u32.to_le_bytes()); // flags
        t3.extend_from_slice(b"abNTNT");
        let out = relayout(t3.clone());
        assert_eq!(out.len(), t3.len() + 8);
        assert_eq!(&out[64..72], &[0u8; 8]);
        assert_eq!(&out[72..], b"abNTNT");
        assert_eq!(type3_offsets(&out), Some([72, 76, 0, 72, 80, 0]));
        // Already laid out with a Version: untouched.
        assert_eq!(relayout(out.clone()), out);
    }

    #[test]
    fn anything_else_is_left_alone_and_nothing_panics() {
        for token in [
            Vec::new(),
            b"NTLMSSP\0".to_vec(),
            b"NTLMSSP\0\x03\0\0\0short".to_vec(),
            b"NTLMSSP\0\x02\0\0\0".to_vec(),
            vec![0x60, 0x82, 1, 2],
        ] {
            assert_eq!(relayout(token.clone()), token);
        }
        // Offsets near u32::MAX must not overflow into a panic.
        let mut t3 = Vec::from(&SIGNATURE[..]);
        t3.extend_from_slice(&3u32.to_le_bytes());
        for _ in 0..6 {
            t3.extend_from_slice(&[0, 0, 0, 0]);
            t3.extend_from_slice(&u32::MAX.to_le_bytes());
        }
        t3.extend_from_slice(&[0; 4]);
        assert_eq!(relayout(t3.clone()), t3);
        // The first payload at 64 and another offset at the very top: saturates, no panic.
        t3[16..20].copy_from_slice(&64u32.to_le_bytes());
        assert_eq!(relayout(t3.clone()).len(), t3.len() + 8);
    }
}
