//! The links between services that must not depend on each other: load balancers resolve
//! `instance` targets to ECS container instances and serve ACM certificates, ACM learns which
//! load balancers use a certificate, and the ECS service scheduler registers its tasks with
//! target groups and follows their health.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleetport_acm::{Acm, CertificateUsers};
use fleetport_ecs::Ecs;
use fleetport_ecs::service::lb::{LoadBalancing, TargetGroupInfo, TargetHealth, TargetRef};
use fleetport_elb::Elb;
use fleetport_elb::certificates::{CertificateSource, ServerCertificate};
use fleetport_elb::instances::{InstanceDirectory, InstanceState};
use fleetport_proto::{AwsError, BoxFuture};
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

/// ECS checks that the task and execution roles a task definition names exist in IAM.
pub struct IamRoles(pub fleetport_iam::Iam);

impl fleetport_ecs::roles::RoleDirectory for IamRoles {
    fn exists(&self, role_arn: &str) -> bool {
        self.0.role_exists(role_arn)
    }

    fn ensure_service_linked_role<'a>(
        &'a self,
        account: &'a str,
    ) -> BoxFuture<'a, Result<(), AwsError>> {
        Box::pin(
            self.0
                .ensure_service_linked_role(account, "ecs.amazonaws.com"),
        )
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

/// ECS services register their tasks' targets and read their health through ELB's API.
pub struct ElbTargets(pub Elb);

impl LoadBalancing for ElbTargets {
    fn target_group(&self, arn: &str) -> Option<TargetGroupInfo> {
        self.0.target_group_summary(arn).map(
            |(target_type, has_load_balancer, deregistration_delay)| TargetGroupInfo {
                target_type,
                has_load_balancer,
                deregistration_delay,
            },
        )
    }

    fn register<'a>(&'a self, targets: &'a [TargetRef]) -> BoxFuture<'a, Result<(), AwsError>> {
        Box::pin(async move {
            for (tg, list) in by_group(targets) {
                self.0.register(&tg, &list).await?;
            }
            Ok(())
        })
    }

    fn deregister<'a>(&'a self, targets: &'a [TargetRef]) -> BoxFuture<'a, Result<(), AwsError>> {
        Box::pin(async move {
            for (tg, list) in by_group(targets) {
                match self.0.deregister(&tg, &list).await {
                    // A deleted target group has nothing left to drain.
                    Err(e) if e.code == "TargetGroupNotFound" => {}
                    r => r?,
                }
            }
            Ok(())
        })
    }

    fn health(&self, t: &TargetRef) -> TargetHealth {
        let Some(h) = self.0.target_health(&t.target_group, &t.id, t.port) else {
            return TargetHealth::NotRegistered;
        };
        let text = |k: &str| h.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        match h.get("State").and_then(|v| v.as_str()).unwrap_or("") {
            "healthy" => TargetHealth::Healthy,
            "initial" => TargetHealth::Initial,
            "unhealthy" => TargetHealth::Unhealthy {
                reason: text("Reason"),
                description: text("Description"),
            },
            "draining" => TargetHealth::Draining,
            _ if text("Reason") == "Target.NotRegistered" => TargetHealth::NotRegistered,
            _ => TargetHealth::Unused,
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.0.health_changes()
    }
}

fn by_group(targets: &[TargetRef]) -> BTreeMap<String, Vec<(String, u16)>> {
    let mut out: BTreeMap<String, Vec<(String, u16)>> = BTreeMap::new();
    for t in targets {
        out.entry(t.target_group.clone())
            .or_default()
            .push((t.id.clone(), t.port));
    }
    out
}

/// ACM, and the load balancers wired to it and to ECS.
pub fn load_balancing(
    store: Arc<dyn fleetport_store::Store>,
    region: &str,
    account_id: &str,
    ecs: &Ecs,
    sealer: Arc<fleetport_store::seal::Sealer>,
    shared: &fleetport_elb::plane::fleet::Shared,
) -> Result<(Acm, Elb), fleetport_store::StoreError> {
    let acm = Acm::new(store.clone(), region, account_id, sealer);
    let elb = Elb::open(
        store,
        region,
        account_id,
        Arc::new(EcsInstances(ecs.clone())),
        Arc::new(AcmCertificates(acm.clone())),
        shared,
    )?;
    acm.set_users(Arc::new(ElbCertificateUsers(elb.clone())));
    ecs.set_load_balancing(Arc::new(ElbTargets(elb.clone())));
    Ok((acm, elb))
}
