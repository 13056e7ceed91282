//! Human and machine renderings of dnstap events for `dnsledger tap`: one-line text, YAML in
//! the layout of the Go `dnstap -y` tool, and JSON lines.

use std::fmt::Write as _;

use hickory_proto::op::Message;
use serde_json::{Value, json};

use super::decode::{DnstapEvent, Timestamp, parse_dns};
use crate::dns::{opcode_name, rcode_name, rdata_text, rrtype_name};

/// How `tap` prints events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Yaml,
    Json,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "yaml" => Ok(Self::Yaml),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown format {other:?} (text, yaml, json)")),
        }
    }
}

/// Civil date from days since 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `YYYY-MM-DD HH:MM:SS[.fffffffff]` (UTC) with trailing zeros of the fraction trimmed, exactly as
/// `dnstap -y` prints it.
pub fn format_time(t: Timestamp, sep: char) -> String {
    let secs = t.sec as i64;
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let nanos = format!("{:09}", t.nsec);
    let fraction = nanos.trim_end_matches('0');
    let dot = if fraction.is_empty() { "" } else { "." };
    format!("{y:04}-{mo:02}-{d:02}{sep}{:02}:{:02}:{:02}{dot}{fraction}", rem / 3600, rem / 60 % 60, rem % 60)
}

fn flags(m: &Message) -> Vec<&'static str> {
    let md = &m.metadata;
    let mut f = Vec::new();
    if md.message_type == hickory_proto::op::MessageType::Response {
        f.push("qr");
    }
    for (on, name) in [
        (md.authoritative, "aa"),
        (md.truncation, "tc"),
        (md.recursion_desired, "rd"),
        (md.recursion_available, "ra"),
        (md.authentic_data, "ad"),
        (md.checking_disabled, "cd"),
    ] {
        if on {
            f.push(name);
        }
    }
    f
}

/// Multi-line presentation of a DNS message in the style of dig and `dnstap -y`.
pub fn dns_text(m: &Message) -> String {
    let mut s = String::new();
    let md = &m.metadata;
    let _ =
        writeln!(s, ";; opcode: {}, status: {}, id: {}", opcode_name(md.op_code), rcode_name(md.response_code), md.id);
    let _ = writeln!(
        s,
        ";; flags:{}; QUERY: {}, ANSWER: {}, AUTHORITY: {}, ADDITIONAL: {}",
        flags(m).iter().map(|f| format!(" {f}")).collect::<String>(),
        m.queries.len(),
        m.answers.len(),
        m.authorities.len(),
        m.additionals.len() + usize::from(m.edns.is_some())
    );
    if let Some(edns) = &m.edns {
        let _ = writeln!(
            s,
            "\n;; OPT PSEUDOSECTION:\n; EDNS: version {}; flags: {}; udp: {}",
            edns.version(),
            if edns.flags().dnssec_ok { "do" } else { "" },
            edns.max_payload()
        );
    }
    let _ = writeln!(s, "\n;; QUESTION SECTION:");
    for q in &m.queries {
        let _ = writeln!(s, ";{}\t{}\t {}", q.name, q.query_class, rrtype_name(q.query_type));
    }
    for (title, records) in [("ANSWER", &m.answers), ("AUTHORITY", &m.authorities), ("ADDITIONAL", &m.additionals)] {
        if records.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n;; {title} SECTION:");
        for r in records {
            let _ = writeln!(
                s,
                "{}\t{}\t{}\t{}\t{}",
                r.name,
                r.ttl,
                r.dns_class,
                rrtype_name(r.record_type()),
                rdata_text(&r.data)
            );
        }
    }
    s
}

fn dns_json(wire: &[u8]) -> Value {
    let m = match parse_dns(wire) {
        Ok(m) => m,
        Err(e) => return json!({ "error": e.to_string(), "size": wire.len() }),
    };
    let rrs = |records: &[hickory_proto::rr::Record]| -> Vec<Value> {
        records
            .iter()
            .map(|r| {
                json!({ "name": r.name.to_string(), "ttl": r.ttl, "class": r.dns_class.to_string(),
                        "type": rrtype_name(r.record_type()), "rdata": rdata_text(&r.data) })
            })
            .collect()
    };
    json!({
        "id": m.metadata.id,
        "opcode": opcode_name(m.metadata.op_code),
        "rcode": rcode_name(m.metadata.response_code),
        "flags": flags(&m),
        "question": m.queries.iter().map(|q| json!({ "name": q.name.to_string(), "class": q.query_class.to_string(), "type": rrtype_name(q.query_type) })).collect::<Vec<_>>(),
        "answer": rrs(&m.answers),
        "authority": rrs(&m.authorities),
        "additional": rrs(&m.additionals),
        "edns": m.edns.as_ref().map(|e| json!({ "version": e.version(), "do": e.flags().dnssec_ok, "udp": e.max_payload() })),
        "size": wire.len(),
    })
}

fn type_name(ev: &DnstapEvent) -> &'static str {
    ev.message.kind.as_str_name()
}

fn lossy(b: &Option<bytes::Bytes>) -> Option<String> {
    b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}

/// Renders one event; YAML documents end with `---` like `dnstap -y`.
pub fn render(ev: &DnstapEvent, format: OutputFormat, out: &mut String) {
    let m = &ev.message;
    match format {
        OutputFormat::Text => {
            let when = m.response_time.or(m.query_time).map(|t| format_time(t, 'T')).unwrap_or_else(|| "-".into());
            let proto = m.socket_protocol.map(|p| p.as_str_name()).unwrap_or("-");
            let addr = |a: Option<std::net::IpAddr>, p: Option<u16>| match (a, p) {
                (Some(a), Some(p)) => format!("{a}:{p}"),
                (Some(a), None) => a.to_string(),
                _ => "-".into(),
            };
            let wire = m.response_message.as_ref().or(m.query_message.as_ref());
            let summary = match wire.map(|w| parse_dns(w)) {
                Some(Ok(msg)) => {
                    let q = msg
                        .queries
                        .first()
                        .map(|q| format!("{} {} {}", q.name, q.query_class, q.query_type))
                        .unwrap_or_default();
                    format!(
                        "{} [{}] {q} an={} ns={} ar={} {}b",
                        rcode_name(msg.metadata.response_code),
                        flags(&msg).join(" "),
                        msg.answers.len(),
                        msg.authorities.len(),
                        msg.additionals.len(),
                        wire.map_or(0, |w| w.len())
                    )
                }
                Some(Err(e)) => format!("<{e}>"),
                None => "<no message>".into(),
            };
            let zone = m.query_zone.as_ref().map(|z| format!(" zone={z}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "{when} {} {proto} {} -> {}{zone} {summary}",
                type_name(ev),
                addr(m.query_address, m.query_port),
                addr(m.response_address, m.response_port)
            );
        }
        OutputFormat::Yaml => {
            let _ = writeln!(out, "type: MESSAGE");
            if let Some(id) = lossy(&ev.identity) {
                let _ = writeln!(out, "identity: {id:?}");
            }
            if let Some(v) = lossy(&ev.version) {
                let _ = writeln!(out, "version: {v:?}");
            }
            let _ = writeln!(out, "message:\n  type: {}", type_name(ev));
            if let Some(t) = m.query_time {
                let _ = writeln!(out, "  query_time: !!timestamp {}", format_time(t, ' '));
            }
            if let Some(t) = m.response_time {
                let _ = writeln!(out, "  response_time: !!timestamp {}", format_time(t, ' '));
            }
            if let Some(f) = m.socket_family {
                let _ = writeln!(out, "  socket_family: {}", f.as_str_name());
            }
            if let Some(p) = m.socket_protocol {
                let _ = writeln!(out, "  socket_protocol: {}", p.as_str_name());
            }
            if let Some(a) = m.query_address {
                let _ = writeln!(out, "  query_address: {a}");
            }
            if let Some(a) = m.response_address {
                let _ = writeln!(out, "  response_address: {a}");
            }
            if let Some(p) = m.query_port {
                let _ = writeln!(out, "  query_port: {p}");
            }
            if let Some(p) = m.response_port {
                let _ = writeln!(out, "  response_port: {p}");
            }
            if let Some(z) = &m.query_zone {
                let _ = writeln!(out, "  query_zone: {:?}", z.to_string());
            }
            for (field, wire) in [("query_message", &m.query_message), ("response_message", &m.response_message)] {
                let Some(wire) = wire else { continue };
                let text = match parse_dns(wire) {
                    Ok(msg) => dns_text(&msg),
                    Err(e) => format!("; {e}\n"),
                };
                let _ = writeln!(out, "  {field}: |");
                for line in text.lines() {
                    let _ = writeln!(out, "    {line}");
                }
            }
            let _ = writeln!(out, "---");
        }
        OutputFormat::Json => {
            let t = |t: Option<Timestamp>| t.map(|t| format_time(t, 'T') + "Z");
            let v = json!({
                "type": type_name(ev),
                "identity": lossy(&ev.identity),
                "version": lossy(&ev.version),
                "socket_family": m.socket_family.map(|f| f.as_str_name()),
                "socket_protocol": m.socket_protocol.map(|p| p.as_str_name()),
                "query_address": m.query_address.map(|a| a.to_string()),
                "query_port": m.query_port,
                "response_address": m.response_address.map(|a| a.to_string()),
                "response_port": m.response_port,
                "query_time": t(m.query_time),
                "response_time": t(m.response_time),
                "query_zone": m.query_zone.as_ref().map(|z| z.to_string()),
                "query_message": m.query_message.as_ref().map(|w| dns_json(w)),
                "response_message": m.response_message.as_ref().map(|w| dns_json(w)),
            });
            let _ = writeln!(out, "{v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_render_like_dnstap_y() {
        // 2026-11-28 04:24:18.580356 UTC, from the unbound capture.
        let t = Timestamp { sec: 1_795_839_858, nsec: 580_356_000 };
        assert_eq!(format_time(t, ' '), "2026-11-28 04:24:18.580356");
        assert_eq!(format_time(Timestamp { sec: 951_782_400, nsec: 0 }, 'T'), "2000-02-29T00:00:00");
        assert_eq!(format_time(Timestamp { sec: 0, nsec: 580_940_000 }, ' '), "1970-01-01 00:00:00.58094");
    }
}
