//! DNS presentation helpers shared by `tap` output and the sensor's RRsets: mnemonics for
//! RCODE, OPCODE and RR types (RFC 3597 `TYPEnnn` when unknown) and rdata in zone-file
//! presentation format (quoted, escaped TXT strings; RFC 3597 `\# len hex` for unknown types),
//! which hickory's `Display` does not give for those cases.

use std::fmt::Write as _;

use hickory_proto::op::{OpCode, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

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
fn quoted(bytes: &[u8], out: &mut String) {
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

/// Rdata in presentation format.
pub fn rdata_text(rdata: &RData) -> String {
    match rdata {
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

    #[test]
    fn txt_is_quoted_and_escaped() {
        let txt = RData::TXT(TXT::from_bytes(vec![b"v=spf1 -all", b"say \"hi\"\\", b"\x00\xff"]));
        assert_eq!(rdata_text(&txt), r#""v=spf1 -all" "say \"hi\"\\" "\000\255""#);
    }

    #[test]
    fn unknown_types_use_rfc3597() {
        assert_eq!(rrtype_name(RecordType::Unknown(65280)), "TYPE65280");
        assert_eq!(rrtype_name(RecordType::AAAA), "AAAA");
        assert_eq!(generic(&[0xde, 0xad]), "\\# 2 dead");
        assert_eq!(generic(&[]), "\\# 0");
    }
}
