//! Lets the load balancers resolve `instance` targets: an EC2-style instance ID names an ECS
//! container instance, reached on the private address its agent registered with.

use fleetport_ecs::Ecs;
use fleetport_elb::instances::{InstanceDirectory, InstanceState};

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
