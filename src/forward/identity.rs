//! Who a forwarding client is: the common name (CN) of its certificate's subject, which
//! rustls has already verified against the collector's CA. The sensor id never comes from the
//! payload, so one sensor cannot write under another's name. A small DER walk (the four
//! fields before the subject are skipped) instead of a full X.509 parser.

/// One DER element: (tag, contents, rest).
fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize), &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The subject CN of a DER certificate; `None` if it has none or is malformed.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (SEQUENCE, cert, _) = element(der)? else { return None };
    let (SEQUENCE, mut tbs, _) = element(cert)? else { return None };
    // [0] version is optional; then serial, signature algorithm, issuer, validity.
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs)?.2;
    }
    for _ in 0..4 {
        tbs = element(tbs)?.2;
    }
    let (SEQUENCE, mut subject, _) = element(tbs)? else { return None };
    while !subject.is_empty() {
        let (SET, mut set, rest) = element(subject)? else { return None };
        subject = rest;
        while !set.is_empty() {
            let (SEQUENCE, attr, rest) = element(set)? else { return None };
            set = rest;
            let (0x06, oid, value) = element(attr)? else { return None };
            if oid == OID_COMMON_NAME {
                let (_, text, _) = element(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

/// The sender id a certificate carries: its CN, if that is a valid id.
pub fn sender_id(der: &[u8]) -> Option<String> {
    common_name(der).filter(|s| valid_id(s))
}

/// Sensor ids: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_der_is_none_not_a_panic() {
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(common_name(&[0x30, 0x03, 0x30, 0x01]), None);
        let mut junk = vec![0x30, 0x82, 0x01, 0x00];
        junk.extend(std::iter::repeat_n(0x30, 256));
        assert_eq!(common_name(&junk), None);
    }

    #[test]
    fn ids_are_short_and_plain() {
        assert!(valid_id("sensor-1.example"));
        assert!(!valid_id("") && !valid_id("a b") && !valid_id(&"x".repeat(65)));
    }
}
