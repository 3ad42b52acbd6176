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
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod sticky;
pub mod workers;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

use crate::plane::health::{HealthBoard, State};
use crate::plane::route::Cond;
use crate::state::{ElbState, forward_targets};

/// Ports opened by API calls (so a port that cannot be opened fails the call) and handed to
/// the data plane when it starts serving them.
#[derive(Debug, Default)]
pub struct Ports {
    reserved: Mutex<HashMap<u16, std::net::TcpListener>>,
}

impl Ports {
    pub fn reserve(&self, port: u16) -> std::io::Result<()> {
        let mut r = self.reserved.lock();
        if r.contains_key(&port) {
            return Ok(());
        }
        r.insert(port, workers::bind_shared(port)?);
        Ok(())
    }

    fn take_or_bind(&self, port: u16) -> std::io::Result<std::net::TcpListener> {
        match self.reserved.lock().remove(&port) {
            Some(l) => Ok(l),
            None => workers::bind_shared(port),
        }
    }
}

/// A target as the proxy sees it.
#[derive(Debug)]
pub struct TargetPlan {
    pub id: String,
    pub port: u16,
    pub addr: SocketAddr,
    /// `addr` ready for the request URI.
    pub authority: http::uri::Authority,
    /// The sticky-session cookie value that names this target.
    pub token: String,
    pub in_flight: Arc<AtomicUsize>,
    pub health: health::Cell,
}

impl TargetPlan {
    fn healthy(&self) -> bool {
        State::from_code(self.health.load(Ordering::Relaxed)) == State::Healthy
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
        self.targets.iter().filter(in_pool).nth(n % pool_len)
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
    pub idle_timeout: Duration,
    pub preserve_host: bool,
    pub xff_mode: String,
    /// `port` ready for X-Forwarded-Port.
    pub port_value: http::HeaderValue,
    pub counters: Arc<metrics::LbCounters>,
}

/// Everything the proxy needs, compiled from one configuration.
#[derive(Debug, Default)]
pub struct Routes {
    pub ports: HashMap<u16, Vec<Arc<ListenerPlan>>>,
}

impl Routes {
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

/// Round-robin positions and in-flight counts, kept across changes and shared by all workers:
/// round robin stays exact over the whole load balancer (not per worker), and
/// least-outstanding-requests sees every worker's load.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    next: Slots<String>,
    in_flight: Slots<(String, SocketAddr)>,
}

/// Counters by key, each shared with every compiled plan that uses it.
type Slots<K> = Arc<Mutex<HashMap<K, Arc<AtomicUsize>>>>;

pub fn compile(
    s: &ElbState,
    counters: &Counters,
    board: &HealthBoard,
    metrics: &metrics::WorkerMetrics,
) -> Routes {
    let mut groups: HashMap<String, Arc<GroupPlan>> = HashMap::new();
    for tg in &s.target_groups {
        let targets = tg
            .targets
            .iter()
            .filter(|t| t.draining_until.is_none())
            .filter_map(|t| {
                let addr = SocketAddr::new(t.id.parse::<IpAddr>().ok()?, t.port);
                let authority = addr.to_string().parse().ok()?;
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
                    authority,
                    token: sticky::token(&[&tg.arn, &t.id, &t.port.to_string()]),
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
                token: sticky::token(&[&tg.arn]),
                counters: metrics.tg(&tg.arn),
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
                idle_timeout: Duration::from_secs(
                    attr("idle_timeout.timeout_seconds").parse().unwrap_or(60),
                ),
                preserve_host: attr("routing.http.preserve_host_header.enabled") == "true",
                xff_mode: attr("routing.http.xff_header_processing.mode"),
                port_value: http::HeaderValue::from(l.port),
                counters: metrics.lb(&lb.arn),
            }));
    }
    routes
}

/// A running listener port: aborting the accept loop closes the port; accepted connections
/// run in their own tasks and finish normally.
struct OpenPort {
    protocol: String,
    accept: tokio::task::AbortHandle,
}

/// Follows the configuration until aborted, serving listeners on `workers` threads.
pub async fn run(
    mut config: watch::Receiver<Arc<ElbState>>,
    board: Arc<HealthBoard>,
    ports: Arc<Ports>,
    workers: usize,
    metrics: Arc<metrics::Metrics>,
) {
    let workers = match workers::Workers::start(workers, &metrics) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the load balancer's worker threads");
            return;
        }
    };
    let mut open: HashMap<u16, OpenPort> = HashMap::new();
    let mut checkers: HashMap<String, (String, tokio::task::AbortHandle)> = HashMap::new();
    loop {
        let state = config.borrow_and_update().clone();
        let wanted: HashMap<u16, String> = state
            .listeners
            .iter()
            .map(|l| (l.port, l.protocol.clone()))
            .collect();
        workers.publish(&state, &board);
        open.retain(|port, o| {
            let keep = wanted.get(port) == Some(&o.protocol);
            if !keep {
                o.accept.abort();
            }
            keep
        });
        for (port, protocol) in wanted {
            if open.contains_key(&port) {
                continue;
            }
            let accept = ports
                .take_or_bind(port)
                .map(|socket| workers.open(socket, port, &protocol));
            match accept {
                Ok(accept) => {
                    open.insert(port, OpenPort { protocol, accept });
                }
                Err(e) => {
                    tracing::error!(port, error = %e, "cannot open listener port; retrying with the next change");
                }
            }
        }
        sync_checkers(&state, &board, &mut checkers);
        if config.changed().await.is_err() {
            return;
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
        let keep: Vec<(String, u16)> = tg.targets.iter().map(|t| (t.id.clone(), t.port)).collect();
        board.retain(&tg.arn, &keep);
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
