//! Lane affinity: a cookie naming the lane a request was sent to by tag or
//! match, so that the browser's later requests go there without the tag.
//!
//! Where tags are trusted the cookie is the tag itself (a client could send
//! the tag header anyway). With `lane_keys` the cookie is signed:
//! `LANE.EXPIRY.MAC`, the MAC an HMAC-SHA256 in hex over the service name,
//! the lane and the expiry (seconds since the epoch), made with the first
//! key and accepted with any, so that keys can rotate. A cookie whose MAC
//! no key makes, or whose expiry has passed, counts as none.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The `lane_keys` of the plugin's configuration: secrets, so their
/// `Debug` shows only how many there are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct LaneKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for LaneKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LaneKeys({} key(s))", self.0.len())
    }
}

/// Shortest key accepted: a shorter secret could be guessed.
pub const MIN_KEY_BYTES: usize = 16;

/// Written in place of the expiry by a gateway without a clock (APISIX's
/// host): such a cookie is accepted there whatever its age, and refused
/// by a gateway with a clock.
const NO_EXPIRY: u64 = 0;

type HmacSha256 = Hmac<Sha256>;

impl LaneKeys {
    pub fn new(keys: Vec<Vec<u8>>) -> LaneKeys {
        LaneKeys(keys)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn mac(key: &[u8], service: &str, lane: &[u8], expiry: &[u8]) -> Option<HmacSha256> {
        let mut mac = HmacSha256::new_from_slice(key).ok()?;
        // Lengths first: no two (service, lane) pairs feed the same bytes.
        for part in [service.as_bytes(), lane] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(expiry);
        Some(mac)
    }
}

/// What a service's affinity cookie needs beside its name and attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneCookie {
    /// The cookie's name and `; Max-Age=…` attributes, as the pin cookie's.
    pub cookie: crate::rules::PinCookie,
    pub max_age_s: u64,
    /// Empty: the cookie is the bare lane, honoured where tags are trusted.
    pub keys: LaneKeys,
}

impl LaneCookie {
    /// The `set-cookie` value naming `lane` for `service`; `now_s` is the
    /// gateway's clock (none on APISIX's host).
    pub fn set_cookie(&self, service: &str, lane: &str, now_s: Option<u64>) -> String {
        let Some(key) = self.keys.0.first() else {
            return self.cookie.set_cookie_value(lane);
        };
        let expiry = now_s.map_or(NO_EXPIRY, |now| now.saturating_add(self.max_age_s));
        let expiry = expiry.to_string();
        let signature = LaneKeys::mac(key, service, lane.as_bytes(), expiry.as_bytes())
            .map(|mac| hex(&mac.finalize().into_bytes()))
            .unwrap_or_default();
        self.cookie
            .set_cookie_value(&format!("{lane}.{expiry}.{signature}"))
    }

    /// The lane a cookie value names, if it is to be honoured: any value
    /// without keys; with keys, one signed by one of them and not expired
    /// at `now_s` (no clock: not checked).
    pub fn lane<'v>(&self, service: &str, value: &'v [u8], now_s: Option<u64>) -> Option<&'v [u8]> {
        if self.keys.is_empty() {
            return (!value.is_empty()).then_some(value);
        }
        let mut parts = value.rsplitn(3, |&b| b == b'.');
        let (signature, expiry, lane) = (parts.next()?, parts.next()?, parts.next()?);
        let signature = unhex(signature)?;
        let expires_at: u64 = std::str::from_utf8(expiry).ok()?.parse().ok()?;
        if let Some(now) = now_s {
            if expires_at == NO_EXPIRY || expires_at <= now {
                return None;
            }
        }
        let signed = self.keys.0.iter().any(|key| {
            LaneKeys::mac(key, service, lane, expiry)
                .is_some_and(|mac| mac.verify_slice(&signature).is_ok())
        });
        (signed && !lane.is_empty()).then_some(lane)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        for nibble in [byte >> 4, byte & 0xf] {
            out.push(char::from(DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0')));
        }
    }
    out
}

/// Lower-case hex of a SHA-256 MAC (64 digits), or nothing.
fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    text.chunks(2)
        .map(|pair| match pair {
            [high, low] => Some(digit(*high)? << 4 | digit(*low)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::PinCookie;

    fn cookie(keys: &[&str]) -> LaneCookie {
        LaneCookie {
            cookie: PinCookie {
                name: "lane".into(),
                attributes: "; Max-Age=60".into(),
            },
            max_age_s: 60,
            keys: LaneKeys::new(keys.iter().map(|k| k.as_bytes().to_vec()).collect()),
        }
    }

    fn value(set_cookie: &str) -> &str {
        set_cookie
            .strip_prefix("lane=")
            .and_then(|rest| rest.split(';').next())
            .unwrap()
    }

    #[test]
    fn unsigned_cookies_are_the_lane() {
        let lane = cookie(&[]);
        assert_eq!(lane.set_cookie("s", "canary", Some(5)), "lane=canary; Max-Age=60");
        assert_eq!(lane.lane("s", b"canary", Some(5)), Some(&b"canary"[..]));
        assert_eq!(lane.lane("s", b"", Some(5)), None);
    }

    #[test]
    fn signed_cookies_are_honoured_until_they_expire_by_any_key() {
        let old = cookie(&["0123456789abcdef-old"]);
        let set = old.set_cookie("shop", "canary.v2", Some(1_000));
        let text = value(&set);
        assert!(text.starts_with("canary.v2.1060."), "{text}");
        let rotated = cookie(&["0123456789abcdef-new", "0123456789abcdef-old"]);
        for (now, want) in [(Some(1_000), true), (Some(1_059), true), (Some(1_060), false), (None, true)] {
            assert_eq!(
                rotated.lane("shop", text.as_bytes(), now).is_some(),
                want,
                "at {now:?}"
            );
        }
        assert_eq!(rotated.lane("shop", text.as_bytes(), Some(1_000)), Some(&b"canary.v2"[..]));
        // Another service, another lane, a changed expiry, another key, a
        // bare lane: none is honoured.
        let forged = [
            text.replacen("canary.v2", "canary.v3", 1),
            text.replacen("1060", "9060", 1),
            "canary".to_string(),
            format!("canary.1060.{}", "0".repeat(64)),
        ];
        for forged in &forged {
            assert_eq!(rotated.lane("shop", forged.as_bytes(), Some(1_000)), None, "{forged}");
        }
        assert_eq!(rotated.lane("other", text.as_bytes(), Some(1_000)), None);
        assert_eq!(cookie(&["0123456789abcdef-new"]).lane("shop", text.as_bytes(), Some(1_000)), None);
    }

    #[test]
    fn without_a_clock_the_cookie_carries_no_expiry_and_a_clock_refuses_it() {
        let lane = cookie(&["0123456789abcdef"]);
        let set = lane.set_cookie("shop", "canary", None);
        let text = value(&set);
        assert!(text.starts_with("canary.0."), "{text}");
        assert!(lane.lane("shop", text.as_bytes(), None).is_some());
        assert!(lane.lane("shop", text.as_bytes(), Some(1)).is_none());
    }

    #[test]
    fn keys_do_not_show_in_debug_output() {
        let shown = format!("{:?}", cookie(&["0123456789abcdef-secret"]));
        assert!(!shown.contains("secret") && shown.contains("1 key(s)"), "{shown}");
    }
}
