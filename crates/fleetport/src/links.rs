//! The links between services that must not depend on each other: load balancers resolve
//! `instance` targets to ECS container instances and serve ACM certificates, and ACM learns
//! which load balancers use a certificate.

use std::sync::Arc;

use fleetport_acm::{Acm, CertificateUsers};
use fleetport_ecs::Ecs;
use fleetport_elb::Elb;
use fleetport_elb::certificates::{CertificateSource, ServerCertificate};
use fleetport_elb::instances::{InstanceDirectory, InstanceState};
use tokio::sync::watch;

/// An EC2-style instance ID names an ECS container instance, reached on the private address
/// its agent registered with.
pub struct EcsInstances(pub Ecs);

impl InstanceDirectory for EcsInstances {
    fn lookup(&self, instance_id: &str) -> InstanceState {
        match self.0.instance_by_ec2_id(instance_id) {
            None => InstanceState::Unknown,
            Some(rec) => match rec.private_ip {
                Some(ip) if rec.status != "INACTIVE" => InstanceState::Running(ip),
                _ => InstanceState::Stopped,
            },
        }
    }
}

/// HTTPS and TLS listeners serve ACM certificates.
pub struct AcmCertificates(pub Acm);

impl CertificateSource for AcmCertificates {
    fn certificate(&self, arn: &str) -> Option<ServerCertificate> {
        self.0.material(arn).map(|m| ServerCertificate {
            key: m.key,
            names: m.names,
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// A certificate is in use while a load balancer's listener serves it.
pub struct ElbCertificateUsers(pub Elb);

impl CertificateUsers for ElbCertificateUsers {
    fn users(&self, certificate_arn: &str) -> Vec<String> {
        self.0.certificate_users(certificate_arn)
    }
}

/// ACM, and the load balancers wired to it and to ECS.
pub fn load_balancing(
    store: Arc<dyn fleetport_store::Store>,
    region: &str,
    account_id: &str,
    ecs: &Ecs,
    sealer: Arc<fleetport_store::seal::Sealer>,
) -> Result<(Acm, Elb), fleetport_store::StoreError> {
    let acm = Acm::new(store.clone(), region, account_id, sealer);
    let elb = Elb::open(
        store,
        region,
        account_id,
        Arc::new(EcsInstances(ecs.clone())),
        Arc::new(AcmCertificates(acm.clone())),
    )?;
    acm.set_users(Arc::new(ElbCertificateUsers(elb.clone())));
    Ok((acm, elb))
}
