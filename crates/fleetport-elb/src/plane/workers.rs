//! The proxy's threads: one single-threaded runtime per worker, each with its own pool of
//! connections to targets. Every listener port is bound once per worker with `SO_REUSEPORT`,
//! so the kernel spreads new connections over the workers and a connection stays on one core
//! for its whole life (no work stealing, no pool shared between cores).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

use crate::plane::health::HealthBoard;
use crate::plane::metrics::{Metrics, WorkerMetrics};
use crate::plane::proxy::{self, UpstreamClient};
use crate::plane::{Counters, Routes, compile};
use crate::state::ElbState;

/// Backlog of each listening socket: bursts of new connections wait here, not in SYN retries.
const BACKLOG: i32 = 1024;

/// A listening socket on 127.0.0.1 that other workers (and only sockets of this user that also
/// ask for it) can bind beside.
pub fn bind_shared(port: u16) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

struct Worker {
    handle: Handle,
    client: UpstreamClient,
    routes: watch::Sender<Arc<Routes>>,
    counters: Counters,
    metrics: Arc<WorkerMetrics>,
    /// Dropping it ends the worker's thread and everything running on it.
    _stop: oneshot::Sender<()>,
}

/// The worker threads; dropping this stops them.
pub struct Workers {
    workers: Vec<Worker>,
}

impl Workers {
    pub fn start(count: usize, metrics: &Metrics) -> std::io::Result<Self> {
        let mut workers = Vec::with_capacity(count.max(1));
        let shared = Counters::default();
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("elb-worker-{i}"))
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                })?;
            workers.push(Worker {
                handle,
                client: proxy::client(),
                routes: watch::Sender::new(Arc::new(Routes::default())),
                counters: shared.clone(),
                metrics: metrics.add_worker(),
                _stop: stop,
            });
        }
        Ok(Self { workers })
    }

    /// Gives every worker its own compiled copy of `state`.
    pub fn publish(&self, state: &ElbState, board: &HealthBoard) {
        for w in &self.workers {
            w.metrics.retain(state);
            w.routes
                .send_replace(Arc::new(compile(state, &w.counters, board, &w.metrics)));
        }
    }

    /// Serves `port` on every worker, the first one on `first` (the socket reserved when the
    /// listener was created). Aborting the returned handles closes the port; connections
    /// already accepted carry on.
    pub fn open(
        &self,
        first: std::net::TcpListener,
        port: u16,
        protocol: &str,
    ) -> std::io::Result<Vec<AbortHandle>> {
        let mut sockets = vec![first];
        for _ in 1..self.workers.len() {
            sockets.push(bind_shared(port)?);
        }
        let mut handles = Vec::with_capacity(sockets.len());
        for (worker, socket) in self.workers.iter().zip(sockets) {
            let routes = worker.routes.subscribe();
            let task = if protocol == "TCP" {
                worker.handle.spawn(proxy::serve_tcp(socket, port, routes))
            } else {
                let client = worker.client.clone();
                worker
                    .handle
                    .spawn(proxy::serve_http(socket, port, routes, client))
            };
            handles.push(task.abort_handle());
        }
        Ok(handles)
    }
}
