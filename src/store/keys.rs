//! Key and value encodings of the store. Stable across versions: hashing is our own FNV-1a,
//! not std's (which may change between releases).
//!
//! - RRset key: `rev(owner) 0x00 rrtype(2, BE) bailiwick 0x00 digest(16)` where `rev` writes
//!   the labels right to left, each followed by a dot (`www.example.com.` ->
//!   `com.example.www.`), so that every name under a zone shares the zone's prefix, and the
//!   digest is of the canonical rdata set.
//! - Value: `first(8) last(8) count(8)` then the owner, the bailiwick and the rdata strings,
//!   each as `len(4, BE) bytes`.

use super::Entry;
use crate::sensor::Rrset;

/// `www.example.com.` -> `com.example.www.`; the root is the empty string. Labels are taken
/// from presentation format, where a dot inside a label is escaped (`\.`).
pub fn reverse_name(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return String::new();
    }
    let labels = split_labels(name);
    let mut out = String::with_capacity(name.len() + 1);
    for l in labels.iter().rev() {
        out.push_str(l);
        out.push('.');
    }
    out
}

/// Whether `name` is `zone` or below it, label by label (an escaped dot inside a label is not
/// a boundary). Both absolute, lower case.
pub fn at_or_below(name: &str, zone: &str) -> bool {
    reverse_name(name).starts_with(&reverse_name(zone))
}

/// Splits presentation-format labels on unescaped dots.
fn split_labels(name: &str) -> Vec<&str> {
    let bytes = name.as_bytes();
    let mut labels = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'.' => {
                labels.push(&name[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    labels.push(&name[start..]);
    labels
}

fn fnv1a(seed: u64, parts: &[String]) -> u64 {
    let mut h = seed;
    for p in parts {
        for b in p.as_bytes().iter().chain(std::iter::once(&0xffu8)) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// 128-bit digest of an rdata set (two FNV-1a passes with different offsets).
pub fn rdata_digest(rdata: &[String]) -> [u8; 16] {
    let a = fnv1a(0xcbf29ce484222325, rdata);
    let b = fnv1a(0x84222325cbf29ce4, rdata);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

pub fn rrset_key(r: &Rrset) -> Vec<u8> {
    let mut k = Vec::with_capacity(r.rrname.len() + r.bailiwick.len() + 23);
    write_rrset_key(&mut k, r);
    k
}

/// `tag` and the RRset key, appended to `out`.
pub fn rrset_key_into(out: &mut Vec<u8>, tag: u8, r: &Rrset) {
    out.push(tag);
    write_rrset_key(out, r);
}

/// [`reverse_name`] appended to `out`, allocating only for a name of more than 16 labels.
fn reverse_name_into(out: &mut Vec<u8>, name: &str) {
    let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
    if name.is_empty() {
        return;
    }
    // Label ends, right to left, found left to right (an escaped dot is not a boundary). The
    // first 16 in place: a 256-entry table (2 KiB) cleared for every key was 1% of the
    // sensor's store thread.
    let mut inline = [0usize; 16];
    let mut spilled = Vec::new();
    let (mut n, mut i) = (0, 0);
    while i < name.len() {
        match name[i] {
            b'\\' => i += 2,
            b'.' => {
                match inline.get_mut(n) {
                    Some(end) => *end = i,
                    None => {
                        if spilled.is_empty() {
                            spilled.extend_from_slice(&inline);
                        }
                        spilled.push(i);
                    }
                }
                n += 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    let ends = if n <= inline.len() { &inline[..n] } else { &spilled[..] };
    let mut end = name.len();
    for &dot in ends.iter().rev() {
        out.extend_from_slice(&name[dot + 1..end]);
        out.push(b'.');
        end = dot;
    }
    out.extend_from_slice(&name[..end]);
    out.push(b'.');
}

fn write_rrset_key(k: &mut Vec<u8>, r: &Rrset) {
    rrset_key_start(k, &r.rrname, r.rrtype, &r.bailiwick);
    k.extend_from_slice(&rdata_digest(&r.rdata));
}

/// An RRset key up to its rdata digest: RRsets of one owner, type and bailiwick share it.
pub fn rrset_key_start(k: &mut Vec<u8>, owner: &str, rrtype: u16, bailiwick: &str) {
    reverse_name_into(k, owner);
    k.push(0);
    k.extend_from_slice(&rrtype.to_be_bytes());
    k.extend_from_slice(bailiwick.as_bytes());
    k.push(0);
}

/// [`rrset_key_start`] of an owner and a bailiwick in wire format (uncompressed, as the
/// sensor's window keeps them), without writing them as text first: the same bytes.
pub fn rrset_key_start_wire(k: &mut Vec<u8>, owner: &[u8], rrtype: u16, bailiwick: &[u8]) {
    // Where each label starts: at most 127 in a name of 255 bytes.
    let mut starts = [0u8; 128];
    let mut n = 0;
    let mut p = 0;
    while let Some(&len) = owner.get(p) {
        if len == 0 || n == starts.len() {
            break;
        }
        starts[n] = p as u8;
        n += 1;
        p += 1 + usize::from(len);
    }
    for &start in starts[..n].iter().rev() {
        let start = usize::from(start);
        let end = (start + 1 + usize::from(owner[start])).min(owner.len());
        crate::dns::push_label_bytes(&owner[start + 1..end], k);
    }
    k.push(0);
    k.extend_from_slice(&rrtype.to_be_bytes());
    crate::dns::push_wire_name_bytes(bailiwick, k);
    k.push(0);
}

/// The key prefix of every RRset owned by exactly `name`.
pub fn owner_prefix(name: &str) -> Vec<u8> {
    let mut k = reverse_name(name).into_bytes();
    k.push(0);
    k
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn encode_value(first: u64, last: u64, count: u64, r: &Rrset) -> Vec<u8> {
    let mut v = Vec::with_capacity(40 + r.rrname.len() + r.rdata.iter().map(|d| d.len() + 4).sum::<usize>());
    encode_value_into(&mut v, first, last, count, r);
    v
}

/// [`encode_value`] into `v` (cleared first).
pub fn encode_value_into(v: &mut Vec<u8>, first: u64, last: u64, count: u64, r: &Rrset) {
    v.clear();
    v.extend_from_slice(&first.to_be_bytes());
    v.extend_from_slice(&last.to_be_bytes());
    v.extend_from_slice(&count.to_be_bytes());
    v.extend_from_slice(&r.rrtype.to_be_bytes());
    put_str(v, &r.rrname);
    put_str(v, &r.bailiwick);
    v.extend_from_slice(&(r.rdata.len() as u32).to_be_bytes());
    for d in &r.rdata {
        put_str(v, d);
    }
}

/// Reads a value back; `None` if it is not one of ours (never written by this code).
pub fn decode_value(v: &[u8]) -> Option<Entry> {
    let mut p = Parser { v, at: 0 };
    let first = p.u64()?;
    let last = p.u64()?;
    let count = p.u64()?;
    let rrtype = u16::from_be_bytes(p.take(2)?.try_into().ok()?);
    let rrname = p.string()?;
    let bailiwick = p.string()?;
    let n = p.u32()? as usize;
    let mut rdata = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        rdata.push(p.string()?);
    }
    // Optional: the contributing sensors (values made from ClickHouse rows).
    let mut sensors = Vec::new();
    if p.at < v.len() {
        let n = p.u32()? as usize;
        for _ in 0..n {
            sensors.push(p.string()?);
        }
    }
    Some(Entry { rrset: Rrset { rrname, rrtype, bailiwick, rdata }, first, last, count, sensors })
}

/// A value with the entry's sensors after the RRset (see [`decode_value`]).
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut v = encode_value(e.first, e.last, e.count, &e.rrset);
    if !e.sensors.is_empty() {
        v.extend_from_slice(&(e.sensors.len() as u32).to_be_bytes());
        for s in &e.sensors {
            put_str(&mut v, s);
        }
    }
    v
}

/// Only the counters of a value, for merging without decoding the strings.
pub fn value_counters(v: &[u8]) -> Option<(u64, u64, u64)> {
    let mut p = Parser { v, at: 0 };
    Some((p.u64()?, p.u64()?, p.u64()?))
}

/// Rewrites the counters of a value in place.
pub fn set_counters(v: &mut [u8], first: u64, last: u64, count: u64) {
    v[0..8].copy_from_slice(&first.to_be_bytes());
    v[8..16].copy_from_slice(&last.to_be_bytes());
    v[16..24].copy_from_slice(&count.to_be_bytes());
}

struct Parser<'a> {
    v: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.v.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key start written from names in wire format is the one written from their text:
    /// escapes, the root, long labels, more labels than [`reverse_name_into`] keeps in place.
    #[test]
    fn key_starts_from_wire_and_from_text_are_the_same() {
        let names: Vec<Vec<&[u8]>> = vec![
            vec![],
            vec![b"com"],
            vec![b"www", b"example", b"com"],
            vec![b"a.b", b"ex\\ample", b"q\"(x);@$", b"test"],
            vec![b"\x00\x1f \x7f\x80\xff", b"x"],
            vec![&[b'm'; 63], &[b'n'; 63], &[b'o'; 63], &[b'p'; 61]],
            (0..40).map(|_| &b"l"[..]).collect(),
        ];
        let wire = |labels: &[&[u8]]| {
            let mut w = Vec::new();
            for l in labels {
                w.push(l.len() as u8);
                w.extend_from_slice(l);
            }
            w.push(0);
            w
        };
        for owner in &names {
            for bailiwick in &names[..4] {
                let (owner, bailiwick) = (wire(owner), wire(bailiwick));
                let (mut owner_text, mut bailiwick_text) = (String::new(), String::new());
                crate::dns::push_wire_name(&owner, &mut owner_text);
                crate::dns::push_wire_name(&bailiwick, &mut bailiwick_text);
                let (mut from_text, mut from_wire) = (vec![7], vec![7]);
                rrset_key_start(&mut from_text, &owner_text, 28, &bailiwick_text);
                rrset_key_start_wire(&mut from_wire, &owner, 28, &bailiwick);
                assert_eq!(from_wire, from_text, "{owner_text} {bailiwick_text}");
            }
        }
    }

    #[test]
    fn reversed_names_group_zones() {
        assert_eq!(reverse_name("www.example.com."), "com.example.www.");
        assert_eq!(reverse_name("."), "");
        assert_eq!(reverse_name("a\\.b.example."), "example.a\\.b.");
        let zone = reverse_name("example.com.");
        assert!(reverse_name("deep.www.example.com.").starts_with(&zone));
        assert!(!reverse_name("www.badexample.com.").starts_with(&zone));
        assert!(at_or_below("a.example.com.", "example.com.") && at_or_below("example.com.", "example.com."));
        assert!(!at_or_below("a\\.example.com.", "example.com.") && at_or_below("x.", "."));
        // Past the 16 label ends kept in place, and past 256 (the old table's size, beyond
        // which labels were not split: keys then differed from `reverse_name`'s).
        let many = |n: usize| (0..n).map(|i| format!("l{i}.")).collect::<String>();
        let names = ["www.example.com.", ".", "", "a\\.b.example.", "x.", "a..b.", "\\.", "end\\\\.x."];
        for name in names.iter().map(|s| s.to_string()).chain([16, 17, 18, 127, 300].map(many)) {
            let mut out = Vec::new();
            reverse_name_into(&mut out, &name);
            assert_eq!(String::from_utf8(out).unwrap(), reverse_name(&name), "{name}");
        }
        assert!(reverse_name(&many(17)).starts_with("l16.l15."));
    }

    proptest::proptest! {
        /// Any text of labels, dots and escapes reverses as [`reverse_name`] reverses it.
        #[test]
        fn reversing_in_place_is_reverse_name(name in "([a-c]|\\\\[.\\\\0-9a]|\\.){0,80}") {
            let mut out = Vec::new();
            reverse_name_into(&mut out, &name);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), reverse_name(&name));
        }
    }

    #[test]
    fn values_round_trip_and_counters_update_in_place() {
        let r = Rrset {
            rrname: "www.example.com.".into(),
            rrtype: 1,
            bailiwick: "example.com.".into(),
            rdata: vec!["192.0.2.1".into(), "192.0.2.2".into()],
        };
        let mut v = encode_value(10, 20, 3, &r);
        set_counters(&mut v, 5, 25, 7);
        let e = decode_value(&v).unwrap();
        assert_eq!((e.first, e.last, e.count), (5, 25, 7));
        assert_eq!(e.rrset, r);
        assert!(decode_value(&v[..v.len() - 1]).is_none());
        assert_ne!(rdata_digest(&r.rdata), rdata_digest(&["192.0.2.1192.0.2.2".to_string()]));
    }
}
