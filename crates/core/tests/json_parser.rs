//! graylane's JSON reader against serde_json, a parser many projects trust:
//! on generated documents and on damaged copies of them, both accept and
//! refuse the same texts and read the same values.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use graylane_core::json::{self, Node, Value as Ours};
use serde_json::Value as Theirs;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn string(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "a", "Z", " ", "é", "😀", "\\\"", "\\\\", "\\/", "\\n", "\\t", "\\u0041", "\\u00e9",
        "\\ud83d\\ude00", "\\u0000", "x-gray-tag", ";", "=",
    ];
    let mut out = String::from("\"");
    for _ in 0..rng.below(6) {
        out.push_str(PIECES[rng.below(PIECES.len() as u64) as usize]);
    }
    out.push('"');
    out
}

fn number(rng: &mut Rng) -> String {
    const NUMBERS: &[&str] = &[
        "0", "-0", "5", "100", "-17", "0.5", "33.33", "1e3", "2E-2", "-1.5e+2", "18446744073709551615",
    ];
    NUMBERS[rng.below(NUMBERS.len() as u64) as usize].to_string()
}

fn value(rng: &mut Rng, depth: usize) -> String {
    let pick = if depth > 6 { rng.below(4) } else { rng.below(6) };
    match pick {
        0 => ["null", "true", "false"][rng.below(3) as usize].to_string(),
        1 => number(rng),
        2 | 3 => string(rng),
        4 => {
            let items: Vec<String> = (0..rng.below(4)).map(|_| value(rng, depth + 1)).collect();
            format!("[{}]", items.join(if rng.below(2) == 0 { "," } else { " , " }))
        }
        _ => {
            // Distinct keys: serde_json keeps one of repeated keys, we keep both.
            let count = rng.below(4);
            let members: Vec<String> = (0..count)
                .map(|i| format!("\"k{i}\"{}:{}", " ".repeat(rng.below(2) as usize), value(rng, depth + 1)))
                .collect();
            format!("{{{}}}", members.join(","))
        }
    }
}

/// Our tree as serde_json's, to compare values.
fn as_theirs(node: &Node) -> Theirs {
    match &node.value {
        Ours::Null => Theirs::Null,
        Ours::Bool(flag) => Theirs::Bool(*flag),
        Ours::Number(number) => serde_json::from_str(number.as_str()).unwrap(),
        Ours::String(text) => Theirs::String(text.clone()),
        Ours::Array(items) => Theirs::Array(items.iter().map(as_theirs).collect()),
        Ours::Object(members) => Theirs::Object(
            members
                .iter()
                .map(|member| (member.key.clone(), as_theirs(&member.value)))
                .collect(),
        ),
    }
}

#[test]
fn generated_documents_read_as_serde_json_reads_them() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let text = value(&mut rng, 0);
        let ours = json::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e:?}"));
        let theirs: Theirs = serde_json::from_str(&text).unwrap();
        assert_eq!(as_theirs(&ours), theirs, "{text}");
        // And what we write back reads the same.
        let again = json::parse(ours.to_json().as_bytes()).unwrap();
        assert_eq!(as_theirs(&again), theirs, "{text}");
    }
}

#[test]
fn damaged_documents_are_refused_exactly_when_serde_json_refuses_them() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut refused = 0;
    for _ in 0..20_000 {
        let mut bytes = value(&mut rng, 0).into_bytes();
        for _ in 0..1 + rng.below(2) {
            let at = rng.below(bytes.len() as u64) as usize;
            match rng.below(3) {
                0 => {
                    bytes.remove(at);
                }
                1 => bytes.insert(at, b"{}[]\",:0-.e\\ \x01\xffu"[rng.below(16) as usize]),
                _ => bytes[at] = b"{}[]\",:0-.e\\ \x01\xffu"[rng.below(16) as usize],
            }
            if bytes.is_empty() {
                break;
            }
        }
        let ours = json::parse(&bytes);
        let theirs = serde_json::from_slice::<Theirs>(&bytes);
        match (&ours, &theirs) {
            (Ok(ours), Ok(theirs)) => {
                // Repeated keys: serde_json keeps the last, we keep both.
                if !has_repeated_keys(ours) {
                    assert_eq!(&as_theirs(ours), theirs, "{:?}", String::from_utf8_lossy(&bytes));
                }
            }
            (Err(_), Err(_)) => refused += 1,
            // serde_json refuses numbers past f64's range; we keep the text.
            (Ok(_), Err(error)) if error.to_string().contains("number out of range") => {}
            _ => panic!(
                "disagree on {:?}: ours {:?}, serde_json {:?}",
                String::from_utf8_lossy(&bytes),
                ours.map(|n| n.to_json()),
                theirs.map(|v| v.to_string())
            ),
        }
    }
    assert!(refused > 5_000, "only {refused} damaged texts were refused");
}

fn has_repeated_keys(node: &Node) -> bool {
    match &node.value {
        Ours::Array(items) => items.iter().any(has_repeated_keys),
        Ours::Object(members) => members.iter().enumerate().any(|(i, member)| {
            members[..i].iter().any(|other| other.key == member.key) || has_repeated_keys(&member.value)
        }),
        _ => false,
    }
}
