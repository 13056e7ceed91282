//! `query_zone` for the resolver's dnstap: which zone an upstream server was asked as
//! authoritative for. hickory's recursor does not hand the zone to its transport, so the tap
//! rebuilds it from what it sees, the way the recursor itself chose the server: every server
//! address comes from the root hints, from glue of a referral for zone Z, or from an address
//! answer for a name server name of Z. Storage is the sensor's [`ZoneMap`] (server -> zones,
//! glueless names pending their addresses), so the resolver and the sensor reconstruct
//! bailiwicks by the same rules.

use std::net::IpAddr;
use std::sync::Mutex;

use hickory_proto::op::Message;
use hickory_proto::rr::{Name, RData, RecordType};

use crate::sensor::zones::ZoneMap;

/// Server and name-server-name entries kept; past it new ones are not learned (counted by
/// the map) and such queries go without `query_zone`.
const LIMIT: usize = 100_000;

/// Server address -> zones, learned from the responses the tap sees.
pub(crate) struct ZoneTracker {
    map: Mutex<ZoneMap>,
}

impl ZoneTracker {
    pub(crate) fn new(roots: &[IpAddr]) -> Self {
        Self { map: Mutex::new(ZoneMap::with_roots(LIMIT, roots)) }
    }

    /// The zone `server` is being asked about by a query for (`qname`, `qtype`): the deepest
    /// zone it serves that holds the name (for DS, the parent's: DS lives above the cut). A
    /// zone-cut probe `NS <zone>` goes to the parent's servers, so when the server serves
    /// both, the parent is meant.
    pub(crate) fn zone_for(&self, server: IpAddr, qname: &Name, qtype: RecordType) -> Option<Name> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let target = if qtype == RecordType::DS && !qname.is_root() { qname.base_name() } else { qname.clone() };
        let mut candidates: Vec<&Name> =
            map.zones_of(server.to_canonical()).iter().filter(|z| z.zone_of(&target)).collect();
        candidates.sort_by_key(|z| std::cmp::Reverse(z.num_labels()));
        match candidates.as_slice() {
            [] => None,
            [deepest, parent, ..] if qtype == RecordType::NS && **deepest == target => Some((*parent).clone()),
            [deepest, ..] => Some((*deepest).clone()),
        }
    }

    /// Learns delegations from a response to a query asked of `zone`. Like the recursor, only
    /// records at or below `zone` are believed: an out-of-bailiwick NS or glue (the shape of a
    /// poisoning attempt) teaches nothing.
    pub(crate) fn learn(&self, zone: &Name, response: &Message) {
        let in_bailiwick = |name: &Name| zone.zone_of(name);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for rec in response.answers.iter().chain(&response.authorities) {
            if let RData::NS(ns) = &rec.data
                && in_bailiwick(&rec.name)
            {
                map.add_server_name(&ns.0.to_lowercase(), &rec.name.to_lowercase());
            }
        }
        for rec in response.answers.iter().chain(&response.additionals) {
            let addr: IpAddr = match &rec.data {
                RData::A(a) => a.0.into(),
                RData::AAAA(a) => a.0.into(),
                _ => continue,
            };
            if in_bailiwick(&rec.name) {
                map.learn_address(rec.name.to_lowercase(), vec![addr]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, NS};

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn ns(owner: &str, target: &str) -> Record {
        Record::from_rdata(n(owner), 3600, RData::NS(NS(n(target))))
    }

    fn a(owner: &str, ip: [u8; 4]) -> Record {
        Record::from_rdata(n(owner), 3600, RData::A(A(ip.into())))
    }

    #[test]
    fn follows_referrals_glue_and_glueless_names_like_the_recursor() {
        let root: IpAddr = [192, 0, 2, 1].into();
        let tld: IpAddr = [192, 0, 2, 2].into();
        let child: IpAddr = [192, 0, 2, 3].into();
        let t = ZoneTracker::new(&[root]);
        let z = |server, name: &str, ty| t.zone_for(server, &n(name), ty).map(|z| z.to_string());

        assert_eq!(z(root, "www.example.test.", RecordType::A).as_deref(), Some("."));
        // Root refers test. with glue.
        let mut referral = Message::query();
        referral.authorities.push(ns("test.", "ns.test."));
        referral.additionals.push(a("ns.test.", [192, 0, 2, 2]));
        t.learn(&Name::root(), &referral);
        assert_eq!(z(tld, "www.example.test.", RecordType::A).as_deref(), Some("test."));

        // test. refers example.test. to a glueless name served elsewhere.
        let mut glueless = Message::query();
        glueless.authorities.push(ns("example.test.", "ns.elsewhere.test."));
        t.learn(&n("test."), &glueless);
        assert_eq!(z(child, "www.example.test.", RecordType::A), None, "address not known yet");
        let mut address = Message::query();
        address.answers.push(a("NS.Elsewhere.test.", [192, 0, 2, 3]));
        t.learn(&n("test."), &address);
        assert_eq!(z(child, "www.example.test.", RecordType::A).as_deref(), Some("example.test."));
        // DS lives in the parent; a zone-cut probe goes to the parent's server.
        assert_eq!(z(tld, "example.test.", RecordType::DS).as_deref(), Some("test."));
        assert_eq!(z(child, "example.test.", RecordType::DS), None);
    }

    #[test]
    fn ns_probe_at_a_shared_server_means_the_parent() {
        let both: IpAddr = [192, 0, 2, 2].into();
        let t = ZoneTracker::new(&[both]);
        let mut sub = Message::query();
        sub.authorities.push(ns("test.", "ns.test."));
        sub.additionals.push(a("ns.test.", [192, 0, 2, 2]));
        t.learn(&Name::root(), &sub);
        let mut cut = Message::query();
        cut.answers.push(ns("sub.test.", "ns.test."));
        t.learn(&n("test."), &cut);
        let z = |name: &str, ty| t.zone_for(both, &n(name), ty).map(|z| z.to_string());
        assert_eq!(z("www.sub.test.", RecordType::A).as_deref(), Some("sub.test."));
        assert_eq!(z("sub.test.", RecordType::NS).as_deref(), Some("test."));
    }

    #[test]
    fn out_of_bailiwick_delegations_teach_nothing() {
        let root: IpAddr = [192, 0, 2, 1].into();
        let evil: IpAddr = [192, 0, 2, 66].into();
        let t = ZoneTracker::new(&[root]);
        let mut referral = Message::query();
        referral.authorities.push(ns("evil.test.", "ns.evil.test."));
        referral.additionals.push(a("ns.evil.test.", [192, 0, 2, 66]));
        t.learn(&Name::root(), &referral);
        // evil.test's server claims bank.com and glue for it.
        let mut forged = Message::query();
        forged.authorities.push(ns("bank.com.", "ns.evil.test."));
        forged.additionals.push(a("ns.bank.com.", [192, 0, 2, 66]));
        t.learn(&n("evil.test."), &forged);
        assert_eq!(t.zone_for(evil, &n("www.bank.com."), RecordType::A), None);
        assert_eq!(
            t.zone_for(evil, &n("www.evil.test."), RecordType::A).map(|z| z.to_string()).as_deref(),
            Some("evil.test.")
        );
    }
}
