//! The data plane: follows every published configuration, opening a port on 127.0.0.1 for
//! each listener and closing it when the listener goes (connections already accepted carry on),
//! compiling rules and target groups into [`Routes`], and running health checks.
//!
//! Requests read the current [`Routes`] once when they start, so a change never disturbs a
//! request in flight. Each worker thread gets its own compiled copy, so the reference counts a
//! request touches are not shared between cores. Counters that must outlive a change and span
//! workers (round-robin positions, requests in flight per target) live in [`Counters`] and are
//! shared by every compiled version.

pub mod counted;
pub mod fleet;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod sched;
pub mod sticky;
pub mod target_tls;
pub mod tls;
pub mod udp;
pub mod upstream;
pub mod workers;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

use crate::certificates::CertificateSource;
use crate::plane::health::{HealthBoard, State};
use crate::plane::route::Cond;
use crate::state::{ElbState, Target, forward_targets};

/// Ports opened by API calls (so a port that cannot be opened fails the call) and handed to
/// the data plane when it starts serving them.
#[derive(Debug, Default)]
pub struct Ports {
    reserved: Mutex<HashMap<u16, std::net::TcpListener>>,
    reserved_udp: Mutex<HashMap<u16, std::net::UdpSocket>>,
}

/// Whether a listener protocol takes TCP connections, UDP datagrams, or both (TCP_UDP).
fn transports(protocol: &str) -> (bool, bool) {
    match protocol {
        "UDP" => (false, true),
        "TCP_UDP" => (true, true),
        _ => (true, false),
    }
}

/// Sockets an API call reserved; they are closed again when it is dropped, unless the call's
/// change was stored and [`Reservation::keep`] hands them to the data plane.
#[must_use = "a reservation not kept is closed when dropped"]
#[derive(Debug)]
pub struct Reservation {
    ports: Arc<Ports>,
    port: u16,
    tcp: bool,
    udp: bool,
}

impl Reservation {
    /// Leaves the sockets for the data plane, which takes them when it serves the port.
    pub fn keep(mut self) {
        self.tcp = false;
        self.udp = false;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.tcp {
            self.ports.reserved.lock().remove(&self.port);
        }
        if self.udp {
            self.ports.reserved_udp.lock().remove(&self.port);
        }
    }
}

impl Ports {
    /// Opens the sockets a listener of `protocol` on `port` needs; those this call opened are
    /// closed again if the reservation is dropped unkept (also when the UDP half fails).
    pub fn reserve(self: &Arc<Self>, port: u16, protocol: &str) -> std::io::Result<Reservation> {
        let (tcp, udp) = transports(protocol);
        let mut made = Reservation {
            ports: self.clone(),
            port,
            tcp: false,
            udp: false,
        };
        if tcp && let Entry::Vacant(e) = self.reserved.lock().entry(port) {
            e.insert(workers::bind_shared(port)?);
            made.tcp = true;
        }
        if udp && let Entry::Vacant(e) = self.reserved_udp.lock().entry(port) {
            e.insert(workers::bind_udp(port)?);
            made.udp = true;
        }
        Ok(made)
    }

    /// The sockets a listener of `protocol` on `port` serves from: the reserved ones, or new
    /// ones. Both are had before anything starts, so a TCP_UDP port whose UDP half fails starts
    /// nothing.
    fn take(
        &self,
        port: u16,
        protocol: &str,
    ) -> std::io::Result<(Option<std::net::TcpListener>, Option<std::net::UdpSocket>)> {
        let (tcp, udp) = transports(protocol);
        let tcp = tcp.then(|| self.take_or_bind(port)).transpose()?;
        let udp = udp.then(|| self.take_or_bind_udp(port)).transpose()?;
        Ok((tcp, udp))
    }

    /// Closes sockets reserved for a port the plane already serves from sockets of its own: a
    /// listener created (in any tenant) while the port was still open would otherwise leave a
    /// second socket bound beside the served one, and the kernel would hand it half the
    /// connections, which nobody accepts.
    fn discard(&self, port: u16) {
        if self.reserved.lock().remove(&port).is_some() {
            tracing::debug!(port, "closed a reservation for a port already served");
        }
        self.reserved_udp.lock().remove(&port);
    }

    fn take_or_bind(&self, port: u16) -> std::io::Result<std::net::TcpListener> {
        match self.reserved.lock().remove(&port) {
            Some(l) => Ok(l),
            None => workers::bind_shared(port),
        }
    }

    fn take_or_bind_udp(&self, port: u16) -> std::io::Result<std::net::UdpSocket> {
        match self.reserved_udp.lock().remove(&port) {
            Some(s) => Ok(s),
            None => workers::bind_udp(port),
        }
    }
}

/// A target as the proxy sees it.
#[derive(Debug)]
pub struct TargetPlan {
    pub id: String,
    pub port: u16,
    pub addr: SocketAddr,
    /// `addr` as a Host header, for requests that came without one.
    pub host_value: http::HeaderValue,
    /// The sticky-session cookie value that names this target.
    pub token: String,
    pub in_flight: Arc<AtomicUsize>,
    pub health: health::Cell,
}

impl TargetPlan {
    fn healthy(&self) -> bool {
        self.health.state() == State::Healthy
    }

    /// The share of its traffic a target in slow start gets now (0 to 1), None once it is
    /// past it.
    fn ramp(&self, slow_start_ms: u64, now_ms: u64) -> Option<f64> {
        let since = self.health.ramp_from_ms();
        let elapsed = now_ms.saturating_sub(since);
        (elapsed < slow_start_ms).then(|| elapsed as f64 / slow_start_ms as f64)
    }
}

#[derive(Debug)]
pub struct GroupPlan {
    pub arn: String,
    /// Registered targets that are not draining.
    pub targets: Vec<TargetPlan>,
    pub least_outstanding: bool,
    pub next: Arc<AtomicUsize>,
    pub sticky: Option<sticky::Sticky>,
    /// The `AWSALBTG` value that names this group.
    pub token: String,
    pub counters: Arc<metrics::TgCounters>,
    /// `slow_start.duration_seconds` in ms; 0 when off.
    pub slow_start_ms: u64,
    /// Targets are reached over TLS (HTTPS and TLS target groups).
    pub tls: bool,
    /// Addresses of the targets draining now.
    pub draining: Vec<SocketAddr>,
    /// NLB: connections and flows of a deregistered target end when its delay does
    /// (`deregistration_delay.connection_termination.enabled`).
    pub cut_deregistered: bool,
    /// NLB: connections and flows of an unhealthy target end unless every target is unhealthy
    /// (`target_health_state.unhealthy.connection_termination.enabled`).
    pub cut_unhealthy: bool,
}

impl GroupPlan {
    /// The target a sticky cookie names, if it may still get traffic (registered, not
    /// draining, and healthy unless none is); otherwise a new pick.
    pub fn pick_sticky(&self, token: Option<&str>) -> Option<&TargetPlan> {
        let Some(token) = token else {
            return self.pick();
        };
        let any_healthy = self.targets.iter().any(TargetPlan::healthy);
        self.targets
            .iter()
            .find(|t| t.token == token && (t.healthy() || !any_healthy))
            .or_else(|| self.pick())
    }

    /// The same target for the same `key` (a hash of the client's address) while the pool
    /// stays the same.
    pub fn pick_by_key(&self, key: u64) -> Option<&TargetPlan> {
        let any_healthy = self.targets.iter().any(TargetPlan::healthy);
        let pool = || self.targets.iter().filter(|t| t.healthy() || !any_healthy);
        let len = pool().count();
        if len == 0 {
            return None;
        }
        pool().nth((key % len as u64) as usize)
    }

    /// Picks a target: healthy ones only, or all of them when none is healthy (fail-open).
    /// None when the group has no target that is not draining (the caller answers 503).
    pub fn pick(&self) -> Option<&TargetPlan> {
        let healthy = self.targets.iter().filter(|t| t.healthy()).count();
        let in_pool = |t: &&TargetPlan| healthy == 0 || t.healthy();
        let pool_len = if healthy == 0 {
            self.targets.len()
        } else {
            healthy
        };
        if pool_len == 0 {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if self.least_outstanding {
            let load = |t: &TargetPlan| t.in_flight.load(Ordering::Relaxed);
            let min = self.targets.iter().filter(in_pool).map(load).min()?;
            let least = self
                .targets
                .iter()
                .filter(in_pool)
                .filter(|t| load(t) == min);
            let count = least.clone().count();
            return least.clone().nth(n % count.max(1));
        }
        let picked = self.targets.iter().filter(in_pool).nth(n % pool_len)?;
        if self.slow_start_ms == 0 || healthy == 0 {
            return Some(picked);
        }
        Some(self.slow_start(picked, n))
    }

    /// Slow start: a target that became healthy less than the duration ago keeps a pick with
    /// the probability of its ramp (linear from 0 to 1); otherwise the pick moves to a target
    /// past its ramp. Targets that all became healthy together (the first batch) have no
    /// one to yield to, so they take full traffic at once, as on AWS.
    fn slow_start<'a>(&'a self, picked: &'a TargetPlan, n: usize) -> &'a TargetPlan {
        let now = u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0);
        let Some(share) = picked.ramp(self.slow_start_ms, now) else {
            return picked;
        };
        let settled = || {
            self.targets
                .iter()
                .filter(|t| t.healthy() && t.ramp(self.slow_start_ms, now).is_none())
        };
        let count = settled().count();
        if count == 0 || (random_unit() < share) {
            return picked;
        }
        settled().nth(n % count).unwrap_or(picked)
    }
}

/// A forward action: weighted target groups, and the `AWSALBTG` cookie's lifetime in seconds
/// when group stickiness is on.
#[derive(Debug)]
pub struct Forward {
    pub groups: Vec<(Arc<GroupPlan>, u64)>,
    pub group_stickiness: Option<u64>,
}

#[derive(Debug)]
pub enum Action {
    Forward(Forward),
    Redirect(Value),
    Fixed {
        status: u16,
        content_type: Option<String>,
        body: String,
    },
}

#[derive(Debug)]
pub struct RulePlan {
    pub conditions: Vec<Cond>,
    pub action: Action,
}

#[derive(Debug)]
pub struct ListenerPlan {
    pub lb_arn: String,
    pub dns_name: String,
    pub port: u16,
    pub protocol: String,
    /// By priority; the default rule (no conditions) last.
    pub rules: Vec<RulePlan>,
    /// ALB: how long a target may take to answer (the LB's `idle_timeout.timeout_seconds`);
    /// NLB: how long a relayed connection may stay silent (`tcp.idle_timeout.seconds`).
    pub idle_timeout: Duration,
    /// ALB: how long one client connection may be kept alive in all
    /// (`client_keep_alive.seconds`); it is then closed after its current request.
    pub client_keep_alive: Duration,
    pub preserve_host: bool,
    pub xff_mode: String,
    /// `port` ready for X-Forwarded-Port.
    pub port_value: http::HeaderValue,
    pub counters: Arc<metrics::LbCounters>,
}

impl ListenerPlan {
    /// The scheme clients used: X-Forwarded-Proto and a redirect's `#{protocol}`.
    pub fn scheme(&self) -> &'static str {
        if self.protocol == "HTTPS" {
            "https"
        } else {
            "http"
        }
    }

    /// An NLB listener's forward (its only rule is the default one).
    pub fn forward(&self) -> Option<&Forward> {
        match self.rules.last().map(|r| &r.action) {
            Some(Action::Forward(fwd)) => Some(fwd),
            _ => None,
        }
    }
}

/// Everything the proxy needs, compiled from one configuration.
#[derive(Debug, Default)]
pub struct Routes {
    pub ports: HashMap<u16, Vec<Arc<ListenerPlan>>>,
    /// The TLS server configuration of each HTTPS and TLS port.
    pub tls: tls::TlsConfigs,
}

impl Routes {
    /// Whether an NLB connection or flow that came in on `port` and went to `addr` in `group`
    /// must end now: the target's deregistration delay is over and the group ends its
    /// connections then, or the target is unhealthy while another is healthy (no fail-open)
    /// and the group ends unhealthy targets' connections.
    pub fn cut(&self, port: u16, group: &str, addr: SocketAddr) -> bool {
        let fwd = self
            .ports
            .get(&port)
            .and_then(|ls| ls.first())
            .and_then(|l| l.forward());
        let Some((g, _)) = fwd.and_then(|f| f.groups.iter().find(|(g, _)| g.arn == group)) else {
            return false;
        };
        match g.targets.iter().find(|t| t.addr == addr) {
            Some(t) => {
                g.cut_unhealthy
                    && t.health.state() == State::Unhealthy
                    && g.targets.iter().any(TargetPlan::healthy)
            }
            None => g.cut_deregistered && !g.draining.contains(&addr),
        }
    }

    /// The listener a request on `port` with `host` is for: the only one, or the one whose load
    /// balancer's DNS name is the host (several load balancers share 127.0.0.1).
    pub fn listener(&self, port: u16, host: &str) -> Option<&Arc<ListenerPlan>> {
        let all = self.ports.get(&port)?;
        if all.len() == 1 {
            return all.first();
        }
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        all.iter()
            .find(|l| l.dns_name.eq_ignore_ascii_case(name))
            .or_else(|| all.first())
    }
}

/// A uniform number in [0, 1).
fn random_unit() -> f64 {
    (proxy::random() >> 11) as f64 / (1u64 << 53) as f64
}

/// Round-robin positions and in-flight counts, kept across changes and shared by all workers:
/// round robin stays exact over the whole load balancer (not per worker), and
/// least-outstanding-requests sees every worker's load.
#[derive(Debug, Default)]
pub struct Counters {
    next: Slots<String>,
    in_flight: Slots<(String, SocketAddr)>,
}

impl Counters {
    /// Forgets counters no compiled plan holds any more (deleted groups, deregistered targets),
    /// so the maps do not grow with every target that ever existed.
    pub fn prune(&self) {
        self.next.lock().retain(|_, c| Arc::strong_count(c) > 1);
        self.in_flight
            .lock()
            .retain(|_, c| Arc::strong_count(c) > 1);
    }
}

fn attribute_on(attributes: &std::collections::BTreeMap<String, String>, key: &str) -> bool {
    attributes.get(key).map(String::as_str) == Some("true")
}

/// Counters by key, each shared with every compiled plan that uses it.
type Slots<K> = Mutex<HashMap<K, Arc<AtomicUsize>>>;

pub fn compile(
    s: &ElbState,
    counters: &Counters,
    board: &HealthBoard,
    metrics: &metrics::WorkerMetrics,
    cookie_key: &sticky::CookieKey,
) -> Routes {
    let mut groups: HashMap<String, Arc<GroupPlan>> = HashMap::new();
    for tg in &s.target_groups {
        let targets = tg
            .targets
            .iter()
            .filter(|t| t.draining_until.is_none())
            .filter_map(|t| {
                let addr = SocketAddr::new(t.ip()?, t.port);
                let host_value = http::HeaderValue::from_str(&addr.to_string()).ok()?;
                let in_flight = counters
                    .in_flight
                    .lock()
                    .entry((tg.arn.clone(), addr))
                    .or_default()
                    .clone();
                Some(TargetPlan {
                    id: t.id.clone(),
                    port: t.port,
                    addr,
                    host_value,
                    token: sticky::token(cookie_key, &[&tg.arn, &t.id, &t.port.to_string()]),
                    in_flight,
                    health: board.cell(&tg.arn, &t.id, t.port),
                })
            })
            .collect();
        let next = counters
            .next
            .lock()
            .entry(tg.arn.clone())
            .or_default()
            .clone();
        groups.insert(
            tg.arn.clone(),
            Arc::new(GroupPlan {
                arn: tg.arn.clone(),
                targets,
                least_outstanding: tg
                    .attributes
                    .get("load_balancing.algorithm.type")
                    .map(String::as_str)
                    == Some("least_outstanding_requests"),
                next,
                sticky: sticky::Sticky::from_attributes(&tg.attributes),
                token: sticky::token(cookie_key, &[&tg.arn]),
                counters: metrics.tg(&tg.arn),
                slow_start_ms: tg
                    .attributes
                    .get("slow_start.duration_seconds")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1000,
                tls: matches!(tg.protocol.as_str(), "HTTPS" | "TLS"),
                draining: tg
                    .targets
                    .iter()
                    .filter(|t| t.draining_until.is_some())
                    .filter_map(|t| Some(SocketAddr::new(t.ip()?, t.port)))
                    .collect(),
                cut_deregistered: attribute_on(
                    &tg.attributes,
                    "deregistration_delay.connection_termination.enabled",
                ),
                cut_unhealthy: attribute_on(
                    &tg.attributes,
                    "target_health_state.unhealthy.connection_termination.enabled",
                ),
            }),
        );
    }
    let action_of = |actions: &[Value]| -> Action {
        let Some(last) = actions.last() else {
            return Action::Fixed {
                status: 503,
                content_type: None,
                body: String::new(),
            };
        };
        match last.get("Type").and_then(Value::as_str) {
            Some("redirect") => {
                Action::Redirect(last.get("RedirectConfig").cloned().unwrap_or(Value::Null))
            }
            Some("fixed-response") => {
                let f = last
                    .get("FixedResponseConfig")
                    .cloned()
                    .unwrap_or(Value::Null);
                Action::Fixed {
                    status: f
                        .get("StatusCode")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(503),
                    content_type: f
                        .get("ContentType")
                        .and_then(Value::as_str)
                        .map(String::from),
                    body: f
                        .get("MessageBody")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                }
            }
            _ => Action::Forward(Forward {
                groups: forward_targets(last)
                    .into_iter()
                    .filter_map(|(arn, w)| groups.get(&arn).map(|g| (g.clone(), w)))
                    .collect(),
                group_stickiness: last
                    .pointer("/ForwardConfig/TargetGroupStickinessConfig")
                    .filter(|c| c.get("Enabled").and_then(Value::as_bool) == Some(true))
                    .map(|c| {
                        c.get("DurationSeconds")
                            .and_then(Value::as_u64)
                            .unwrap_or(3600)
                    }),
            }),
        }
    };
    let mut routes = Routes::default();
    for l in &s.listeners {
        let Some(lb) = s.lb(&l.load_balancer_arn) else {
            continue;
        };
        let mut rules: Vec<&crate::state::Rule> =
            s.rules.iter().filter(|r| r.listener_arn == l.arn).collect();
        rules.sort_by_key(|r| r.priority);
        let mut plans: Vec<RulePlan> = rules
            .iter()
            .map(|r| RulePlan {
                conditions: r.conditions.iter().filter_map(Cond::compile).collect(),
                action: action_of(&r.actions),
            })
            .collect();
        plans.push(RulePlan {
            conditions: Vec::new(),
            action: action_of(&l.default_actions),
        });
        let attr = |k: &str| lb.attributes.get(k).cloned().unwrap_or_default();
        routes
            .ports
            .entry(l.port)
            .or_default()
            .push(Arc::new(ListenerPlan {
                lb_arn: lb.arn.clone(),
                dns_name: lb.dns_name.clone(),
                port: l.port,
                protocol: l.protocol.clone(),
                rules: plans,
                idle_timeout: if lb.kind == "network" {
                    let tcp_idle = l.attributes.get("tcp.idle_timeout.seconds");
                    Duration::from_secs(tcp_idle.and_then(|v| v.parse().ok()).unwrap_or(350))
                } else {
                    Duration::from_secs(attr("idle_timeout.timeout_seconds").parse().unwrap_or(60))
                },
                client_keep_alive: Duration::from_secs(
                    attr("client_keep_alive.seconds").parse().unwrap_or(3600),
                ),
                preserve_host: attr("routing.http.preserve_host_header.enabled") == "true",
                xff_mode: attr("routing.http.xff_header_processing.mode"),
                port_value: http::HeaderValue::from(l.port),
                counters: metrics.lb(&lb.arn),
            }));
    }
    routes
}

/// A running listener port: aborting its tasks (the TCP accept loop, the UDP relay) closes the
/// port; accepted connections run in their own tasks and finish normally.
struct OpenPort {
    protocol: String,
    tasks: Vec<tokio::task::AbortHandle>,
}

/// How the data plane runs: `workers` threads scheduled as `scheduling` says, with at most
/// `max_connections` client connections open over all ports.
#[derive(Debug, Clone)]
pub struct PlaneOptions {
    pub workers: usize,
    pub scheduling: sched::Scheduling,
    pub max_connections: usize,
    /// Keys the sticky-session cookies (kept in the data directory so they survive restarts).
    pub cookie_key: sticky::CookieKey,
}

/// Follows the configuration until aborted, serving listeners on `options.workers` worker
/// threads, started with the first listener (a Fleetport without load balancers runs none).
pub async fn run(
    mut config: watch::Receiver<Arc<ElbState>>,
    certificates: Arc<dyn CertificateSource>,
    board: Arc<HealthBoard>,
    ports: Arc<Ports>,
    options: PlaneOptions,
    metrics: Arc<metrics::Metrics>,
) {
    let mut started: Option<workers::Workers> = None;
    let mut open: HashMap<u16, OpenPort> = HashMap::new();
    let mut checkers: HashMap<String, (String, tokio::task::AbortHandle)> = HashMap::new();
    let mut certificate_changes = certificates.changes();
    let certificates = crate::certificates::Cached::new(certificates);
    let mut certificates_follow = true;
    loop {
        let state = config.borrow_and_update().clone();
        let wanted: HashMap<u16, String> = state
            .listeners
            .iter()
            .map(|l| (l.port, l.protocol.clone()))
            .collect();
        if started.is_none() && !wanted.is_empty() {
            match workers::Workers::start(options.clone(), &metrics) {
                Ok(w) => started = Some(w),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the load balancer's worker threads; retrying with the next change");
                }
            }
        }
        if let Some(workers) = &started {
            let tls = tls::configs(&state, &certificates);
            workers.publish(&state, &board, &tls);
        }
        open.retain(|port, o| {
            let keep = wanted.get(port) == Some(&o.protocol);
            if !keep {
                o.tasks.iter().for_each(tokio::task::AbortHandle::abort);
            }
            keep
        });
        for (port, protocol) in wanted {
            let Some(workers) = &started else {
                break;
            };
            if open.contains_key(&port) {
                ports.discard(port);
                continue;
            }
            let opened = ports.take(port, &protocol).map(|(tcp_socket, udp_socket)| {
                let accept = tcp_socket.map(|s| workers.open(s, port, &protocol));
                let relay = udp_socket.map(|s| workers.open_udp(s, port));
                accept.into_iter().chain(relay).collect()
            });
            match opened {
                Ok(tasks) => {
                    open.insert(port, OpenPort { protocol, tasks });
                }
                Err(e) => {
                    tracing::error!(port, error = %e, "cannot open listener port; retrying with the next change");
                }
            }
        }
        sync_checkers(&state, &board, &mut checkers);
        tokio::select! {
            r = config.changed() => {
                if r.is_err() {
                    return;
                }
            }
            // A re-imported certificate is served from the next handshake on.
            r = certificate_changes.changed(), if certificates_follow => {
                certificate_changes.borrow_and_update();
                certificates.forget();
                certificates_follow = r.is_ok();
            }
        }
    }
}

/// One checker per target group in use, restarted when its health check or targets change.
fn sync_checkers(
    state: &ElbState,
    board: &Arc<HealthBoard>,
    checkers: &mut HashMap<String, (String, tokio::task::AbortHandle)>,
) {
    let mut live = Vec::new();
    for tg in &state.target_groups {
        if state.lbs_of_tg(&tg.arn).is_empty() {
            continue;
        }
        live.push(tg.arn.clone());
        let fingerprint = serde_json::to_string(&(&tg.health, &tg.targets)).unwrap_or_default();
        if checkers
            .get(&tg.arn)
            .is_some_and(|(f, _)| *f == fingerprint)
        {
            continue;
        }
        if let Some((_, h)) = checkers.remove(&tg.arn) {
            h.abort();
        }
        // A stopped instance starts over at `initial` when it comes back.
        let keep: Vec<(String, u16)> = tg
            .targets
            .iter()
            .filter(|t| t.ip().is_some())
            .map(Target::key)
            .collect();
        board.retain(&tg.arn, &keep);
        tracing::debug!(target_group = %tg.arn, targets = keep.len(), "health checker (re)started");
        let h = tokio::spawn(health::check_group(board.clone(), tg.clone()));
        checkers.insert(tg.arn.clone(), (fingerprint, h.abort_handle()));
    }
    checkers.retain(|arn, (_, h)| {
        let keep = live.contains(arn);
        if !keep {
            h.abort();
            board.forget_group(arn);
        }
        keep
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_no_plan_holds_are_pruned() {
        let c = Counters::default();
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let held = c
            .in_flight
            .lock()
            .entry(("tg".into(), addr(1)))
            .or_default()
            .clone();
        c.in_flight
            .lock()
            .entry(("tg".into(), addr(2)))
            .or_default();
        c.next.lock().entry("gone".into()).or_default();
        c.prune();
        assert_eq!(c.in_flight.lock().len(), 1);
        assert!(c.next.lock().is_empty());
        drop(held);
        c.prune();
        assert!(c.in_flight.lock().is_empty());
    }

    fn target(port: u16, ramp_from_ms: u64) -> TargetPlan {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        TargetPlan {
            id: "127.0.0.1".into(),
            port,
            addr,
            host_value: http::HeaderValue::from_static("127.0.0.1:1"),
            token: String::new(),
            in_flight: Arc::default(),
            health: Arc::new(health::Shared::new_for_test(State::Healthy, ramp_from_ms)),
        }
    }

    fn group(targets: Vec<TargetPlan>, slow_start_ms: u64) -> GroupPlan {
        GroupPlan {
            arn: "tg".into(),
            targets,
            least_outstanding: false,
            next: Arc::default(),
            sticky: None,
            token: String::new(),
            counters: Arc::default(),
            slow_start_ms,
            tls: false,
            draining: Vec::new(),
            cut_deregistered: false,
            cut_unhealthy: false,
        }
    }

    fn share_of_new(g: &GroupPlan) -> usize {
        (0..1000)
            .filter(|_| g.pick().is_some_and(|t| t.port == 2))
            .count()
    }

    #[test]
    fn slow_start_holds_back_a_target_that_just_became_healthy() {
        let now = u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0);
        let ramping = group(vec![target(1, 1), target(2, now)], 60_000);
        assert!(share_of_new(&ramping) < 30, "{}", share_of_new(&ramping));
        let halfway = group(vec![target(1, 1), target(2, now - 30_000)], 60_000);
        assert!((150..350).contains(&share_of_new(&halfway)));
        let off = group(vec![target(1, 1), target(2, now)], 0);
        assert_eq!(share_of_new(&off), 500);
        // Healthy together (the first batch): nobody to yield to, full share at once.
        let batch = group(vec![target(1, now), target(2, now)], 60_000);
        assert_eq!(share_of_new(&batch), 500);
    }
}
