//! Queries through the real `dig` (what a user would run), parsed into the parts tests assert
//! on: status, header flags and the answer and authority sections.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use super::process;

/// One resource record line of dig's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigRecord {
    /// Owner name as printed (absolute, with trailing dot).
    pub name: String,
    pub ttl: u32,
    pub rtype: String,
    /// Presentation format as dig prints it (TXT strings keep their quotes).
    pub rdata: String,
}

/// What dig saw.
#[derive(Clone, Debug)]
pub struct DigAnswer {
    /// "NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", ...; "TIMEOUT" if no server answered.
    pub rcode: String,
    /// Header flags, e.g. ["qr", "rd", "ra"] (plus "aa", "tc" when set).
    pub flags: Vec<String>,
    pub answer: Vec<DigRecord>,
    pub authority: Vec<DigRecord>,
    /// dig's full output, for failure messages.
    pub output: String,
}

impl DigAnswer {
    /// Rdata of the answer records of type `rtype`, in dig's order (following CNAMEs, the
    /// final records are included: filter by type to get the addresses).
    pub fn rdata(&self, rtype: &str) -> Vec<String> {
        self.answer.iter().filter(|r| r.rtype.eq_ignore_ascii_case(rtype)).map(|r| r.rdata.clone()).collect()
    }

    /// Sorted rdata of the answer records of type `rtype` (dig prints RRsets in any order).
    pub fn rdata_sorted(&self, rtype: &str) -> Vec<String> {
        let mut rdata = self.rdata(rtype);
        rdata.sort();
        rdata
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

impl fmt::Display for DigAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.output)
    }
}

/// `dig @server name rtype` with recursion desired, one try, 5 s timeout, sent from the
/// client address `127.B.2.1` of the server's block (never 127.0.0.1).
pub fn dig(server: Ipv4Addr, name: &str, rtype: &str) -> DigAnswer {
    super::check_rig_address(server);
    let source = Ipv4Addr::new(127, server.octets()[1], 2, 1);
    dig_with(SocketAddr::from((server, 53)), Some(source), name, rtype, &[])
}

/// dig with full control: any port, optional source address, extra options such as `+tcp`,
/// `+norec` or `+dnssec`.
pub fn dig_with(server: SocketAddr, source: Option<Ipv4Addr>, name: &str, rtype: &str, extra: &[&str]) -> DigAnswer {
    let mut cmd = Command::new(process::binary("dig", "dnsutils"));
    cmd.arg(format!("@{}", server.ip())).args(["-p", &server.port().to_string()]);
    if let Some(source) = source {
        cmd.args(["-b", &source.to_string()]);
    }
    cmd.args(["+tries=1", "+time=5", "+nocmd", "+nostats"]).args(extra).args([name, rtype]);
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    parse(&output).unwrap_or_else(|| {
        if output.contains("timed out") || output.contains("no servers could be reached") {
            DigAnswer { rcode: "TIMEOUT".into(), flags: vec![], answer: vec![], authority: vec![], output }
        } else if output.contains("communications error") {
            // A TCP connection closed or refused by the server.
            DigAnswer { rcode: "COMMERROR".into(), flags: vec![], answer: vec![], authority: vec![], output }
        } else {
            panic!(
                "cannot parse dig output of {cmd:?} ({}):\n{output}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        }
    })
}

fn parse(output: &str) -> Option<DigAnswer> {
    let mut rcode = None;
    let mut flags = Vec::new();
    let mut answer = Vec::new();
    let mut authority = Vec::new();
    let mut section: Option<&mut Vec<DigRecord>> = None;
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix(";; ->>HEADER<<-") {
            // ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 4711"
            rcode = rest.split(", ").find_map(|p| p.trim().strip_prefix("status: ")).map(str::to_string);
        } else if let Some(rest) = line.strip_prefix(";; flags:") {
            // ";; flags: qr rd ra; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 1"
            flags = rest.split(';').next().unwrap_or("").split_whitespace().map(str::to_string).collect();
        } else if line.starts_with(";; ANSWER SECTION:") {
            section = Some(&mut answer);
        } else if line.starts_with(";; AUTHORITY SECTION:") {
            section = Some(&mut authority);
        } else if line.trim().is_empty() || line.starts_with(';') {
            section = None;
        } else if let Some(records) = section.as_mut() {
            records.push(parse_record(line)?);
        }
    }
    Some(DigAnswer { rcode: rcode?, flags, answer, authority, output: output.to_string() })
}

/// "www.example.com.\t3600\tIN\tA\t192.0.2.80": the rdata is the rest of the line after the
/// fourth field, taken verbatim so TXT strings keep their spacing.
fn parse_record(line: &str) -> Option<DigRecord> {
    let mut rest = line;
    let mut fields = Vec::with_capacity(4);
    for _ in 0..4 {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace)?;
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
    Some(DigRecord {
        name: fields[0].to_string(),
        ttl: fields[1].parse().ok()?,
        rtype: fields[3].to_string(),
        rdata: rest.trim().to_string(),
    })
}
