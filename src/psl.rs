//! The Public Suffix List (publicsuffix.org), for "newly observed domains": the registrable
//! domain of a name is its public suffix plus one label (`www.example.co.uk.` ->
//! `example.co.uk.`). Read at start from Debian's `publicsuffix` package (or a configured
//! file); rules, `*.` wildcards and `!` exceptions as the list's format defines. Rules in
//! Unicode (internationalised suffixes) are not matched against our ASCII names. Without a
//! list, every name's last label is its suffix.

use std::path::Path;

/// The list is fixed when loaded, so a fast hash without a random key is safe: names looked
/// up cannot add entries to collide with (FxHash; SipHash was about 4% of a ClickHouse collector's instructions).
type HashSet<T> = std::collections::HashSet<T, std::hash::BuildHasherDefault<fxhash::FxHasher>>;

/// Where Debian's `publicsuffix` package puts the list.
pub const DEBIAN_LIST: &str = "/usr/share/publicsuffix/public_suffix_list.dat";

#[derive(Debug, Default, Clone)]
pub struct SuffixList {
    rules: HashSet<String>,
    /// `*.ck` is kept as `ck`: any one label below it is a suffix.
    wildcards: HashSet<String>,
    /// `!www.ck` is kept as `www.ck`: not a suffix, though a wildcard says so.
    exceptions: HashSet<String>,
}

impl SuffixList {
    pub fn parse(text: &str) -> Self {
        let mut l = Self::default();
        for line in text.lines() {
            let Some(rule) = line.split_whitespace().next() else { continue };
            if rule.starts_with("//") || !rule.is_ascii() {
                continue;
            }
            let rule = rule.to_ascii_lowercase();
            if let Some(e) = rule.strip_prefix('!') {
                l.exceptions.insert(e.to_string());
            } else if let Some(w) = rule.strip_prefix("*.") {
                l.wildcards.insert(w.to_string());
            } else {
                l.rules.insert(rule);
            }
        }
        l
    }

    /// The list at `path`, or Debian's if none is given and it is installed, or none.
    pub fn load(path: Option<&Path>) -> std::io::Result<Self> {
        match path {
            Some(p) => Ok(Self::parse(&std::fs::read_to_string(p)?)),
            None => Ok(std::fs::read_to_string(DEBIAN_LIST).map(|t| Self::parse(&t)).unwrap_or_default()),
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len() + self.wildcards.len() + self.exceptions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The registrable domain of an absolute, lower-case name (`None` if the name is a public
    /// suffix itself, or the root).
    pub fn registrable(&self, name: &str) -> Option<String> {
        let name = name.trim_end_matches('.');
        if name.is_empty() || name.starts_with('.') || name.contains("..") {
            return self.registrable_of_labels(name);
        }
        // The suffixes of the name, longest first, as slices of it: no joins.
        let starts: Vec<usize> = std::iter::once(0).chain(name.match_indices('.').map(|(i, _)| i + 1)).collect();
        let n = starts.len();
        let from = |i: usize| &name[starts[i]..];
        let mut suffix = 1;
        for i in 0..n {
            if self.exceptions.contains(from(i)) {
                suffix = n - i - 1;
                break;
            }
            if self.rules.contains(from(i)) || (i + 1 < n && self.wildcards.contains(from(i + 1))) {
                suffix = n - i;
                break;
            }
        }
        (n > suffix).then(|| format!("{}.", from(n - suffix - 1)))
    }

    /// [`SuffixList::registrable`] for names with empty labels, which are skipped.
    fn registrable_of_labels(&self, name: &str) -> Option<String> {
        let labels: Vec<&str> = name.split('.').filter(|l| !l.is_empty()).collect();
        let n = labels.len();
        // The default rule `*`: the last label.
        let mut suffix = 1;
        for i in 0..n {
            let candidate = labels[i..].join(".");
            if self.exceptions.contains(&candidate) {
                suffix = n - i - 1;
                break;
            }
            if self.rules.contains(&candidate) || (i + 1 < n && self.wildcards.contains(&labels[i + 1..].join("."))) {
                suffix = n - i;
                break;
            }
        }
        (n > suffix).then(|| format!("{}.", labels[n - suffix - 1..].join(".")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_wildcards_and_exceptions() {
        let l = SuffixList::parse("// comment\ncom\nuk\nco.uk\n*.ck\n!www.ck\nin-addr.arpa\narpa\n");
        assert_eq!(l.registrable("www.example.com.").as_deref(), Some("example.com."));
        assert_eq!(l.registrable("a.b.example.co.uk.").as_deref(), Some("example.co.uk."));
        assert_eq!(l.registrable("co.uk."), None);
        assert_eq!(l.registrable("foo.bar.ck.").as_deref(), Some("foo.bar.ck."));
        assert_eq!(l.registrable("bar.ck."), None);
        assert_eq!(l.registrable("a.www.ck.").as_deref(), Some("www.ck."));
        assert_eq!(l.registrable("80.2.0.192.in-addr.arpa.").as_deref(), Some("192.in-addr.arpa."));
        // Not on the list: the last label is the suffix.
        assert_eq!(l.registrable("www.other.test.").as_deref(), Some("other.test."));
        assert_eq!(l.registrable("test."), None);
        assert_eq!(l.registrable("."), None);
        assert_eq!(SuffixList::default().registrable("a.b.c.").as_deref(), Some("b.c."));
        // Empty labels are skipped.
        assert_eq!(l.registrable("www..example.com.").as_deref(), Some("example.com."));
        assert_eq!(l.registrable(".example.com").as_deref(), Some("example.com."));
    }

    #[test]
    fn debians_list_parses() {
        let text = std::fs::read_to_string(DEBIAN_LIST)
            .unwrap_or_else(|e| panic!("{DEBIAN_LIST}: {e}: install the Debian package publicsuffix (.ci/run does)"));
        let l = SuffixList::parse(&text);
        assert!(l.len() > 5_000);
        assert_eq!(l.registrable("www.example.co.uk.").as_deref(), Some("example.co.uk."));
        assert_eq!(l.registrable("a.b.github.io.").as_deref(), Some("b.github.io."));
        // The slice walk answers as the label-by-label one, under every kind of rule.
        let tails = ["com", "co.uk", "github.io", "ck", "www.ck", "kawasaki.jp", "city.kawasaki.jp", "in-addr.arpa"];
        for tail in tails {
            for head in ["", "a.", "x.y.", "p.q.r.", "www.city."] {
                let name = format!("{head}{tail}.");
                assert_eq!(l.registrable(&name), l.registrable_of_labels(&name[..name.len() - 1]), "{name}");
            }
        }
    }
}
