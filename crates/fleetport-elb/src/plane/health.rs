//! Target health: one checker task per target group that a listener uses, probing every
//! registered (not draining) target each interval, and the board that DescribeTargetHealth and
//! the proxy read.
//!
//! States follow AWS: a new target is `initial` (`Elb.InitialHealthChecking`) until its first
//! passing check makes it `healthy`, or UnhealthyThresholdCount failures make it `unhealthy`; a
//! healthy target turns unhealthy after UnhealthyThresholdCount consecutive failures, and an
//! unhealthy one healthy after HealthyThresholdCount consecutive passes.
//!
//! A target still `initial` after a failed check is checked again every second between its
//! counted checks, and only a pass of those counts: a task registered a moment before its
//! application listens goes into service when it is ready, not an interval later, while a
//! slow starter is not declared unhealthy any sooner than the thresholds say.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::plane::target_tls::{self, Carries};
use crate::state::{HealthCheck, TargetGroup};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Initial = 0,
    Healthy = 1,
    Unhealthy = 2,
}

impl State {
    fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(c: u8) -> Self {
        match c {
            1 => State::Healthy,
            2 => State::Unhealthy,
            _ => State::Initial,
        }
    }
}

/// A target's state as the proxy reads it on every request: one atomic load, no lock and no
/// allocation.
pub type Cell = Arc<Shared>;

#[derive(Debug, Default)]
pub struct Shared {
    state: AtomicU8,
    /// When the target last became healthy (ms since the epoch).
    healthy_at_ms: AtomicU64,
    /// When its slow start began (ms since the epoch); 0 when it takes full traffic at once.
    ramp_from_ms: AtomicU64,
}

impl Shared {
    pub fn state(&self) -> State {
        State::from_code(self.state.load(Ordering::Relaxed))
    }

    pub fn ramp_from_ms(&self) -> u64 {
        self.ramp_from_ms.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn new_for_test(state: State, ramp_from_ms: u64) -> Self {
        Self {
            state: AtomicU8::new(state.code()),
            healthy_at_ms: AtomicU64::new(ramp_from_ms),
            ramp_from_ms: AtomicU64::new(ramp_from_ms),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    state: State,
    cell: Cell,
    reason: &'static str,
    description: String,
    passes: u32,
    failures: u32,
    /// When the last counted probe started: each target keeps its own cadence across checker
    /// restarts.
    last_probe: Option<std::time::Instant>,
    /// When the last probe of any kind started (counted or early).
    last_any: Option<std::time::Instant>,
}

impl Default for Entry {
    fn default() -> Self {
        Self {
            state: State::Initial,
            cell: Arc::default(),
            reason: "Elb.InitialHealthChecking",
            description: "Initial health checks in progress".into(),
            passes: 0,
            failures: 0,
            last_probe: None,
            last_any: None,
        }
    }
}

type Key = (String, String, u16);

/// Health of every checked target, by (target group ARN, target id, port).
#[derive(Debug, Default)]
pub struct HealthBoard {
    entries: RwLock<HashMap<Key, Entry>>,
    /// Moves whenever a target's state changes (the ECS scheduler follows it).
    changes: tokio::sync::watch::Sender<u64>,
}

/// How soon a target still `initial` after a failed check is checked again.
const EARLY_RECHECK: Duration = Duration::from_secs(1);

/// What a target's probe cadence allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// A check at the target group's interval: passes and failures count.
    Counted,
    /// An extra check of an `initial` target between counted ones: only a pass counts.
    Early,
    /// Nothing is due before this instant.
    NotDue(std::time::Instant),
}

/// Why a probe failed, in AWS's reason codes.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    Timeout,
    Failed,
    Code(u16),
}

impl HealthBoard {
    /// A target's state, without adding the target to the board.
    pub fn state(&self, tg: &str, id: &str, port: u16) -> State {
        self.entries
            .read()
            .get(&(tg.to_string(), id.to_string(), port))
            .map_or(State::Initial, |e| e.state)
    }

    /// Whether the target is due a probe by `now`, and of which kind; the probe is noted as
    /// started now.
    fn claim_probe(&self, key: &Key, now: std::time::Instant, every: Duration) -> Claim {
        let mut map = self.entries.write();
        let e = map.entry(key.clone()).or_default();
        let counted_due = e.last_probe.map_or(now, |at| at + every);
        if counted_due <= now {
            e.last_probe = Some(now);
            e.last_any = Some(now);
            return Claim::Counted;
        }
        // A target still `initial` that failed a check (typically registered a moment before
        // its application listened) is checked again sooner, so it goes into service about
        // when it is ready instead of a whole interval later. Only a pass counts.
        if e.state == State::Initial && e.failures > 0 {
            let early_due = e.last_any.map_or(now, |at| at + EARLY_RECHECK);
            if early_due <= now {
                e.last_any = Some(now);
                return Claim::Early;
            }
            return Claim::NotDue(counted_due.min(early_due));
        }
        Claim::NotDue(counted_due)
    }

    /// The shared cell of a target's state, created (as `initial`) if the target is new.
    pub fn cell(&self, tg: &str, id: &str, port: u16) -> Cell {
        self.entries
            .write()
            .entry((tg.to_string(), id.to_string(), port))
            .or_default()
            .cell
            .clone()
    }

    pub fn describe(&self, tg: &str, id: &str, port: u16) -> Value {
        let e = self
            .entries
            .read()
            .get(&(tg.to_string(), id.to_string(), port))
            .cloned()
            .unwrap_or_default();
        match e.state {
            State::Healthy => json!({"State": "healthy"}),
            State::Initial => {
                json!({"State": "initial", "Reason": e.reason, "Description": e.description})
            }
            State::Unhealthy => {
                json!({"State": "unhealthy", "Reason": e.reason, "Description": e.description})
            }
        }
    }

    /// A receiver that sees every change of some target's state.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Records a check's result. The result of an early check (see [`Claim::Early`]) counts
    /// only if it passed while the target is still `initial`: its counted checks alone decide
    /// when it turns unhealthy.
    fn record(&self, key: Key, hc: &HealthCheck, result: Result<(), Failure>, early: bool) {
        let changed = self.record_inner(key, hc, result, early);
        if changed {
            self.changes.send_modify(|g| *g = g.wrapping_add(1));
        }
    }

    fn record_inner(
        &self,
        key: Key,
        hc: &HealthCheck,
        result: Result<(), Failure>,
        early: bool,
    ) -> bool {
        let mut map = self.entries.write();
        if early && (result.is_err() || map.get(&key).is_none_or(|e| e.state != State::Initial)) {
            return false;
        }
        let now = u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0);
        // Slow start applies only beside a target healthy for at least an interval: targets
        // that turn healthy together (the first batch) take full traffic at once.
        let settled_peer = map.iter().any(|((tg, id, port), other)| {
            *tg == key.0
                && (*id != key.1 || *port != key.2)
                && other.state == State::Healthy
                && now.saturating_sub(other.cell.healthy_at_ms.load(Ordering::Relaxed))
                    >= hc.interval * 1000
        });
        let (id, port) = (key.1.clone(), key.2);
        let e = map.entry(key).or_default();
        let was_healthy = e.state == State::Healthy;
        let was = e.state;
        match result {
            Ok(()) => {
                e.passes += 1;
                e.failures = 0;
                let needed = if e.state == State::Unhealthy {
                    hc.healthy_threshold
                } else {
                    1
                };
                if e.passes >= needed {
                    e.state = State::Healthy;
                }
            }
            Err(f) => {
                e.failures += 1;
                e.passes = 0;
                let (reason, description) = match f {
                    Failure::Timeout => ("Target.Timeout", "Request timed out".to_string()),
                    Failure::Failed => (
                        "Target.FailedHealthChecks",
                        "Health checks failed".to_string(),
                    ),
                    Failure::Code(c) => (
                        "Target.ResponseCodeMismatch",
                        format!("Health checks failed with these codes: [{c}]"),
                    ),
                };
                if e.state == State::Unhealthy || e.failures >= hc.unhealthy_threshold {
                    e.state = State::Unhealthy;
                    e.reason = reason;
                    e.description = description;
                }
            }
        }
        if e.state == State::Healthy && !was_healthy {
            e.cell.healthy_at_ms.store(now, Ordering::Relaxed);
            let ramp_from = if settled_peer { now } else { 0 };
            e.cell.ramp_from_ms.store(ramp_from, Ordering::Relaxed);
        }
        e.cell.state.store(e.state.code(), Ordering::Relaxed);
        if was != e.state {
            tracing::debug!(target_id = %id, port, from = ?was, to = ?e.state, reason = e.reason, "target health changed");
        }
        was != e.state
    }

    /// Forgets every target of `tg` not in `keep`.
    pub fn retain(&self, tg: &str, keep: &[(String, u16)]) {
        self.entries.write().retain(|(t, id, port), _| {
            let kept = t != tg || keep.iter().any(|(i, p)| i == id && p == port);
            if !kept {
                tracing::debug!(target_id = %id, port, "target health forgotten");
            }
            kept
        });
    }

    pub fn forget_group(&self, tg: &str) {
        self.entries.write().retain(|(t, _, _), _| t != tg);
    }
}

fn matches_code(matcher: &str, code: u16) -> bool {
    matcher.split(',').any(|part| {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
            (Ok(a), Ok(b)) => (a..=b).contains(&code),
            _ => false,
        }
    })
}

/// One probe: a TCP connect, or `GET <path>` on a fresh connection (over TLS for HTTPS
/// checks) as ELB-HealthChecker/2.0.
pub async fn probe(addr: SocketAddr, hc: &HealthCheck) -> Result<(), Failure> {
    let timeout = Duration::from_secs(hc.timeout);
    let work = async {
        let conn = TcpStream::connect(addr)
            .await
            .map_err(|_| Failure::Failed)?;
        match hc.protocol.as_str() {
            "TCP" => Ok(()),
            "HTTPS" => {
                let conn = target_tls::connect(conn, addr, Carries::Http1)
                    .await
                    .map_err(|_| Failure::Failed)?;
                ask(conn, addr, hc).await
            }
            _ => ask(conn, addr, hc).await,
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(Failure::Timeout))
}

/// Sends the check's request on `conn` and judges the status line.
async fn ask<C>(mut conn: C, addr: SocketAddr, hc: &HealthCheck) -> Result<(), Failure>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let path = hc.path.as_deref().unwrap_or("/");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ELB-HealthChecker/2.0\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(req.as_bytes())
        .await
        .map_err(|_| Failure::Failed)?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') {
        let n = conn.read(&mut buf).await.map_err(|_| Failure::Failed)?;
        if n == 0 || head.len() > 4096 {
            return Err(Failure::Failed);
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/"))
        .ok_or(Failure::Failed)?;
    if matches_code(hc.matcher.as_deref().unwrap_or("200"), code) {
        Ok(())
    } else {
        Err(Failure::Code(code))
    }
}

/// Checks every live target of `tg` once per interval. The checker restarts whenever the group's
/// targets or settings change, so the cadence is kept per target on the board: a new target is
/// probed at once, the others when their own interval has passed — a restart neither probes a
/// target twice within an interval (registrations a moment apart would count several failures
/// of a starting target at once) nor pushes its next probe back.
pub async fn check_group(board: Arc<HealthBoard>, tg: TargetGroup) {
    let interval = Duration::from_secs(tg.health.interval.max(1));
    loop {
        let now = std::time::Instant::now();
        let mut next = now + interval;
        let mut probes = tokio::task::JoinSet::new();
        for t in tg.targets.iter().filter(|t| t.draining_until.is_none()) {
            let Some(ip) = t.ip() else {
                continue;
            };
            let key = (tg.arn.clone(), t.id.clone(), t.port);
            let early = match board.claim_probe(&key, now, interval) {
                Claim::NotDue(due) => {
                    next = next.min(due);
                    continue;
                }
                Claim::Counted => {
                    // If it fails while `initial`, its early check is due before the interval.
                    if board.state(&key.0, &key.1, key.2) == State::Initial {
                        next = next.min(now + EARLY_RECHECK);
                    }
                    false
                }
                Claim::Early => {
                    next = next.min(now + EARLY_RECHECK);
                    true
                }
            };
            let port = match tg.health.port.parse::<u16>() {
                Ok(p) => p,
                Err(_) => t.port,
            };
            let hc = tg.health.clone();
            let board = board.clone();
            probes.spawn(async move {
                let r = probe(SocketAddr::new(ip, port), &hc).await;
                tracing::trace!(target_id = %key.1, port = key.2, early, result = ?r, "health probe");
                board.record(key, &hc, r, early);
            });
        }
        while probes.join_next().await.is_some() {}
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc() -> HealthCheck {
        HealthCheck {
            enabled: true,
            protocol: "HTTP".into(),
            port: "traffic-port".into(),
            path: Some("/".into()),
            interval: 5,
            timeout: 2,
            healthy_threshold: 3,
            unhealthy_threshold: 2,
            matcher: Some("200-299,302".into()),
        }
    }

    #[test]
    fn transitions_follow_the_thresholds() {
        let b = HealthBoard::default();
        let k = || ("tg".to_string(), "10.0.0.1".to_string(), 80);
        let h = hc();
        assert_eq!(b.state("tg", "10.0.0.1", 80), State::Initial);
        b.record(k(), &h, Err(Failure::Code(404)), false);
        assert_eq!(b.state("tg", "10.0.0.1", 80), State::Initial);
        b.record(k(), &h, Err(Failure::Code(404)), false);
        assert_eq!(b.state("tg", "10.0.0.1", 80), State::Unhealthy);
        assert_eq!(
            b.describe("tg", "10.0.0.1", 80)["Description"],
            "Health checks failed with these codes: [404]"
        );
        b.record(k(), &h, Ok(()), false);
        b.record(k(), &h, Ok(()), false);
        assert_eq!(b.state("tg", "10.0.0.1", 80), State::Unhealthy);
        b.record(k(), &h, Ok(()), false);
        assert_eq!(b.state("tg", "10.0.0.1", 80), State::Healthy);
        b.record(k(), &h, Err(Failure::Timeout), false);
        assert_eq!(b.state("tg", "10.0.0.1", 80), State::Healthy);
        b.record(k(), &h, Err(Failure::Timeout), false);
        assert_eq!(b.describe("tg", "10.0.0.1", 80)["Reason"], "Target.Timeout");
        assert!(matches_code("200-299,302", 302) && !matches_code("200-299,302", 301));
    }

    #[test]
    fn an_initial_target_that_failed_is_rechecked_early_and_only_a_pass_counts() {
        let b = HealthBoard::default();
        let key = ("tg".to_string(), "10.0.0.1".to_string(), 80);
        let h = hc();
        let every = Duration::from_secs(5);
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(b.claim_probe(&key, at(0), every), Claim::Counted);
        // Not probed yet: nothing early before the first result.
        assert_eq!(b.claim_probe(&key, at(500), every), Claim::NotDue(at(5000)));
        b.record(key.clone(), &h, Err(Failure::Failed), false);
        assert_eq!(b.claim_probe(&key, at(500), every), Claim::NotDue(at(1000)));
        assert_eq!(b.claim_probe(&key, at(1000), every), Claim::Early);
        // Early failures never count: after any number the target is still initial.
        for _ in 0..5 {
            b.record(key.clone(), &h, Err(Failure::Failed), true);
        }
        assert_eq!(b.state("tg", "10.0.0.1", 80), State::Initial);
        assert_eq!(
            b.claim_probe(&key, at(1500), every),
            Claim::NotDue(at(2000))
        );
        // The counted cadence is kept.
        assert_eq!(b.claim_probe(&key, at(5000), every), Claim::Counted);
        b.record(key.clone(), &h, Err(Failure::Failed), false);
        assert_eq!(b.state("tg", "10.0.0.1", 80), State::Unhealthy);
        // An unhealthy target waits for its counted checks (and its healthy threshold).
        assert_eq!(
            b.claim_probe(&key, at(6000), every),
            Claim::NotDue(at(10000))
        );
        b.record(key.clone(), &h, Ok(()), true);
        assert_eq!(b.state("tg", "10.0.0.1", 80), State::Unhealthy);

        let other = ("tg".to_string(), "10.0.0.2".to_string(), 80);
        assert_eq!(b.claim_probe(&other, at(0), every), Claim::Counted);
        b.record(other.clone(), &h, Err(Failure::Failed), false);
        assert_eq!(b.claim_probe(&other, at(1000), every), Claim::Early);
        b.record(other.clone(), &h, Ok(()), true);
        assert_eq!(b.state("tg", "10.0.0.2", 80), State::Healthy);
        assert_eq!(
            b.claim_probe(&other, at(2000), every),
            Claim::NotDue(at(5000))
        );
    }
}
