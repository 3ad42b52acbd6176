//! The control plane's side of its agents between store writes: whom to wake when their tasks
//! change, and when each last polled.
//!
//! Each host (a container instance's ID, or `FARGATE` for the managed capacity) has its own
//! generation counter that its long poll waits on, so a task change wakes only the agent it
//! concerns. Heartbeats (every poll) are kept here and written to the store only when the
//! stored one has aged by half the agent timeout, instead of one fsynced write per poll;
//! readers of `last_seen` see the newer of the two.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::instance::InstanceRecord;

#[derive(Debug, Default)]
pub(crate) struct Agents {
    wakers: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Instance ARN → the last poll, in Unix seconds.
    seen: Mutex<HashMap<String, f64>>,
}

impl Agents {
    /// The generation of `host`'s assignments, to wait on.
    pub(crate) fn subscribe(&self, host: &str) -> watch::Receiver<u64> {
        self.wakers
            .lock()
            .entry(host.to_string())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// Wakes the polls of `hosts` (their assignments may have changed). A host that has not
    /// polled yet gets its counter moved too, so the wake is not lost.
    pub(crate) fn wake<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) {
        let mut wakers = self.wakers.lock();
        for h in hosts {
            wakers
                .entry(h.to_string())
                .or_insert_with(|| watch::Sender::new(0))
                .send_modify(|g| *g = g.wrapping_add(1));
        }
    }

    /// Wakes every waiting poll (at shutdown).
    pub(crate) fn wake_all(&self) {
        for w in self.wakers.lock().values() {
            w.send_modify(|g| *g = g.wrapping_add(1));
        }
    }

    /// Notes a poll of instance `arn` at `now`.
    pub(crate) fn beat(&self, arn: &str, now: f64) {
        self.seen.lock().insert(arn.to_string(), now);
    }

    /// `rec` with the newest heartbeat known, stored or in memory.
    pub(crate) fn overlay(&self, mut rec: InstanceRecord) -> InstanceRecord {
        if let Some(t) = self.seen.lock().get(&rec.arn) {
            rec.last_seen = rec.last_seen.max(*t);
        }
        rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_reaches_only_its_host() {
        let a = Agents::default();
        let mut one = a.subscribe("one");
        let mut two = a.subscribe("two");
        a.wake(["one"]);
        assert!(one.has_changed().unwrap());
        assert!(!two.has_changed().unwrap());
        a.wake_all();
        assert!(two.has_changed().unwrap());
        let _ = (one.borrow_and_update(), two.borrow_and_update());
        a.wake(["later"]);
        assert!(!one.has_changed().unwrap() && !two.has_changed().unwrap());
        assert_eq!(
            *a.subscribe("later").borrow(),
            1,
            "a wake before the first poll is kept"
        );
    }

    #[test]
    fn the_newest_heartbeat_wins() {
        let a = Agents::default();
        let rec = InstanceRecord {
            arn: "arn:i".into(),
            last_seen: 100.0,
            ..Default::default()
        };
        assert_eq!(a.overlay(rec.clone()).last_seen, 100.0);
        a.beat("arn:i", 150.0);
        assert_eq!(a.overlay(rec.clone()).last_seen, 150.0);
        let newer = InstanceRecord {
            last_seen: 200.0,
            ..rec
        };
        assert_eq!(a.overlay(newer).last_seen, 200.0);
    }
}
