//! Invariants that hold for every request, checked on random ones: a client
//! never chooses its own cluster, an untrusted tag never survives, the cluster
//! set is always one the rules name, and nothing panics on any bytes.

mod random;
mod table;

use graylane_core::split::WeylSequence;
use random::{decide_and_check, Random};

#[test]
fn no_request_escapes_the_invariants() {
    let documents = [table::CONTRACT, table::EDGE, table::KINDS, table::WEIGHTS, table::MIRROR, table::BAGGAGE, table::BAGGAGE_EDGE, table::PIN];
    let rules: Vec<_> = documents
        .iter()
        .map(|d| graylane_core::config::compile(d.as_bytes()).unwrap())
        .collect();
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let mut sequence = WeylSequence::new(1);
    let mut routed = 0;
    for _ in 0..50_000 {
        let rules = random.pick(&rules);
        if decide_and_check(rules, &mut random, &mut sequence) {
            routed += 1;
        }
    }
    assert!(
        routed > 5_000,
        "the generator should reach the services often, reached {routed}"
    );
}
