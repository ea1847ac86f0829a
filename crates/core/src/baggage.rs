//! The lane in W3C Baggage (`baggage: lane=canary,userId=42;p=1`): read one
//! member's value, and write the header again with that member replaced or
//! removed, every other member kept as it came.
//!
//! A header is a comma-separated list of `key=value` members, each with
//! optional `;property` parts; whitespace around them is allowed; values are
//! percent-encoded. Several `baggage` headers form one list.

/// The percent-decoded value of the first member named `key`.
pub fn member<'v>(values: impl Iterator<Item = &'v [u8]>, key: &str) -> Option<Vec<u8>> {
    values
        .flat_map(|value| value.split(|b| *b == b','))
        .find_map(|item| value_of(item, key))
        .map(percent_decode)
}

/// The members of `values` without `key`, then `key=lane` when a lane is
/// given, joined as one header value; `None` when nothing is left.
pub fn rewrite<'v>(values: impl Iterator<Item = &'v [u8]>, key: &str, lane: Option<&str>) -> Option<String> {
    let mut members: Vec<String> = values
        .flat_map(|value| value.split(|b| *b == b','))
        .map(|item| item.trim_ascii())
        .filter(|item| !item.is_empty() && value_of(item, key).is_none())
        .map(|item| String::from_utf8_lossy(item).into_owned())
        .collect();
    if let Some(lane) = lane {
        members.push(format!("{key}={}", percent_encode(lane)));
    }
    (!members.is_empty()).then(|| members.join(","))
}

/// The value part of `item` when its key is `key`.
fn value_of<'i>(item: &'i [u8], key: &str) -> Option<&'i [u8]> {
    let pair = item.split(|b| *b == b';').next()?;
    let equals = pair.iter().position(|b| *b == b'=')?;
    let (name, value) = pair.split_at(equals);
    (name.trim_ascii() == key.as_bytes()).then(|| value.get(1..).unwrap_or_default().trim_ascii())
}

fn percent_decode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut index = 0;
    while let Some(&byte) = value.get(index) {
        let escaped = (byte == b'%')
            .then(|| value.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                index += 3;
            }
            None => {
                out.push(byte);
                index += 1;
            }
        }
    }
    out
}

/// What a baggage value may not carry as it is: controls, space, `"`, `,`,
/// `;`, `\` and `%` itself.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        let plain = (0x21..=0x7e).contains(&byte) && !matches!(byte, b'"' | b',' | b';' | b'\\' | b'%');
        if plain {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> std::iter::Once<&[u8]> {
        std::iter::once(text.as_bytes())
    }

    #[test]
    fn reads_the_member_among_others_with_properties_and_spaces() {
        assert_eq!(member(one("userId=42, lane = canary ;p=1,x=y"), "lane"), Some(b"canary".to_vec()));
        assert_eq!(member(one("lane=can%61ry"), "lane"), Some(b"canary".to_vec()));
        assert_eq!(member(one("lanes=canary"), "lane"), None);
        assert_eq!(member(one("nolane"), "lane"), None);
        let two = [b"a=1".as_slice(), b"lane=blue".as_slice()];
        assert_eq!(member(two.into_iter(), "lane"), Some(b"blue".to_vec()));
    }

    #[test]
    fn rewrites_only_the_lane_member() {
        assert_eq!(
            rewrite(one("userId=42,lane=canary;p=1, x=y%2C"), "lane", Some("green")).as_deref(),
            Some("userId=42,x=y%2C,lane=green")
        );
        assert_eq!(rewrite(one("lane=canary"), "lane", None), None);
        assert_eq!(rewrite(one("a=1, lane=x"), "lane", None).as_deref(), Some("a=1"));
        assert_eq!(rewrite(std::iter::empty(), "lane", Some("a b;c")).as_deref(), Some("lane=a%20b%3Bc"));
        assert_eq!(rewrite(one(" , ,"), "lane", None), None);
    }
}
