//! DNS presentation helpers shared by `tap` output and the sensor's RRsets: mnemonics for
//! RCODE, OPCODE and RR types (RFC 3597 `TYPEnnn` when unknown) and rdata in zone-file
//! presentation format (quoted, escaped TXT strings; RFC 3597 `\# len hex` for unknown types),
//! which hickory's `Display` does not give for those cases; domain names as on the wire, in
//! ASCII with RFC 1035 escapes (see [`push_name`]).

use std::fmt::Write as _;

use hickory_proto::op::{OpCode, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// RCODE mnemonic as dig and the dnstap tools print it (numbers when unassigned).
pub fn rcode_name(rcode: ResponseCode) -> String {
    let n = u16::from(rcode);
    let name = match n {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADVERS",
        23 => "BADCOOKIE",
        _ => return format!("RCODE{n}"),
    };
    name.to_string()
}

pub fn opcode_name(op: OpCode) -> String {
    match u8::from(op) {
        0 => "QUERY".into(),
        1 => "IQUERY".into(),
        2 => "STATUS".into(),
        4 => "NOTIFY".into(),
        5 => "UPDATE".into(),
        n => format!("OPCODE{n}"),
    }
}

/// RR type mnemonic; `TYPEnnn` (RFC 3597) for types hickory does not know.
pub fn rrtype_name(rtype: RecordType) -> String {
    match rtype {
        RecordType::Unknown(code) => format!("TYPE{code}"),
        known => known.to_string(),
    }
}

/// A character-string in presentation format: quoted, with `"` and `\` escaped and
/// non-printable bytes as `\DDD`.
pub(crate) fn quoted(bytes: &[u8], out: &mut String) {
    out.push('"');
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out.push('"');
}

/// A domain name in presentation format, absolute (with the trailing dot; the root is `.`).
pub fn name_text(name: &Name) -> String {
    let mut s = String::with_capacity(name.len() + 1);
    push_name(name, &mut s);
    s
}

/// Appends a domain name in RFC 1035 presentation format (section 5.1), byte for byte as on
/// the wire: letter case kept, `xn--` labels left in ASCII (passive DNS databases and the
/// DNSDB API keep names as sent), the special characters `. \ " ( ) ; @ $` escaped with a
/// backslash, any other byte outside printable ASCII as `\DDD` in decimal. hickory's
/// `Display` differs on exactly those: it turns `xn--` labels into Unicode and writes `\DDD`
/// in octal (and it is the sensor's costliest step, formatting a character at a time).
pub fn push_name(name: &Name, out: &mut String) {
    let mut labels = 0;
    for label in name.iter() {
        labels += 1;
        push_label(label, out);
    }
    if labels == 0 {
        out.push('.');
    }
}

/// [`push_name`] for a name in wire format without compression.
pub(crate) fn push_wire_name(wire: &[u8], out: &mut String) {
    escape_wire_name(wire, |b| out.push(char::from(b)));
}

/// [`push_wire_name`] into bytes.
pub(crate) fn push_wire_name_bytes(wire: &[u8], out: &mut Vec<u8>) {
    escape_wire_name(wire, |b| out.push(b));
}

/// One label and its dot, escaped as [`push_name`] says.
fn push_label(label: &[u8], out: &mut String) {
    escape_label(label, |b| out.push(char::from(b)));
    out.push('.');
}

/// [`push_label`] into bytes.
pub(crate) fn push_label_bytes(label: &[u8], out: &mut Vec<u8>) {
    escape_label(label, |b| out.push(b));
    out.push(b'.');
}

/// The name's characters as [`push_name`] writes them (all ASCII), one at a time.
#[inline(always)]
fn escape_wire_name(wire: &[u8], mut push: impl FnMut(u8)) {
    let mut labels = 0;
    for label in crate::sensor::wire::labels(wire) {
        labels += 1;
        escape_label(label, &mut push);
        push(b'.');
    }
    if labels == 0 {
        push(b'.');
    }
}

/// The label's characters as [`push_name`] writes them (all ASCII), one at a time.
#[inline(always)]
fn escape_label(label: &[u8], mut push: impl FnMut(u8)) {
    for &b in label {
        match b {
            b'.' | b'\\' | b'"' | b'(' | b')' | b';' | b'@' | b'$' => {
                push(b'\\');
                push(b);
            }
            0x21..=0x7e => push(b),
            _ => {
                push(b'\\');
                push(b'0' + b / 100);
                push(b'0' + b / 10 % 10);
                push(b'0' + b % 10);
            }
        }
    }
}

/// Reads back a name written by [`push_name`] (absolute; `\DDD` decimal, `\c` for any other
/// character). hickory's parser reads `\DDD` as octal, so it cannot. `None` if it is not one.
pub fn name_from_text(text: &str) -> Option<Name> {
    let body = text.strip_suffix('.')?;
    let mut labels: Vec<Vec<u8>> = Vec::new();
    if !body.is_empty() {
        let (mut label, mut bytes) = (Vec::new(), body.bytes());
        while let Some(b) = bytes.next() {
            match b {
                b'.' => labels.push(std::mem::take(&mut label)),
                b'\\' => {
                    let c = bytes.next()?;
                    if c.is_ascii_digit() {
                        let digits = [c, bytes.next()?, bytes.next()?];
                        if !digits.iter().all(u8::is_ascii_digit) {
                            return None;
                        }
                        let n = digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
                        label.push(u8::try_from(n).ok()?);
                    } else {
                        label.push(c);
                    }
                }
                _ => label.push(b),
            }
        }
        labels.push(label);
    }
    if labels.iter().any(Vec::is_empty) {
        return None;
    }
    let mut name = Name::from_labels(labels).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// Dotted decimal by hand: std's `Display` goes through the formatter per octet, 6% of the
/// sensor's stages.
pub(crate) fn push_ipv4(octets: [u8; 4], s: &mut String) {
    for (i, o) in octets.into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if o >= 100 {
            s.push((b'0' + o / 100) as char);
        }
        if o >= 10 {
            s.push((b'0' + o / 10 % 10) as char);
        }
        s.push((b'0' + o % 10) as char);
    }
}

/// `octets` as `Ipv6Addr`'s `Display` writes it (RFC 5952: lower-case hex without leading
/// zeros, the first longest run of two or more zero groups as `::`, `::ffff:` and dotted
/// decimal for IPv4-mapped addresses), appended to `s` without the formatting machinery,
/// which took three times the instructions.
pub(crate) fn push_ipv6(octets: [u8; 16], s: &mut String) {
    let groups: [u16; 8] = std::array::from_fn(|i| u16::from_be_bytes([octets[2 * i], octets[2 * i + 1]]));
    if groups[..5] == [0; 5] && groups[5] == 0xffff {
        s.push_str("::ffff:");
        push_ipv4([octets[12], octets[13], octets[14], octets[15]], s);
        return;
    }
    // The first longest run of zero groups.
    let (mut best, mut best_len, mut start, mut len) = (0, 0, 0, 0);
    for (i, g) in groups.iter().enumerate() {
        if *g == 0 {
            if len == 0 {
                start = i;
            }
            len += 1;
            if len > best_len {
                (best, best_len) = (start, len);
            }
        } else {
            len = 0;
        }
    }
    let hex = |s: &mut String, g: u16| {
        let mut shift = (12 - (g.max(1).leading_zeros() / 4 * 4)) as i32;
        while shift >= 0 {
            s.push(char::from(b"0123456789abcdef"[usize::from(g >> shift & 0xf)]));
            shift -= 4;
        }
    };
    let part = |s: &mut String, gs: &[u16]| {
        for (i, g) in gs.iter().enumerate() {
            if i > 0 {
                s.push(':');
            }
            hex(s, *g);
        }
    };
    if best_len > 1 {
        part(s, &groups[..best]);
        s.push_str("::");
        part(s, &groups[best + best_len..]);
    } else {
        part(s, &groups);
    }
}

/// Rdata in presentation format. Names in the rdata of the common types (NS, CNAME, PTR,
/// ANAME, MX, SRV, SOA) as [`push_name`] writes them; other types as hickory prints them.
pub fn rdata_text(rdata: &RData) -> String {
    match rdata {
        RData::A(a) => {
            let mut s = String::with_capacity(15);
            push_ipv4(a.0.octets(), &mut s);
            s
        }
        RData::AAAA(a) => {
            let mut s = String::with_capacity(39);
            push_ipv6(a.0.octets(), &mut s);
            s
        }
        RData::NS(n) => name_text(&n.0),
        RData::CNAME(n) => name_text(&n.0),
        RData::PTR(n) => name_text(&n.0),
        RData::ANAME(n) => name_text(&n.0),
        RData::MX(mx) => {
            let mut s = format!("{} ", mx.preference);
            push_name(&mx.exchange, &mut s);
            s
        }
        RData::SRV(srv) => {
            let mut s = format!("{} {} {} ", srv.priority, srv.weight, srv.port);
            push_name(&srv.target, &mut s);
            s
        }
        RData::SOA(soa) => {
            let mut s = String::with_capacity(soa.mname.len() + soa.rname.len() + 48);
            push_name(&soa.mname, &mut s);
            s.push(' ');
            push_name(&soa.rname, &mut s);
            let _ = write!(s, " {} {} {} {} {}", soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum);
            s
        }
        RData::TXT(txt) => {
            let mut s = String::new();
            for (i, part) in txt.txt_data.iter().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                quoted(part, &mut s);
            }
            s
        }
        RData::Unknown { rdata, .. } => generic(&rdata.anything),
        RData::NULL(null) => generic(&null.anything),
        other => other.to_string(),
    }
}

/// RFC 3597 generic rdata: `\# <length> <hex>`.
fn generic(bytes: &[u8]) -> String {
    let mut s = format!("\\# {}", bytes.len());
    if !bytes.is_empty() {
        s.push(' ');
        for b in bytes {
            let _ = write!(s, "{b:02x}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::TXT;
    use std::net::Ipv6Addr;

    fn std_and_ours(groups: [u16; 8]) -> (String, String) {
        let a = Ipv6Addr::from(groups);
        let mut s = String::from("x");
        push_ipv6(a.octets(), &mut s);
        (s, format!("x{a}"))
    }

    /// Every pattern of zero and non-zero groups (zero runs of every length at every place),
    /// with non-zero groups of every hex width: what `Ipv6Addr`'s `Display` writes.
    #[test]
    fn ipv6_is_written_as_std_writes_it() {
        let values = [1u16, 0xf, 0x10, 0xff, 0x100, 0xfff, 0x1000, 0xffff, 0xabcd];
        for mask in 0u32..256 {
            for v in 0..values.len() {
                let groups =
                    std::array::from_fn(|i| if mask >> i & 1 == 1 { values[(v + i) % values.len()] } else { 0 });
                let (ours, std) = std_and_ours(groups);
                assert_eq!(ours, std, "{groups:x?}");
            }
        }
    }

    proptest::proptest! {
        /// Any groups, zeros and all-ones frequent, IPv4-mapped and -compatible forms among
        /// them: what `Ipv6Addr`'s `Display` writes.
        #[test]
        fn any_ipv6_is_written_as_std_writes_it(
            groups in proptest::array::uniform8(proptest::prop_oneof![
                proptest::strategy::Just(0u16),
                proptest::strategy::Just(0xffff),
                proptest::arbitrary::any::<u16>(),
            ]),
            prefix in 0u8..4,
        ) {
            let mut groups = groups;
            match prefix {
                0 => groups[..6].copy_from_slice(&[0, 0, 0, 0, 0, 0xffff]),
                1 => groups[..6].copy_from_slice(&[0; 6]),
                _ => {}
            }
            let (ours, std) = std_and_ours(groups);
            proptest::prop_assert_eq!(ours, std);
        }
    }

    #[test]
    fn txt_is_quoted_and_escaped() {
        let txt = RData::TXT(TXT::from_bytes(vec![b"v=spf1 -all", b"say \"hi\"\\", b"\x00\xff"]));
        assert_eq!(rdata_text(&txt), r#""v=spf1 -all" "say \"hi\"\\" "\000\255""#);
    }

    #[test]
    fn names_are_ascii_with_decimal_escapes_and_common_rdata_as_hickory_prints_it() {
        use hickory_proto::rr::rdata::{A, CNAME, MX, NS, SOA, SRV};
        use std::str::FromStr;
        let n = |s: &str| Name::from_str(s).unwrap();
        // Ordinary names: what hickory prints, so stores written before stay keyed alike.
        for s in ["www.Example.com.", "_sip._tcp.example.", "*.wild.example.", "a-b.c_d.", "."] {
            assert_eq!(name_text(&n(s)), n(s).to_string(), "{s}");
        }
        // IDN labels stay as sent (hickory's Display gives Unicode).
        let idn = n("xn--bcher-kva.example.");
        assert_eq!(name_text(&idn), "xn--bcher-kva.example.");
        assert_ne!(idn.to_string(), name_text(&idn));
        // Special and non-printable bytes: backslash, and \DDD in decimal.
        let odd = Name::from_labels(vec![&b"a b"[..], b"x.y", b"q\"", b"\x00\xff", b"com"]).unwrap();
        assert_eq!(name_text(&odd), r#"a\032b.x\.y.q\".\000\255.com."#);
        // And back, byte for byte (hickory's parser would read \032 as octal).
        use hickory_proto::serialize::binary::BinEncodable;
        for name in [&odd, &idn, &n("www.example.com."), &Name::root()] {
            assert_eq!(name_from_text(&name_text(name)).unwrap().to_bytes().unwrap(), name.to_bytes().unwrap());
        }
        // Every byte, in a label of its own and inside one: escaped as its class says, and back.
        for b in 0..=255u8 {
            let escaped = match b {
                b'.' | b'\\' | b'"' | b'(' | b')' | b';' | b'@' | b'$' => format!("\\{}", b as char),
                0x21..=0x7e => (b as char).to_string(),
                _ => format!("\\{b:03}"),
            };
            let name = Name::from_labels(vec![&[b][..], &[b'a', b, b'z'][..]]).unwrap();
            assert_eq!(name_text(&name), format!("{escaped}.a{escaped}z."), "{b}");
            assert_eq!(name_from_text(&name_text(&name)).unwrap().to_bytes().unwrap(), name.to_bytes().unwrap(), "{b}");
        }
        for bad in ["no.dot", "a\\03.", "a\\256.", "a..b.", "trailing\\"] {
            assert!(name_from_text(bad).is_none(), "{bad}");
        }
        // Rdata of the common types, byte-identical to hickory's for ordinary names.
        let ns = n("ns1.example.com.");
        let cases = [
            RData::A(A::new(192, 0, 2, 1)),
            RData::A(A::new(0, 10, 100, 255)),
            RData::A(A::new(9, 99, 109, 250)),
            RData::AAAA("2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().into()),
            RData::NS(NS(ns.clone())),
            RData::CNAME(CNAME(ns.clone())),
            RData::MX(MX::new(10, ns.clone())),
            RData::SRV(SRV::new(0, 5, 5060, ns.clone())),
            RData::SOA(SOA::new(ns.clone(), n("hostmaster.example.com."), 2026112901, 7200, 3600, 1209600, 300)),
        ];
        for rd in cases {
            assert_eq!(rdata_text(&rd), rd.to_string());
        }
        assert_eq!(rdata_text(&RData::MX(MX::new(5, idn))), "5 xn--bcher-kva.example.");
    }

    #[test]
    fn unknown_types_use_rfc3597() {
        assert_eq!(rrtype_name(RecordType::Unknown(65280)), "TYPE65280");
        assert_eq!(rrtype_name(RecordType::AAAA), "AAAA");
        assert_eq!(generic(&[0xde, 0xad]), "\\# 2 dead");
        assert_eq!(generic(&[]), "\\# 0");
    }
}
