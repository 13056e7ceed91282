//! What a live-feed consumer (`dnsledger query --follow -j`) printed, shared by the feed
//! tests over sled and over ClickHouse.

use std::collections::BTreeSet;
use std::path::Path;

/// An RRset as the feed names it: owner, type mnemonic, bailiwick, rdata.
pub type FeedRrset = (String, String, String, Vec<String>);

/// The feed lines the consumer printed to `out` so far.
pub fn lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with('}'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The RRsets and domains received; panics unless tokens strictly increase and each RRset
/// and each domain came once.
pub fn received(lines: &[serde_json::Value]) -> (BTreeSet<FeedRrset>, BTreeSet<String>) {
    let tokens: Vec<u64> = lines.iter().map(|l| l["token"].as_u64().unwrap()).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens strictly increase, none twice: {tokens:?}");
    let (mut rrsets, mut domains) = (BTreeSet::new(), BTreeSet::new());
    for l in lines {
        match l["type"].as_str().unwrap() {
            "rrset" => {
                let o = &l["obj"];
                let rdata = o["rdata"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
                let key = (
                    o["rrname"].as_str().unwrap().to_string(),
                    o["rrtype"].as_str().unwrap().to_string(),
                    o["bailiwick"].as_str().unwrap().to_string(),
                    rdata,
                );
                assert!(rrsets.insert(key.clone()), "received twice: {key:?}");
            }
            "domain" => assert!(domains.insert(l["domain"].as_str().unwrap().to_string()), "domain twice: {l}"),
            other => panic!("{other}"),
        }
    }
    (rrsets, domains)
}
