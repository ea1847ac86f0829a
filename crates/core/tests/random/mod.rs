//! Random requests and the invariants every decision keeps, shared by the
//! property test and the campaign.

// Indexing with a random position taken modulo the length.
#![allow(clippy::indexing_slicing, dead_code)]

use graylane_core::decision::{decide, HeaderEdit};
use graylane_core::request::Request;
use graylane_core::rules::Rules;
use graylane_core::split::WeylSequence;

pub struct Random(pub u64);

impl Random {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }

    pub fn bytes(&mut self, alphabet: &[u8], max: u64) -> Vec<u8> {
        (0..self.next() % (max + 1))
            .map(|_| *self.pick(alphabet))
            .collect()
    }
}

pub const NAMES: &[&[u8]] = &[
    b":authority",
    b":path",
    b":method",
    b"host",
    b"cookie",
    b"Cookie",
    b"userid",
    b"x-gray-tag",
    b"X-Gray-Tag",
    b"x-graylane-cluster",
    b"X-GRAYLANE-CLUSTER",
    b"x-graylane-mirror",
    b"x-graylane-pin-cookie",
    b"baggage",
    b"x-route-to",
    b"x-lane",
    b"x-k",
    b"x-flag",
    b"x-tester",
    b"\xff\x00",
];
pub const VALUES: &[&[u8]] = &[
    b"b.example.com",
    b"lane.example.com",
    b"mirror.example.com",
    b"pin.example.com",
    b"api.example.com:80",
    b"x.b.example.com",
    b"/api/b?canary=true&canary",
    b"/v2/items/1",
    b"email=a@some-company-name.com; beta=1",
    b"beta",
    b"canary",
    b"stable",
    b"123",
    b"bservice-canary",
    b"",
    b"%zz%",
    b";;==;",
    b"\xff\xfe\x00",
    b"GET",
    b"lane=canary, a=1",
    b"lane=beta",
    b"gl_pin=42",
    b"gl_pin=9999; a=1",
    b"post",
];
pub const NOISE: &[u8] = b"ab=;%&?/:.[]\xff\x00 19+-*";


/// A request of random headers, often the ones the rules look at.
pub fn request_headers(random: &mut Random) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..random.next() % 9)
        .map(|_| {
            let name = if random.next() % 8 == 0 {
                random.bytes(NOISE, 6)
            } else {
                random.pick(NAMES).to_vec()
            };
            let value = if random.next() % 4 == 0 {
                random.bytes(NOISE, 24)
            } else {
                random.pick(VALUES).to_vec()
            };
            (name, value)
        })
        .collect()
}

/// Decides one random request and asserts the invariants; whether a
/// service took it.
pub fn decide_and_check(rules: &Rules, random: &mut Random, sequence: &mut WeylSequence) -> bool {
    let owned = request_headers(random);
    let pairs: Vec<(&[u8], &[u8])> = owned
        .iter()
        .map(|(n, v)| (n.as_slice(), v.as_slice()))
        .collect();
    let source_ip = random.bytes(NOISE, 4);
    let request = Request::new(&pairs).with_source_ip(Some(&source_ip));
    let decision = decide(rules, &request, sequence);

    let carries = |name: &str| {
        pairs
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
    };
    let removes = |name: &str| decision.edits.contains(&HeaderEdit::Remove(name));
    let sets: Vec<(&str, &str)> = decision
        .edits
        .iter()
        .filter_map(|e| e.value().map(|v| (e.name(), v)))
        .collect();

    // The client's cluster header is always removed before anything is set.
    assert_eq!(
        carries(&rules.cluster_header),
        removes(&rules.cluster_header),
        "{pairs:?}"
    );
    // Nor what the gateway answers as a cookie.
    assert_eq!(
        carries(&rules.pin_header),
        removes(&rules.pin_header),
        "{pairs:?}"
    );
    // Nor where a copy goes.
    assert_eq!(
        carries(&rules.mirror_header),
        removes(&rules.mirror_header),
        "{pairs:?}"
    );
    if let Some(first_set) = decision
        .edits
        .iter()
        .position(|e| !matches!(e, HeaderEdit::Remove(..)))
    {
        assert!(decision.edits[first_set..]
            .iter()
            .all(|e| !matches!(e, HeaderEdit::Remove(..))));
    }
    // An untrusted tag never survives; a tag set is a subset's own.
    if !rules.trust_tag {
        assert_eq!(
            carries(&rules.tag_header),
            removes(&rules.tag_header),
            "{pairs:?}"
        );
    }
    for (name, value) in &sets {
        if *name == rules.tag_header {
            assert!(
                rules.services.iter().flat_map(|s| &s.subsets).any(|s| s.tag == *value),
                "tag {value:?} set that no subset has"
            );
        }
    }
    // The cluster set, if any, belongs to the chosen service and subset.
    match (decision.service(rules), decision.subset) {
        (Some(service), Some(subset)) => {
            let subset = &service.subsets[subset];
            assert_eq!(
                sets.first(),
                Some(&(rules.cluster_header.as_str(), subset.cluster.as_str()))
            );
            assert_eq!(decision.cluster, Some(subset.cluster.as_str()));
            true
        }
        _ => {
            // Unclaimed: only an untrusted lane is stripped from baggage.
            assert!(decision.cluster.is_none());
            assert!(sets.iter().all(|(name, _)| *name == "baggage" && !rules.trust_tag), "{sets:?}");
            false
        }
    }
}
