//! Waking the other workers of a gateway when one of them stores a document,
//! so that they adopt it at once instead of on their next tick.
//!
//! Each VM registers a shared queue under a name of its own (the host keys
//! queues by name, and the first VM to register a name would get every
//! wake), then lists the queue in the `wake` record: `Q1|queue:seen,…`.
//! The worker that stores a document enqueues a message on every other
//! queue listed; a woken worker drains its queue and runs the usual sync.
//!
//! Registration happens on a tick, never while configuring: Envoy loads the
//! configuration in a short-lived VM whose queue would never be served. A
//! VM refreshes its entry every [`WAKE_REFRESH_MS`]; entries not refreshed
//! for [`WAKE_TTL_MS`] (a VM gone with a configuration reload) drop out, and
//! the record never lists more than [`MAX_WAKE_QUEUES`].
//!
//! A wake is only a hint: a worker that misses one (its queue refused, the
//! record full) still adopts the document on its next tick.

use crate::source::{Host, StoreError};

/// How often a VM rewrites its own entry.
pub const WAKE_REFRESH_MS: u64 = 10_000;
/// An entry older than this belongs to a VM that stopped ticking.
pub const WAKE_TTL_MS: u64 = 3 * WAKE_REFRESH_MS;
/// Most queues listed; past it the stalest entry goes. A gateway has a VM
/// per worker, one on the main thread, and briefly more during a reload.
pub const MAX_WAKE_QUEUES: usize = 64;
/// Dequeued per wake at most: a queue is drained, but never for ever.
const MAX_DRAIN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct WakeList {
    /// (queue id, last refresh in ms)
    entries: Vec<(u32, u64)>,
}

impl WakeList {
    pub(crate) fn parse(bytes: &[u8]) -> Option<WakeList> {
        let text = std::str::from_utf8(bytes).ok()?;
        let list = text.strip_prefix("Q1|")?;
        let mut entries = Vec::new();
        for entry in list.split(',').filter(|entry| !entry.is_empty()) {
            let (queue, seen) = entry.split_once(':')?;
            entries.push((queue.parse().ok()?, seen.parse().ok()?));
        }
        Some(WakeList { entries })
    }

    pub(super) fn encode(&self) -> String {
        let entries: Vec<String> = self
            .entries
            .iter()
            .map(|(queue, seen)| format!("{queue}:{seen}"))
            .collect();
        format!("Q1|{}", entries.join(","))
    }

    /// Puts `queue` in at `now`, dropping expired entries and, when full,
    /// the stalest.
    fn refresh(&mut self, queue: u32, now: u64) {
        self.entries
            .retain(|(listed, seen)| *listed != queue && seen.saturating_add(WAKE_TTL_MS) > now);
        while self.entries.len() >= MAX_WAKE_QUEUES {
            let stalest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, seen))| *seen)
                .map(|(at, _)| at);
            match stalest {
                Some(at) => {
                    self.entries.remove(at);
                }
                None => break,
            }
        }
        self.entries.push((queue, now));
    }

    pub(crate) fn live(&self, now: u64) -> impl Iterator<Item = u32> + '_ {
        self.entries
            .iter()
            .filter(move |(_, seen)| seen.saturating_add(WAKE_TTL_MS) > now)
            .map(|(queue, _)| *queue)
    }
}

#[derive(Debug)]
pub(super) struct Wake {
    key: String,
    name: String,
    queue: Option<u32>,
    refreshed_at: Option<u64>,
    /// The host has no shared queues (or refused this one): not asked again.
    unavailable: bool,
}

impl Wake {
    pub(super) fn new(prefix: &str, worker: u64) -> Wake {
        Wake {
            key: format!("{prefix}.wake"),
            name: format!("{prefix}.wake.{worker:016x}"),
            queue: None,
            refreshed_at: None,
            unavailable: false,
        }
    }

    pub(super) fn queue(&self) -> Option<u32> {
        self.queue
    }

    /// On every tick: registers this VM's queue the first time, and keeps
    /// its entry in the record fresh.
    pub(super) fn maintain(&mut self, host: &mut impl Host) {
        if self.unavailable {
            return;
        }
        let queue = match self.queue {
            Some(queue) => queue,
            None => match host.register_queue(&self.name) {
                Ok(queue) => {
                    self.queue = Some(queue);
                    queue
                }
                Err(why) => {
                    self.unavailable = true;
                    host.log(
                        log::Level::Info,
                        &format!(
                            "graylane: no shared queue ({why}): workers adopt new rules on their tick"
                        ),
                    );
                    return;
                }
            },
        };
        let now = host.now_ms();
        if self
            .refreshed_at
            .is_some_and(|at| now < at.saturating_add(WAKE_REFRESH_MS))
        {
            return;
        }
        for _ in 0..4 {
            let (mut list, cas) = match host.get(&self.key) {
                Ok(Some((bytes, cas))) => (WakeList::parse(&bytes).unwrap_or_default(), cas),
                Ok(None) => (WakeList::default(), 0),
                Err(_) => return,
            };
            list.refresh(queue, now);
            match host.set(&self.key, list.encode().as_bytes(), cas) {
                Ok(()) => {
                    self.refreshed_at = Some(now);
                    return;
                }
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Unavailable(_)) => return,
            }
        }
    }

    /// Wakes every other VM listed. Returns how many were woken.
    pub(super) fn wake_others(&self, host: &mut impl Host) -> usize {
        let Ok(Some((bytes, _))) = host.get(&self.key) else {
            return 0;
        };
        let Some(list) = WakeList::parse(&bytes) else {
            return 0;
        };
        let now = host.now_ms();
        let mut woken = 0;
        for queue in list.live(now) {
            if Some(queue) == self.queue {
                continue;
            }
            // A queue whose VM is gone refuses: its entry expires by itself.
            if host.enqueue(queue, b"w").is_ok() {
                woken += 1;
            }
        }
        woken
    }

    /// Empties this VM's queue. False when `queue` is not this VM's.
    pub(super) fn drain(&self, host: &mut impl Host, queue: u32) -> bool {
        if self.queue != Some(queue) {
            return false;
        }
        for _ in 0..MAX_DRAIN {
            match host.dequeue(queue) {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_drops_expired_entries_and_stays_capped() {
        let mut list = WakeList::default();
        list.refresh(1, 1_000);
        list.refresh(2, 2_000);
        list.refresh(1, 3_000);
        assert_eq!(list.entries, [(2, 2_000), (1, 3_000)]);
        assert_eq!(WakeList::parse(list.encode().as_bytes()), Some(list.clone()));
        // Entry 2 was not refreshed for the TTL: gone at the next write.
        list.refresh(3, 2_000 + WAKE_TTL_MS);
        assert_eq!(list.entries, [(1, 3_000), (3, 2_000 + WAKE_TTL_MS)]);
        assert_eq!(list.live(3_000 + WAKE_TTL_MS).collect::<Vec<_>>(), [3]);
        let mut full = WakeList::default();
        for queue in 0..200 {
            full.refresh(queue, 10_000 + u64::from(queue));
        }
        assert_eq!(full.entries.len(), MAX_WAKE_QUEUES);
        assert_eq!(full.entries.first(), Some(&(136, 10_136)));
        assert_eq!(WakeList::parse(b"Q1|"), Some(WakeList::default()));
        assert_eq!(WakeList::parse(b"Q1|1:x"), None);
        assert_eq!(WakeList::parse(b"L1|1:2"), None);
    }
}
