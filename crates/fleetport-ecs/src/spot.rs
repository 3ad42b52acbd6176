//! Beyond AWS, for resilience testing: interrupting a FARGATE_SPOT task on demand, as Fargate
//! Spot's two-minute warning does — its load balancer targets are deregistered first, then the
//! agent stops it (SIGTERM, SIGKILL after the containers' stopTimeout) with stopCode
//! `SpotInterruption`. A service's scheduler then replaces it like any stopped task.

use fleetport_proto::input;
use fleetport_store::{Abort, ReadTxnExt, WriteTxnExt};
use serde_json::{Value, json};

use crate::Ecs;
use crate::cluster::TASKS;
use crate::error::{EcsResult, invalid};
use crate::task::TaskRecord;

pub const REASON: &str = "Your Spot Task was interrupted.";

impl Ecs {
    pub async fn interrupt_spot(&self, input: Value) -> EcsResult<Value> {
        let cluster = crate::error::read(&*self.store, |txn| {
            self.active_cluster(txn, input::string(&input, "cluster"))
        })?;
        let id = input::owned(&input, "task");
        let key = format!("{}/{}", cluster.name, id.rsplit('/').next().unwrap_or(&id));
        let task = crate::error::read(&*self.store, |txn| {
            txn.get_json::<TaskRecord>(TASKS, &key)
                .map_err(crate::error::store)?
                .ok_or_else(|| invalid("The referenced task was not found."))
        })?;
        if task.capacity_provider_name.as_deref() != Some("FARGATE_SPOT") {
            return Err(invalid(
                "Only tasks placed on the FARGATE_SPOT capacity provider can be interrupted.",
            ));
        }
        if task.desired_status == "STOPPED" {
            return Err(invalid("The task is already stopping."));
        }
        // Traffic leaves before the signal, as on Fargate Spot.
        if !task.targets.is_empty() {
            self.lb.get().deregister(&task.targets).await?;
        }
        let now = crate::now();
        let task = crate::error::write(&*self.store, move |txn| {
            let Some(mut t) = txn.get_json::<TaskRecord>(TASKS, &key)? else {
                return Err(Abort::Domain(invalid("The referenced task was not found.")));
            };
            if t.request_stop("SpotInterruption", REASON.into(), now) {
                txn.put_json(TASKS, &key, &t)?;
            }
            Ok(t)
        })
        .await?;
        self.wake([task.host()]);
        self.nudge();
        Ok(
            json!({"taskArn": task.task_arn, "stopCode": task.stop_code, "stoppedReason": task.stopped_reason}),
        )
    }
}
