//! The proxy's threads: one single-threaded runtime per worker, each with its own pool of
//! connections to targets. Each listener port has one accept loop that hands connections to the
//! workers in turn; a connection then stays on its worker for its whole life (no work stealing,
//! no pool shared between cores).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::AbortHandle;

use crate::plane::health::HealthBoard;
use crate::plane::metrics::{Metrics, WorkerMetrics};
use crate::plane::proxy::{self, Kind, Lane};
use crate::plane::sched;
use crate::plane::sticky::CookieKey;
use crate::plane::tls::TlsConfigs;
use crate::plane::udp;
use crate::plane::upstream::{SWEEP_EVERY, Upstream};
use crate::plane::{Counters, PlaneOptions, Routes, compile};
use crate::state::ElbState;

/// Backlog of each listening socket: bursts of new connections wait here, not in SYN retries.
const BACKLOG: i32 = 1024;

/// A listening socket on 127.0.0.1. `SO_REUSEPORT` lets a listener deleted and created again
/// bind its port while the old socket is still closing.
pub fn bind_shared(port: u16) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// A UDP socket on 127.0.0.1 for a UDP or TCP_UDP listener; `SO_REUSEPORT` as for TCP, so a
/// listener created again can bind while the old socket is still closing.
pub fn bind_udp(port: u16) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())?;
    Ok(socket.into())
}

struct Worker {
    handle: Handle,
    upstream: Arc<Upstream>,
    routes: watch::Sender<Arc<Routes>>,
    metrics: Arc<WorkerMetrics>,
    /// Dropping it ends the worker's thread and everything running on it.
    _stop: oneshot::Sender<()>,
}

/// The worker threads; dropping this stops them.
pub struct Workers {
    workers: Vec<Worker>,
    /// Shared by every worker's compiled routes.
    counters: Counters,
    /// Client connections open over every port, at most: past it, new clients wait in the
    /// backlog, so descriptors stay for the rest of Fleetport.
    slots: Arc<Semaphore>,
    cookie_key: CookieKey,
}

impl Workers {
    pub fn start(options: PlaneOptions, metrics: &Metrics) -> std::io::Result<Self> {
        let PlaneOptions {
            workers: count,
            scheduling,
            max_connections,
            cookie_key,
        } = options;
        let mut workers = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("elb-worker-{i}"))
                .spawn(move || {
                    sched::apply(scheduling);
                    let _ = runtime.block_on(stopped);
                })?;
            let upstream = Upstream::new();
            handle.spawn(sweep(upstream.clone()));
            workers.push(Worker {
                handle,
                upstream,
                routes: watch::Sender::new(Arc::new(Routes::default())),
                metrics: metrics.add_worker(),
                _stop: stop,
            });
        }
        Ok(Self {
            workers,
            counters: Counters::default(),
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            cookie_key,
        })
    }

    /// Gives every worker its own compiled copy of `state`, with the TLS configurations.
    pub fn publish(&self, state: &ElbState, board: &HealthBoard, tls: &TlsConfigs) {
        for w in &self.workers {
            w.metrics.retain(state);
            let mut routes = compile(state, &self.counters, board, &w.metrics, &self.cookie_key);
            routes.tls = tls.clone();
            w.routes.send_replace(Arc::new(routes));
        }
        self.counters.prune();
    }

    /// Relays the UDP datagrams of `port` on a worker chosen by the port.
    pub fn open_udp(&self, socket: std::net::UdpSocket, port: u16) -> AbortHandle {
        let w = &self.workers[usize::from(port) % self.workers.len()];
        w.handle
            .spawn(udp::relay(socket, port, w.routes.subscribe()))
            .abort_handle()
    }

    /// Serves `port` from `socket` (the one reserved when the listener was created): one
    /// accept loop, on a worker chosen by the port, hands connections to every worker in turn.
    /// Aborting the returned handle closes the port; connections already accepted carry on.
    pub fn open(&self, socket: std::net::TcpListener, port: u16, protocol: &str) -> AbortHandle {
        let lanes: Vec<Lane> = self
            .workers
            .iter()
            .map(|w| Lane {
                handle: w.handle.clone(),
                routes: w.routes.subscribe(),
                upstream: w.upstream.clone(),
            })
            .collect();
        let acceptor = &self.workers[usize::from(port) % self.workers.len()];
        acceptor
            .handle
            .spawn(proxy::accept(
                socket,
                port,
                Kind::of(protocol),
                lanes,
                self.slots.clone(),
            ))
            .abort_handle()
    }
}

/// Closes a worker's idle target connections as they expire.
async fn sweep(upstream: Arc<Upstream>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        upstream.sweep();
    }
}
