//! Load balancer counters and their Prometheus text rendering.
//!
//! Each worker thread counts into its own [`WorkerMetrics`] (so the request path never shares a
//! cache line between cores); a scrape sums the workers. Names follow the CloudWatch metrics
//! they stand for (RequestCount, HTTPCode_ELB_5XX_Count, TargetResponseTime, ...), and labels use
//! CloudWatch's dimension values (`app/<name>/<id>`, `targetgroup/<name>/<id>`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::plane::health::{HealthBoard, State};
use crate::state::ElbState;

/// Upper bounds (seconds) of the target response time histogram.
const BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Status classes 1xx..5xx at indexes 0..4.
fn class(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5) - 1)
}

#[derive(Debug, Default)]
pub struct LbCounters {
    pub requests: AtomicU64,
    /// Responses the load balancer made itself (error pages, fixed responses, redirects).
    pub elb_responses: [AtomicU64; 5],
    pub new_connections: AtomicU64,
    pub active_connections: AtomicI64,
    pub processed_bytes: AtomicU64,
    pub new_flows_udp: AtomicU64,
    pub active_flows_udp: AtomicI64,
    /// UDP's share of `processed_bytes`.
    pub processed_bytes_udp: AtomicU64,
}

impl LbCounters {
    /// Counts a datagram relayed either way.
    pub fn udp_bytes(&self, n: usize) {
        let n = n as u64;
        self.processed_bytes.fetch_add(n, Ordering::Relaxed);
        self.processed_bytes_udp.fetch_add(n, Ordering::Relaxed);
    }

    pub fn elb_response(&self, status: u16) {
        self.elb_responses[class(status)].fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct TgCounters {
    pub target_responses: [AtomicU64; 5],
    /// Requests that got no response from the target (refused, broken, timed out).
    pub connection_errors: AtomicU64,
    pub response_time_micros: AtomicU64,
    /// Cumulative only at rendering: here each bucket counts its own range; the last is +Inf.
    pub response_time_buckets: [AtomicU64; BUCKETS.len() + 1],
}

impl TgCounters {
    pub fn target_response(&self, status: u16, took: Duration) {
        self.target_responses[class(status)].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.response_time_buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.response_time_micros
            .fetch_add(micros, Ordering::Relaxed);
    }
}

/// One worker's counters, by load balancer and target group ARN.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    lbs: Mutex<HashMap<String, Arc<LbCounters>>>,
    tgs: Mutex<HashMap<String, Arc<TgCounters>>>,
}

impl WorkerMetrics {
    pub fn lb(&self, arn: &str) -> Arc<LbCounters> {
        self.lbs.lock().entry(arn.to_string()).or_default().clone()
    }

    pub fn tg(&self, arn: &str) -> Arc<TgCounters> {
        self.tgs.lock().entry(arn.to_string()).or_default().clone()
    }

    /// Forgets load balancers and target groups that no longer exist.
    pub fn retain(&self, state: &ElbState) {
        self.lbs.lock().retain(|arn, _| state.lb(arn).is_some());
        self.tgs
            .lock()
            .retain(|arn, _| state.target_groups.iter().any(|t| t.arn == *arn));
    }
}

/// Every worker's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    workers: Mutex<Vec<Arc<WorkerMetrics>>>,
}

impl Metrics {
    pub fn add_worker(&self) -> Arc<WorkerMetrics> {
        let w = Arc::new(WorkerMetrics::default());
        self.workers.lock().push(w.clone());
        w
    }

    /// The Prometheus text exposition (version 0.0.4) of every load balancer and target group
    /// in `state`.
    pub fn render(&self, state: &ElbState, board: &HealthBoard) -> String {
        let workers = self.workers.lock().clone();
        let sum_lb = |arn: &str, f: &dyn Fn(&LbCounters) -> i64| -> i64 {
            workers
                .iter()
                .filter_map(|w| w.lbs.lock().get(arn).cloned())
                .map(|c| f(&c))
                .sum()
        };
        let sum_tg = |arn: &str, f: &dyn Fn(&TgCounters) -> u64| -> u64 {
            workers
                .iter()
                .filter_map(|w| w.tgs.lock().get(arn).cloned())
                .map(|c| f(&c))
                .sum()
        };
        let load = |a: &AtomicU64| i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let mut out = Families::default();
        for lb in &state.load_balancers {
            let l = format!("load_balancer=\"{}\"", dimension(&lb.arn, "loadbalancer/"));
            out.add(
                "requests_total",
                "counter",
                "Requests received (CloudWatch RequestCount).",
                &l,
                sum_lb(&lb.arn, &|c| load(&c.requests)),
            );
            for (i, name) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                out.add(
                    "elb_responses_total",
                    "counter",
                    "Responses the load balancer made itself, by status class (HTTPCode_ELB_*_Count).",
                    &format!("{l},code=\"{name}\""),
                    sum_lb(&lb.arn, &|c| load(&c.elb_responses[i])),
                );
            }
            out.add(
                "new_connections_total",
                "counter",
                "Client connections accepted (NewConnectionCount).",
                &l,
                sum_lb(&lb.arn, &|c| load(&c.new_connections)),
            );
            out.add(
                "active_connections",
                "gauge",
                "Client connections open now (ActiveConnectionCount).",
                &l,
                sum_lb(&lb.arn, &|c| c.active_connections.load(Ordering::Relaxed)),
            );
            out.add(
                "processed_bytes_total",
                "counter",
                "Bytes received from and sent to clients (ProcessedBytes).",
                &l,
                sum_lb(&lb.arn, &|c| load(&c.processed_bytes)),
            );
            if lb.kind != "network" {
                continue;
            }
            out.add(
                "new_flows_udp_total",
                "counter",
                "UDP flows started (NewFlowCount_UDP).",
                &l,
                sum_lb(&lb.arn, &|c| load(&c.new_flows_udp)),
            );
            out.add(
                "active_flows_udp",
                "gauge",
                "UDP flows open now (ActiveFlowCount_UDP).",
                &l,
                sum_lb(&lb.arn, &|c| c.active_flows_udp.load(Ordering::Relaxed)),
            );
            out.add(
                "processed_bytes_udp_total",
                "counter",
                "UDP bytes received from and sent to clients (ProcessedBytes_UDP).",
                &l,
                sum_lb(&lb.arn, &|c| load(&c.processed_bytes_udp)),
            );
        }
        for tg in &state.target_groups {
            let mut l = format!("target_group=\"{}\"", dimension(&tg.arn, ":"));
            if let Some(lb) = state.lbs_of_tg(&tg.arn).first() {
                let _ = write!(l, ",load_balancer=\"{}\"", dimension(lb, "loadbalancer/"));
            }
            let as_i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            for (i, name) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                out.add(
                    "target_responses_total",
                    "counter",
                    "Responses from targets, by status class (HTTPCode_Target_*_Count).",
                    &format!("{l},code=\"{name}\""),
                    as_i(sum_tg(&tg.arn, &|c| {
                        c.target_responses[i].load(Ordering::Relaxed)
                    })),
                );
            }
            out.add(
                "target_connection_errors_total",
                "counter",
                "Requests for which no response came from the target (TargetConnectionErrorCount).",
                &l,
                as_i(sum_tg(&tg.arn, &|c| {
                    c.connection_errors.load(Ordering::Relaxed)
                })),
            );
            let (mut healthy, mut unhealthy) = (0, 0);
            for t in &tg.targets {
                match board.state(&tg.arn, &t.id, t.port) {
                    State::Healthy if t.draining_until.is_none() => healthy += 1,
                    State::Unhealthy if t.draining_until.is_none() => unhealthy += 1,
                    _ => {}
                }
            }
            out.add(
                "healthy_hosts",
                "gauge",
                "Targets considered healthy (HealthyHostCount).",
                &l,
                healthy,
            );
            out.add(
                "unhealthy_hosts",
                "gauge",
                "Targets considered unhealthy (UnHealthyHostCount).",
                &l,
                unhealthy,
            );
            let mut cumulative = 0;
            for (i, bound) in BUCKETS
                .iter()
                .map(|b| b.to_string())
                .chain(["+Inf".to_string()])
                .enumerate()
            {
                cumulative += sum_tg(&tg.arn, &|c| {
                    c.response_time_buckets[i].load(Ordering::Relaxed)
                });
                out.add_raw("target_response_time_seconds", "histogram", "Time from sending the request to the target until its response headers arrived (TargetResponseTime).", "_bucket", &format!("{l},le=\"{bound}\""), cumulative.to_string());
            }
            let micros = sum_tg(&tg.arn, &|c| c.response_time_micros.load(Ordering::Relaxed));
            out.add_raw(
                "target_response_time_seconds",
                "histogram",
                "",
                "_sum",
                &l,
                format!("{:.6}", micros as f64 / 1e6),
            );
            out.add_raw(
                "target_response_time_seconds",
                "histogram",
                "",
                "_count",
                &l,
                cumulative.to_string(),
            );
        }
        out.render()
    }
}

/// CloudWatch's dimension value: the ARN's part after `marker`.
fn dimension<'a>(arn: &'a str, marker: &str) -> &'a str {
    match marker {
        ":" => arn.rsplit(':').next().unwrap_or(arn),
        m => arn.split_once(m).map_or(arn, |(_, rest)| rest),
    }
}

/// Samples grouped by metric family, so each family's HELP and TYPE come once, before its
/// samples.
#[derive(Default)]
struct Families {
    order: Vec<String>,
    families: BTreeMap<String, (String, String, Vec<String>)>,
}

impl Families {
    fn add(&mut self, name: &str, kind: &str, help: &str, labels: &str, value: i64) {
        self.add_raw(name, kind, help, "", labels, value.to_string());
    }

    fn add_raw(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        suffix: &str,
        labels: &str,
        value: String,
    ) {
        let full = format!("fleetport_elb_{name}");
        if !self.families.contains_key(&full) {
            self.order.push(full.clone());
        }
        let f = self
            .families
            .entry(full.clone())
            .or_insert_with(|| (kind.to_string(), help.to_string(), Vec::new()));
        if f.1.is_empty() {
            f.1 = help.to_string();
        }
        f.2.push(format!("{full}{suffix}{{{labels}}} {value}"));
    }

    fn render(self) -> String {
        let mut out = String::new();
        for name in &self.order {
            if let Some((kind, help, samples)) = self.families.get(name) {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                for s in samples {
                    out.push_str(s);
                    out.push('\n');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_times_fall_in_their_buckets() {
        let c = TgCounters::default();
        c.target_response(200, Duration::from_micros(500));
        c.target_response(503, Duration::from_millis(30));
        c.target_response(204, Duration::from_secs(20));
        let b: Vec<u64> = c
            .response_time_buckets
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        assert_eq!(b, vec![1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(c.target_responses[1].load(Ordering::Relaxed), 2);
        assert_eq!(c.target_responses[4].load(Ordering::Relaxed), 1);
        assert_eq!(c.response_time_micros.load(Ordering::Relaxed), 20_030_500);
    }

    #[test]
    fn dimensions_are_cloudwatch_values() {
        let lb = "arn:aws:elasticloadbalancing:us-east-1:000000000000:loadbalancer/app/web/50dc6c495c0c9188";
        let tg = "arn:aws:elasticloadbalancing:us-east-1:000000000000:targetgroup/web-tg/73e2d6bc24d8a067";
        assert_eq!(dimension(lb, "loadbalancer/"), "app/web/50dc6c495c0c9188");
        assert_eq!(dimension(tg, ":"), "targetgroup/web-tg/73e2d6bc24d8a067");
    }
}
