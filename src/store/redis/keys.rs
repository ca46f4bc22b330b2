//! Where each record lives in Redis: the key layout.
//!
//! The greylist script reads and writes two keys, the triplet and its client network.
//! A Redis Cluster runs a script only when all its keys hash to one slot (otherwise
//! `CROSSSLOT`), so there the network is a hash tag in both keys and a network's records
//! live on one shard:
//!
//! | record | [`KeyLayout::Plain`] (one Redis, Sentinel) | [`KeyLayout::HashTagged`] (Cluster) |
//! |---|---|---|
//! | triplet | `mxg:gt:<triplet>` | `mxg:{<net>}:gt:<triplet>` |
//! | network | `mxg:gn:<net>` | `mxg:{<net>}:gn` |
//! | rate | `mxg:rl:<key>` | `mxg:rl:<key>` (one key per script: any slot) |
//!
//! A single Redis or a Sentinel master keeps the plain layout, so existing deployments
//! keep their greylist entries; a cluster is a new database anyway.
//!
//! Networks are `IpNet` strings (`192.0.2.0/24`, `2001:db8::/64`): never a brace, so the
//! tag always ends where the network does, whatever the triplet contains.

/// The plain layout: one namespace per kind of record, so one database holds all.
const TRIPLET_PREFIX: &str = "mxg:gt:";
const NET_PREFIX: &str = "mxg:gn:";
const RATE_PREFIX: &str = "mxg:rl:";
/// The hash-tagged layout's fixed parts.
const TAG_OPEN: &str = "mxg:{";
const TAGGED_TRIPLET: &str = "}:gt:";
const TAGGED_NET: &str = "}:gn";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLayout {
    /// One namespace per record kind: one Redis or a Sentinel-managed master.
    Plain,
    /// The client network as a hash tag: every key of one greylist script in one slot.
    HashTagged,
}

impl KeyLayout {
    /// The key of a greylist triplet seen from client network `net`.
    pub fn triplet(self, net: &str, triplet: &str) -> String {
        match self {
            KeyLayout::Plain => format!("{TRIPLET_PREFIX}{triplet}"),
            KeyLayout::HashTagged => format!("{TAG_OPEN}{net}{TAGGED_TRIPLET}{triplet}"),
        }
    }

    /// The key of a client network's pass count.
    pub fn network(self, net: &str) -> String {
        match self {
            KeyLayout::Plain => format!("{NET_PREFIX}{net}"),
            KeyLayout::HashTagged => format!("{TAG_OPEN}{net}{TAGGED_NET}"),
        }
    }

    /// The key of a rate limit: one key per script, the same in both layouts.
    pub fn rate(self, key: &str) -> String {
        format!("{RATE_PREFIX}{key}")
    }

    /// A SCAN `MATCH` pattern for every triplet key. It may match more than triplets
    /// (a glob `*` crosses braces): [`KeyLayout::parse_triplet`] has the last word.
    pub fn triplet_pattern(self) -> String {
        match self {
            KeyLayout::Plain => format!("{TRIPLET_PREFIX}*"),
            KeyLayout::HashTagged => format!("{TAG_OPEN}*{TAGGED_TRIPLET}*"),
        }
    }

    /// A SCAN `MATCH` pattern for the keys of `triplet` from any network (hash-tagged
    /// layout: the network is not known from the triplet alone).
    pub fn triplet_anywhere_pattern(self, triplet: &str) -> String {
        match self {
            KeyLayout::Plain => format!("{TRIPLET_PREFIX}{}", glob_escape(triplet)),
            KeyLayout::HashTagged => {
                format!("{TAG_OPEN}*{TAGGED_TRIPLET}{}", glob_escape(triplet))
            }
        }
    }

    /// A SCAN `MATCH` pattern for every network key.
    pub fn network_pattern(self) -> String {
        match self {
            KeyLayout::Plain => format!("{NET_PREFIX}*"),
            KeyLayout::HashTagged => format!("{TAG_OPEN}*{TAGGED_NET}"),
        }
    }

    /// The triplet a key holds, or `None` when it is not a triplet key of this layout.
    pub fn parse_triplet(self, key: &str) -> Option<&str> {
        match self {
            KeyLayout::Plain => key.strip_prefix(TRIPLET_PREFIX),
            KeyLayout::HashTagged => {
                let (_, rest) = split_tag(key)?;
                rest.strip_prefix(&TAGGED_TRIPLET[1..])
            }
        }
    }

    /// The client network a key holds the pass count of.
    pub fn parse_network(self, key: &str) -> Option<&str> {
        match self {
            KeyLayout::Plain => key.strip_prefix(NET_PREFIX),
            KeyLayout::HashTagged => {
                let (net, rest) = split_tag(key)?;
                (rest == &TAGGED_NET[1..]).then_some(net)
            }
        }
    }
}

/// `mxg:{NET}REST` → (`NET`, `REST`): the tag ends at the first `}`, as Redis reads it.
fn split_tag(key: &str) -> Option<(&str, &str)> {
    let inner = key.strip_prefix(TAG_OPEN)?;
    let close = inner.find('}')?;
    Some((&inner[..close], &inner[close + 1..]))
}

/// Escapes the glob characters of SCAN `MATCH` (`*`, `?`, `[`, `]`, `\`): addresses
/// may contain them.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::redis::cluster_routing::Slot;

    const NETS: &[&str] = &[
        "192.0.2.0/24",
        "198.51.100.0/24",
        "10.0.0.0/8",
        "127.0.0.0/24",
        "2001:db8:1:2::/64",
        "::/0",
    ];

    fn triplet(net: &str) -> String {
        format!("{net}|alice{{x}}@example.com|bob@example.org")
    }

    #[test]
    fn a_greylist_script_keeps_to_one_slot_in_a_cluster() {
        let l = KeyLayout::HashTagged;
        for net in NETS {
            let t = triplet(net);
            // Triplets with other first parts (spf_domain keys) are tagged by the network.
            for tk in [t.clone(), format!("spf:example.com|{t}"), String::new()] {
                assert_eq!(
                    Slot::for_key(l.triplet(net, &tk)),
                    Slot::for_key(l.network(net)),
                    "{net} / {tk}"
                );
            }
        }
    }

    #[test]
    fn the_plain_layout_spreads_a_script_over_slots() {
        // Why the cluster needs tags: most nets land their two plain keys in two slots.
        let l = KeyLayout::Plain;
        let split = NETS
            .iter()
            .filter(|n| Slot::for_key(l.triplet(n, &triplet(n))) != Slot::for_key(l.network(n)))
            .count();
        assert!(split >= NETS.len() - 1, "{split}");
    }

    #[test]
    fn plain_keys_are_unchanged() {
        let l = KeyLayout::Plain;
        assert_eq!(
            l.triplet("192.0.2.0/24", "192.0.2.0/24|a@b|c@d"),
            "mxg:gt:192.0.2.0/24|a@b|c@d"
        );
        assert_eq!(l.network("192.0.2.0/24"), "mxg:gn:192.0.2.0/24");
        assert_eq!(
            l.rate("r|client_ip=192.0.2.1"),
            "mxg:rl:r|client_ip=192.0.2.1"
        );
        assert_eq!(
            KeyLayout::HashTagged.rate("r|client_ip=192.0.2.1"),
            "mxg:rl:r|client_ip=192.0.2.1"
        );
    }

    #[test]
    fn keys_parse_back() {
        for l in [KeyLayout::Plain, KeyLayout::HashTagged] {
            for net in NETS {
                let t = triplet(net);
                assert_eq!(l.parse_triplet(&l.triplet(net, &t)), Some(t.as_str()));
                assert_eq!(l.parse_network(&l.network(net)), Some(*net));
                assert_eq!(l.parse_network(&l.triplet(net, &t)), None, "{l:?}");
                assert_eq!(l.parse_triplet(&l.network(net)), None, "{l:?}");
            }
        }
        // A triplet ending in "}:gn" matches the network glob but is no network key.
        let l = KeyLayout::HashTagged;
        let odd = l.triplet("192.0.2.0/24", "x|y}:gn");
        assert!(odd.ends_with("}:gn"));
        assert_eq!(l.parse_network(&odd), None);
        assert_eq!(l.parse_triplet(&odd), Some("x|y}:gn"));
        assert_eq!(l.parse_triplet("mxg:gt:x"), None);
        assert_eq!(l.parse_network("mxg:{192.0.2.0/24}:gnx"), None);
    }

    #[test]
    fn globs_are_escaped() {
        assert_eq!(
            KeyLayout::HashTagged.triplet_anywhere_pattern("n|a*b?[c]\\@d|e"),
            "mxg:{*}:gt:n|a\\*b\\?\\[c\\]\\\\@d|e"
        );
        assert_eq!(KeyLayout::Plain.triplet_pattern(), "mxg:gt:*");
        assert_eq!(KeyLayout::HashTagged.network_pattern(), "mxg:{*}:gn");
    }
}
