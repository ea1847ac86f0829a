//! The records the workers of one gateway share (see the module above):
//! the lease, and the head that announces a stored document.

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Lease {
    pub(super) holder: u64,
    pub(super) next_at: u64,
    pub(super) failures: u32,
    pub(super) health: String,
}

impl Lease {
    pub(super) fn parse(bytes: &[u8]) -> Option<Lease> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(5, '|');
        if parts.next()? != "L1" {
            return None;
        }
        Some(Lease {
            holder: parts.next()?.parse().ok()?,
            next_at: parts.next()?.parse().ok()?,
            failures: parts.next()?.parse().ok()?,
            health: parts.next()?.to_string(),
        })
    }

    pub(super) fn encode(&self) -> String {
        format!(
            "L1|{}|{}|{}|{}",
            self.holder, self.next_at, self.failures, self.health
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) generation: u64,
    pub(super) gauge: u64,
    pub(super) version: String,
}

impl Head {
    pub(super) fn parse(text: &str) -> Option<Head> {
        let mut parts = text.splitn(4, '|');
        let tag = parts.next()?;
        if tag != "H1" && tag != "D1" {
            return None;
        }
        Some(Head {
            generation: parts.next()?.parse().ok()?,
            gauge: parts.next()?.parse().ok()?,
            version: parts.next()?.to_string(),
        })
    }

    pub(super) fn encode(&self, tag: &str) -> String {
        format!("{tag}|{}|{}|{}", self.generation, self.gauge, self.version)
    }
}
