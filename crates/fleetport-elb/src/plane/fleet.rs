//! One data plane for the load balancers of every account and region. Each tenant has its own
//! [`Elb`] (its own configuration, API and store documents), but listener ports belong to the
//! host: two tenants' ALBs on port 80 share it and are told apart by host name, as two ALBs of
//! one tenant are. So the plane serves the union of all tenants' configurations ([`Fleet`]),
//! and the parts a port, a health check or a counter needs ([`Shared`]) are shared by all.
//! ARNs carry their account and region, so the union never confuses two tenants' resources.

use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::{Notify, watch};

use crate::Elb;
use crate::certificates::{CertificateSource, ServerCertificate};
use crate::plane::health::HealthBoard;
use crate::plane::metrics::Metrics;
use crate::plane::{PlaneOptions, Ports};
use crate::state::ElbState;

/// What every tenant's ELB shares with the data plane.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    pub health: Arc<HealthBoard>,
    pub ports: Arc<Ports>,
    pub metrics: Arc<Metrics>,
    /// Every tenant's current configuration, so a listener's port is checked against the
    /// listeners of all tenants (the host has one port 80).
    configs: Arc<RwLock<Vec<watch::Receiver<Arc<ElbState>>>>>,
}

impl Shared {
    /// Adds a tenant's configuration; returns its place, to leave it out of
    /// [`Shared::others_on_port`].
    pub(crate) fn join(&self, config: watch::Receiver<Arc<ElbState>>) -> usize {
        let mut all = self.configs.write();
        all.push(config);
        all.len() - 1
    }

    /// The listeners of the other tenants on `port`: `(protocol, load balancer ARN)`.
    pub(crate) fn others_on_port(&self, me: usize, port: u16) -> Vec<(String, String)> {
        let all = self.configs.read();
        all.iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .flat_map(|(_, c)| {
                let s = c.borrow().clone();
                s.listeners
                    .iter()
                    .filter(|l| l.port == port)
                    .map(|l| (l.protocol.clone(), l.load_balancer_arn.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// The ELBs the data plane serves, one per tenant, added as tenants appear.
#[derive(Clone)]
pub struct Fleet {
    elbs: Arc<RwLock<Vec<Elb>>>,
    added: watch::Sender<usize>,
    shared: Shared,
}

impl Fleet {
    pub fn new(shared: Shared) -> Self {
        Self {
            elbs: Arc::default(),
            added: watch::Sender::new(0),
            shared,
        }
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Serves `elb`'s load balancers too, from now on.
    pub fn add(&self, elb: Elb) {
        let n = {
            let mut elbs = self.elbs.write();
            elbs.push(elb);
            elbs.len()
        };
        self.added.send_replace(n);
    }

    /// Every tenant's configuration as one (the configuration itself when there is one tenant).
    pub fn merged(&self) -> Arc<ElbState> {
        let elbs = self.elbs.read().clone();
        merge(&elbs)
    }

    /// Every load balancer's and target group's counters in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.shared
            .metrics
            .render(&self.merged(), &self.shared.health)
    }

    /// Runs the data plane over every tenant's configuration until aborted.
    pub async fn run(self, options: PlaneOptions) {
        let (merged_tx, merged_rx) = watch::channel(self.merged());
        let (cert_tx, cert_rx) = watch::channel(0u64);
        let certificates = Arc::new(AllCertificates {
            fleet: self.clone(),
            changes: cert_rx,
        });
        let plane = AbortOnDrop(tokio::spawn(super::run(
            merged_rx,
            certificates,
            self.shared.health.clone(),
            self.shared.ports.clone(),
            options,
            self.shared.metrics.clone(),
        )));
        let changed = Arc::new(Notify::new());
        let mut followers: Vec<AbortOnDrop> = Vec::new();
        let mut added = self.added.subscribe();
        loop {
            let elbs = self.elbs.read().clone();
            for elb in &elbs[followers.len().min(elbs.len())..] {
                followers.push(AbortOnDrop(tokio::spawn(follow(
                    elb.subscribe(),
                    elb.certificates().changes(),
                    changed.clone(),
                    cert_tx.clone(),
                ))));
            }
            merged_tx.send_replace(merge(&elbs));
            tokio::select! {
                () = changed.notified() => {}
                r = added.changed() => if r.is_err() { break; },
            }
        }
        drop(plane);
    }
}

fn merge(elbs: &[Elb]) -> Arc<ElbState> {
    match elbs {
        [] => Arc::new(ElbState::default()),
        [one] => one.snapshot(),
        many => {
            let mut all = ElbState::default();
            for elb in many {
                let s = elb.snapshot();
                all.load_balancers.extend(s.load_balancers.iter().cloned());
                all.target_groups.extend(s.target_groups.iter().cloned());
                all.listeners.extend(s.listeners.iter().cloned());
                all.rules.extend(s.rules.iter().cloned());
                all.tags
                    .extend(s.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            Arc::new(all)
        }
    }
}

/// Wakes the merger when one tenant's configuration changes, and passes its certificate
/// source's change signal on to the plane.
async fn follow(
    mut state: watch::Receiver<Arc<ElbState>>,
    mut certificates: watch::Receiver<u64>,
    changed: Arc<Notify>,
    certificate_changes: watch::Sender<u64>,
) {
    let mut certificates_follow = true;
    loop {
        tokio::select! {
            r = state.changed() => {
                if r.is_err() {
                    return;
                }
                changed.notify_one();
            }
            r = certificates.changed(), if certificates_follow => {
                certificates_follow = r.is_ok();
                certificate_changes.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
}

/// Certificates of every tenant: an ARN names its account and region, so only its own
/// tenant's source knows it.
struct AllCertificates {
    fleet: Fleet,
    changes: watch::Receiver<u64>,
}

impl CertificateSource for AllCertificates {
    fn certificate(&self, arn: &str) -> Option<ServerCertificate> {
        let elbs = self.fleet.elbs.read().clone();
        elbs.iter()
            .find_map(|e| e.inner.certificates.certificate(arn))
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

/// Aborts the task when dropped, so the plane and the followers end with [`Fleet::run`].
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
