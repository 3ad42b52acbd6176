//! The rolling-deployment arithmetic of ECS's own controller, as a pure function: from a
//! service's desired count, its `minimumHealthyPercent`/`maximumPercent` and what the tasks of
//! each deployment are doing, how many tasks of the PRIMARY deployment to start and how many of
//! each deployment to stop in this round. The service scheduler (issue 15) calls it with what
//! it observes and applies the answer; nothing here reads the store or the clock.
//!
//! The bounds are ECS's: at most `floor(desired × max / 100)` tasks RUNNING or PENDING at once,
//! at least `ceil(desired × minHealthy / 100)` healthy. Tasks that are not healthy (pending,
//! starting, failing checks) never count toward the lower bound, so they may always be stopped
//! when they belong to an old deployment or are surplus.

/// What one deployment's tasks are doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tasks {
    /// RUNNING and healthy (in every target group, and by container health when defined).
    pub healthy: u32,
    /// PENDING, or RUNNING but not (yet) healthy.
    pub other: u32,
    /// Being stopped (draining, or waiting for their containers to exit): they still count
    /// toward the upper bound until STOPPED, and are not stopped again.
    pub stopping: u32,
}

impl Tasks {
    /// Tasks RUNNING or PENDING, stopping ones included.
    pub fn total(&self) -> u32 {
        self.healthy + self.other + self.stopping
    }

    fn live(&self) -> u32 {
        self.healthy + self.other
    }
}

/// A service at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub desired: u32,
    pub minimum_healthy_percent: u32,
    pub maximum_percent: u32,
    pub primary: Tasks,
    /// The older (ACTIVE) deployments, oldest first.
    pub old: Vec<Tasks>,
}

/// What to do this round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// New tasks of the PRIMARY deployment to start.
    pub start: u32,
    /// Tasks of the PRIMARY deployment to stop (it has more than desired), not-healthy first.
    pub stop_primary: Stop,
    /// Tasks to stop per older deployment (same order as `Observed::old`).
    pub stop_old: Vec<Stop>,
    /// The PRIMARY deployment has all its tasks healthy and nothing else is left.
    pub completed: bool,
    /// Nothing is in transition, yet the bounds allow neither a start nor a stop: ECS's
    /// "unable to stop or start tasks during a deployment because of the service deployment
    /// configuration" event.
    pub stuck: bool,
}

/// How many tasks to stop from one deployment, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stop {
    pub other: u32,
    pub healthy: u32,
}

impl Stop {
    pub fn total(&self) -> u32 {
        self.other + self.healthy
    }
}

/// At most this many tasks may be RUNNING or PENDING at once.
pub fn upper_bound(desired: u32, maximum_percent: u32) -> u32 {
    (u64::from(desired) * u64::from(maximum_percent) / 100) as u32
}

/// At least this many tasks must stay healthy.
pub fn lower_bound(desired: u32, minimum_healthy_percent: u32) -> u32 {
    (u64::from(desired) * u64::from(minimum_healthy_percent)).div_ceil(100) as u32
}

/// The round's step for `o`.
pub fn plan(o: &Observed) -> Step {
    let upper = upper_bound(o.desired, o.maximum_percent).max(o.desired.min(1));
    let lower = lower_bound(o.desired, o.minimum_healthy_percent).min(o.desired);
    let old_total: u32 = o.old.iter().map(Tasks::total).sum();
    // What counts toward the upper bound: every task until it is STOPPED, including those this
    // round decides to stop (they drain first), so a start never overlaps a stop's drain.
    let total = o.primary.total() + old_total;
    let healthy = o.primary.healthy + o.old.iter().map(|t| t.healthy).sum::<u32>();

    let mut step = Step {
        stop_old: vec![Stop::default(); o.old.len()],
        ..Step::default()
    };
    // Old deployments' tasks that are not healthy go first: they hold no one up.
    for (i, t) in o.old.iter().enumerate() {
        step.stop_old[i].other = t.other;
    }
    // Surplus PRIMARY tasks (a scale-in): not-healthy ones, then healthy ones down to desired.
    let surplus = o.primary.live().saturating_sub(o.desired);
    step.stop_primary.other = surplus.min(o.primary.other);
    step.stop_primary.healthy = surplus - step.stop_primary.other;
    // Healthy tasks of old deployments may go while the rest keeps the lower bound.
    let mut spare = (healthy - step.stop_primary.healthy).saturating_sub(lower);
    for (i, t) in o.old.iter().enumerate() {
        let n = t.healthy.min(spare);
        step.stop_old[i].healthy = n;
        spare -= n;
    }
    // Start PRIMARY tasks up to desired, within the upper bound.
    let primary_after = o.primary.live() - step.stop_primary.total();
    step.start = o
        .desired
        .saturating_sub(primary_after)
        .min(upper.saturating_sub(total));
    let stopping = step.stop_primary.total() + step.stop_old.iter().map(Stop::total).sum::<u32>();
    step.completed = old_total == 0
        && o.primary.healthy == o.desired
        && o.primary.other == 0
        && o.primary.stopping == 0;
    let in_transition =
        o.primary.other + o.primary.stopping > 0 || o.old.iter().any(|t| t.other + t.stopping > 0);
    step.stuck = !step.completed && step.start == 0 && stopping == 0 && !in_transition;
    step
}

/// The deployment circuit breaker's threshold for `desired` tasks with ECS's default
/// configuration (`BOUNDED_PERCENT` 50): half the desired count, rounded up, between 3 and 200.
pub fn circuit_breaker_threshold(desired: u32) -> u32 {
    desired.div_ceil(2).clamp(3, 200)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn svc(desired: u32, min: u32, max: u32, primary: Tasks, old: Vec<Tasks>) -> Observed {
        Observed {
            desired,
            minimum_healthy_percent: min,
            maximum_percent: max,
            primary,
            old,
        }
    }

    fn healthy(n: u32) -> Tasks {
        Tasks {
            healthy: n,
            ..Tasks::default()
        }
    }

    fn pending(n: u32) -> Tasks {
        Tasks {
            other: n,
            ..Tasks::default()
        }
    }

    #[test]
    fn bounds_follow_ecs_rounding() {
        assert_eq!(upper_bound(4, 200), 8);
        assert_eq!(upper_bound(3, 150), 4, "floor");
        assert_eq!(lower_bound(3, 50), 2, "ceil");
        assert_eq!(lower_bound(4, 100), 4);
        assert_eq!(circuit_breaker_threshold(1), 3);
        assert_eq!(circuit_breaker_threshold(9), 5);
        assert_eq!(circuit_breaker_threshold(1000), 200);
    }

    #[test]
    fn the_default_100_200_starts_all_new_tasks_then_stops_the_old() {
        let s = plan(&svc(4, 100, 200, Tasks::default(), vec![healthy(4)]));
        assert_eq!((s.start, s.stop_old[0].total()), (4, 0));
        // New tasks pending: nothing more to do, and that is not stuck.
        let s = plan(&svc(4, 100, 200, pending(4), vec![healthy(4)]));
        assert_eq!((s.start, s.stop_old[0].total(), s.stuck), (0, 0, false));
        let s = plan(&svc(4, 100, 200, healthy(4), vec![healthy(4)]));
        assert_eq!((s.start, s.stop_old[0].healthy), (0, 4));
        assert!(plan(&svc(4, 100, 200, healthy(4), vec![])).completed);
    }

    #[test]
    fn the_50_100_rollout_replaces_in_place() {
        let s = plan(&svc(4, 50, 100, Tasks::default(), vec![healthy(4)]));
        assert_eq!((s.start, s.stop_old[0].healthy), (0, 2));
        // Those two drain first: still counted, nothing starts.
        let draining = Tasks {
            healthy: 2,
            stopping: 2,
            ..Tasks::default()
        };
        let s = plan(&svc(4, 50, 100, Tasks::default(), vec![draining]));
        assert_eq!((s.start, s.stop_old[0].total(), s.stuck), (0, 0, false));
        let s = plan(&svc(4, 50, 100, Tasks::default(), vec![healthy(2)]));
        assert_eq!(s.start, 2);
    }

    #[test]
    fn bounds_that_allow_no_progress_are_reported() {
        let s = plan(&svc(4, 100, 100, Tasks::default(), vec![healthy(4)]));
        assert!(s.stuck && s.start == 0);
    }

    #[test]
    fn scale_in_stops_unhealthy_first() {
        let s = plan(&svc(
            2,
            100,
            200,
            Tasks {
                healthy: 2,
                other: 1,
                stopping: 0,
            },
            vec![],
        ));
        assert_eq!(
            s.stop_primary,
            Stop {
                other: 1,
                healthy: 0
            }
        );
        let s = plan(&svc(0, 100, 200, healthy(3), vec![]));
        assert_eq!(s.stop_primary.healthy, 3);
    }

    proptest! {
        /// Rounds where every started task turns healthy before the next: the rollout ends
        /// with exactly `desired` healthy new tasks, never exceeds the upper bound, and never
        /// goes below the lower bound, unless the bounds allow no progress (reported as stuck).
        #[test]
        fn a_rollout_converges_within_its_bounds(
            desired in 0u32..40,
            min in 0u32..=100,
            max in 100u32..=200,
            old in 0u32..40,
        ) {
            let upper = upper_bound(desired, max).max(desired.min(1));
            let lower = lower_bound(desired, min).min(desired);
            let mut o = svc(desired, min, max, Tasks::default(), vec![healthy(old)]);
            for _ in 0..200 {
                let s = plan(&o);
                if s.completed || s.stuck {
                    break;
                }
                let before_healthy = o.primary.healthy + o.old[0].healthy;
                // Stopped tasks drain (still counted) while the started ones come up.
                o.primary.healthy -= s.stop_primary.healthy;
                o.primary.other -= s.stop_primary.other;
                o.primary.stopping += s.stop_primary.total();
                o.old[0].healthy -= s.stop_old[0].healthy;
                o.old[0].other -= s.stop_old[0].other;
                o.old[0].stopping += s.stop_old[0].total();
                let after_stop = o.primary.healthy + o.old[0].healthy;
                // Stops never break the lower bound unless it was already broken.
                prop_assert!(after_stop >= lower.min(before_healthy));
                o.primary.other += s.start;
                prop_assert!(o.primary.total() + o.old[0].total() <= upper.max(old));
                // By the next round: the drained tasks are gone, the new ones healthy.
                o.primary.stopping = 0;
                o.old[0].stopping = 0;
                o.primary.healthy += o.primary.other;
                o.primary.other = 0;
            }
            let s = plan(&o);
            prop_assert!(s.completed || s.stuck, "{o:?}");
            if s.completed {
                prop_assert_eq!(o.primary.healthy, desired);
                prop_assert_eq!(o.old[0].total(), 0);
            } else {
                // Only bounds with no room either way get stuck.
                prop_assert!(upper <= desired && lower >= desired.min(old));
            }
        }
    }
}
