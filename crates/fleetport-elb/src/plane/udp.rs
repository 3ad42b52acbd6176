//! NLB UDP listeners (UDP and the UDP half of TCP_UDP): datagrams are relayed per flow. A flow
//! is one client address; its first datagram picks a target (healthy ones, or all when none
//! is, as for TCP), and the flow keeps that target and its own socket towards it, so the
//! target's replies go back to that client from the listener's port. A flow idle for 120 s
//! (AWS's UDP idle timeout) is forgotten, and so is one whose target was deregistered or turned
//! unhealthy when its group says so (checked every sweep).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::plane::Routes;
use crate::plane::metrics::LbCounters;
use crate::plane::proxy::source_key;

/// AWS closes UDP flows after 120 s without traffic.
const FLOW_IDLE: Duration = Duration::from_secs(120);

/// How often idle flows are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The largest datagram relayed (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

/// Flows one listener keeps at most; datagrams of further clients are dropped until some
/// flows go idle, so memory stays bounded.
const MAX_FLOWS: usize = 65_536;

struct Flow {
    towards_target: Arc<UdpSocket>,
    /// Sweeps since the flow last carried a datagram either way.
    idle_sweeps: Arc<AtomicU64>,
    replies: AbortHandle,
    counters: Arc<LbCounters>,
    /// The flow's target group and target, to end the flow when the target may no longer
    /// have it ([`Routes::cut`]).
    group: String,
    target: SocketAddr,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.replies.abort();
        self.counters
            .active_flows_udp
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Relays datagrams arriving on `socket` (the listener's port) until aborted.
pub async fn relay(socket: std::net::UdpSocket, port: u16, routes: watch::Receiver<Arc<Routes>>) {
    let socket = match UdpSocket::from_std(socket) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(port, error = %e, "cannot register the UDP listener with the runtime");
            return;
        }
    };
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let idle_limit = FLOW_IDLE.as_secs() / SWEEP_EVERY.as_secs();
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((n, client)) = received else {
                    continue;
                };
                if !flows.contains_key(&client) {
                    if flows.len() >= MAX_FLOWS {
                        continue;
                    }
                    match open_flow(&socket, client, port, &routes).await {
                        Some(flow) => {
                            flows.insert(client, flow);
                        }
                        // No listener or no target: the datagram is dropped, as on AWS.
                        None => continue,
                    }
                }
                if let Some(flow) = flows.get(&client) {
                    flow.idle_sweeps.store(0, Ordering::Relaxed);
                    match flow.towards_target.send(&buf[..n]).await {
                        Ok(_) => flow.counters.udp_bytes(n),
                        Err(e) => tracing::debug!(error = %e, "UDP datagram to the target failed"),
                    }
                }
            }
            _ = sweep.tick() => {
                let current = routes.borrow().clone();
                flows.retain(|_, f| {
                    f.idle_sweeps.fetch_add(1, Ordering::Relaxed) < idle_limit
                        && !current.cut(port, &f.group, f.target)
                });
            }
        }
    }
}

/// A flow's hash: its client's address and port (the other parts of AWS's 5-tuple are the
/// same for every flow of a listener), so the clients of one host spread over the targets.
fn flow_key(client: &SocketAddr) -> u64 {
    source_key(client).rotate_left(17)
        ^ u64::from(client.port()).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Picks the flow's target and starts relaying its replies back to `client`.
async fn open_flow(
    listener: &Arc<UdpSocket>,
    client: SocketAddr,
    port: u16,
    routes: &watch::Receiver<Arc<Routes>>,
) -> Option<Flow> {
    let (target, group, counters) = {
        let current = routes.borrow().clone();
        let l = current.ports.get(&port).and_then(|ls| ls.first())?;
        let (group, _) = l.forward()?.groups.iter().find(|(_, w)| *w > 0)?;
        let target = group.pick_by_key(flow_key(&client))?.addr;
        (target, group.arn.clone(), l.counters.clone())
    };
    let bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let towards_target = UdpSocket::bind(bind).await.ok()?;
    towards_target.connect(target).await.ok()?;
    let towards_target = Arc::new(towards_target);
    let idle_sweeps = Arc::new(AtomicU64::new(0));
    let replies = tokio::spawn(replies(
        towards_target.clone(),
        listener.clone(),
        client,
        idle_sweeps.clone(),
        counters.clone(),
    ))
    .abort_handle();
    counters.new_flows_udp.fetch_add(1, Ordering::Relaxed);
    counters.active_flows_udp.fetch_add(1, Ordering::Relaxed);
    Some(Flow {
        towards_target,
        idle_sweeps,
        replies,
        counters,
        group,
        target,
    })
}

thread_local! {
    // Replies are read on the worker's one thread, one at a time, into this buffer: a flow
    // costs no buffer of its own while it waits.
    static REPLY: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; MAX_DATAGRAM]);
}

/// Sends the target's datagrams back to the client from the listener's port.
async fn replies(
    from_target: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    idle_sweeps: Arc<AtomicU64>,
    counters: Arc<LbCounters>,
) {
    loop {
        if from_target.readable().await.is_err() {
            return;
        }
        // Anything but a datagram is spurious readiness or the ICMP error of a datagram the
        // target refused; the flow stays, as the target may come up.
        REPLY.with_borrow_mut(|buf| {
            if let Ok(n) = from_target.try_recv(buf) {
                idle_sweeps.store(0, Ordering::Relaxed);
                // UDP may drop: a full send buffer drops the reply instead of waiting.
                match listener.try_send_to(&buf[..n], client) {
                    Ok(_) => counters.udp_bytes(n),
                    Err(e) => tracing::debug!(error = %e, "UDP reply to the client dropped"),
                }
            }
        });
    }
}
