//! The Docker Engine implementation of [`Runtime`], over bollard (negotiated API version).

use std::collections::HashMap;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, HealthConfig, HealthStatusEnum, HostConfig, HostConfigLogConfig,
    PortBinding, ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use crate::{
    Binding, ContainerSpec, ContainerState, Credentials, ImagePlatform, NetworkMode, Runtime,
    RuntimeError,
};

/// Docker through its local socket (`DOCKER_HOST` respected).
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
}

fn engine(e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::NotFound(message),
        BollardError::DockerResponseServerError { message, .. } => RuntimeError::Engine(message),
        other => RuntimeError::Engine(other.to_string()),
    }
}

const NANOS: i64 = 1_000_000_000;
const MIB: i64 = 1024 * 1024;

impl DockerRuntime {
    pub async fn connect() -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(engine)?
            .negotiate_version()
            .await
            .map_err(engine)?;
        Ok(Self { docker })
    }

    fn body(spec: &ContainerSpec) -> ContainerCreateBody {
        let mut exposed = Vec::new();
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for p in &spec.ports {
            let key = format!("{}/{}", p.container_port, p.protocol);
            exposed.push(key.clone());
            bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: Some(p.host_ip.clone()),
                    host_port: Some(if p.host_port == 0 {
                        String::new()
                    } else {
                        p.host_port.to_string()
                    }),
                });
        }
        let network_mode = spec.network.as_ref().map(|n| match n {
            NetworkMode::Bridge => "bridge".to_string(),
            NetworkMode::Host => "host".to_string(),
            NetworkMode::None => "none".to_string(),
            NetworkMode::Container(id) => format!("container:{id}"),
        });
        let host_config = HostConfig {
            cpu_shares: spec.cpu_shares,
            memory: spec.memory_mib.map(|m| m * MIB),
            memory_reservation: spec.memory_reservation_mib.map(|m| m * MIB),
            ulimits: (!spec.ulimits.is_empty()).then(|| {
                spec.ulimits
                    .iter()
                    .map(|u| ResourcesUlimits {
                        name: Some(u.name.clone()),
                        soft: Some(u.soft),
                        hard: Some(u.hard),
                    })
                    .collect()
            }),
            network_mode,
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            log_config: spec.log_driver.as_ref().map(|d| HostConfigLogConfig {
                typ: Some(d.clone()),
                config: Some(
                    spec.log_options
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
            }),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.command.clone(),
            entrypoint: spec.entry_point.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: spec.working_dir.clone(),
            user: spec.user.clone(),
            hostname: spec.hostname.clone(),
            stop_timeout: spec.stop_timeout_secs,
            labels: Some(
                spec.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            healthcheck: spec.health_check.as_ref().map(|h| HealthConfig {
                test: Some(h.test.clone()),
                interval: Some(h.interval_secs * NANOS),
                timeout: Some(h.timeout_secs * NANOS),
                retries: Some(h.retries),
                start_period: (h.start_period_secs > 0).then_some(h.start_period_secs * NANOS),
                ..Default::default()
            }),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}

impl Runtime for DockerRuntime {
    fn pull<'a>(
        &'a self,
        image: &'a str,
        credentials: Option<Credentials>,
    ) -> BoxFuture<'a, Result<ImagePlatform, RuntimeError>> {
        Box::pin(async move {
            let creds = credentials.map(|c| DockerCredentials {
                username: Some(c.username),
                password: Some(c.password),
                serveraddress: Some(c.server),
                ..Default::default()
            });
            let opts = CreateImageOptions {
                from_image: Some(image.to_string()),
                ..Default::default()
            };
            let mut stream = self.docker.create_image(Some(opts), None, creds);
            while let Some(item) = stream.next().await {
                item.map_err(engine)?;
            }
            let inspected = self.docker.inspect_image(image).await.map_err(engine)?;
            Ok(ImagePlatform {
                os: inspected.os.unwrap_or_default(),
                architecture: inspected.architecture.unwrap_or_default(),
            })
        })
    }

    fn create<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<String, RuntimeError>> {
        Box::pin(async move {
            let opts = CreateContainerOptions {
                name: Some(spec.name.clone()),
                ..Default::default()
            };
            let created = self
                .docker
                .create_container(Some(opts), Self::body(spec))
                .await
                .map_err(engine)?;
            Ok(created.id)
        })
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.docker
                .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
                .await
                .map_err(engine)
        })
    }

    fn stop<'a>(
        &'a self,
        id: &'a str,
        timeout_secs: i64,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let opts = StopContainerOptions {
                t: Some(i32::try_from(timeout_secs).unwrap_or(i32::MAX)),
                ..Default::default()
            };
            match self.docker.stop_container(id, Some(opts)).await {
                // 304: already stopped.
                Ok(()) => Ok(()),
                Err(BollardError::DockerResponseServerError {
                    status_code: 304, ..
                }) => Ok(()),
                Err(e) => Err(engine(e)),
            }
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let opts = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            match self.docker.remove_container(id, Some(opts)).await {
                Ok(()) => Ok(()),
                Err(e) => match engine(e) {
                    RuntimeError::NotFound(_) => Ok(()),
                    other => Err(other),
                },
            }
        })
    }

    fn inspect<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ContainerState, RuntimeError>> {
        Box::pin(async move {
            let c = self
                .docker
                .inspect_container(
                    id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
                .map_err(engine)?;
            let state = c.state.unwrap_or_default();
            let running = state.running.unwrap_or(false);
            let exited = matches!(
                state.status,
                Some(
                    bollard::models::ContainerStateStatusEnum::EXITED
                        | bollard::models::ContainerStateStatusEnum::DEAD
                )
            );
            let mut bindings = Vec::new();
            let settings = c.network_settings.unwrap_or_default();
            for (key, list) in settings.ports.unwrap_or_default() {
                let (port, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
                let Ok(container_port) = port.parse::<u16>() else {
                    continue;
                };
                for b in list.unwrap_or_default() {
                    let Some(host_port) = b.host_port.as_deref().and_then(|p| p.parse().ok())
                    else {
                        continue;
                    };
                    bindings.push(Binding {
                        container_port,
                        host_port,
                        protocol: proto.to_string(),
                        host_ip: b.host_ip.unwrap_or_default(),
                    });
                }
            }
            bindings.sort_by_key(|b| (b.container_port, b.host_port));
            let ip_address = settings
                .networks
                .unwrap_or_default()
                .values()
                .find_map(|n| n.ip_address.clone().filter(|ip| !ip.is_empty()))
                .unwrap_or_default();
            let health = match state.health.and_then(|h| h.status) {
                Some(HealthStatusEnum::HEALTHY) => "healthy",
                Some(HealthStatusEnum::UNHEALTHY) => "unhealthy",
                Some(HealthStatusEnum::STARTING) => "starting",
                _ => "",
            };
            Ok(ContainerState {
                id: c.id.unwrap_or_default(),
                name: c
                    .name
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                running,
                exit_code: if exited { state.exit_code } else { None },
                oom_killed: state.oom_killed.unwrap_or(false),
                error: state.error.unwrap_or_default(),
                health: health.to_string(),
                started_at: state.started_at.unwrap_or_default(),
                finished_at: state.finished_at.unwrap_or_default(),
                bindings,
                labels: c
                    .config
                    .and_then(|cfg| cfg.labels)
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                ip_address,
            })
        })
    }

    fn list<'a>(
        &'a self,
        label: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ContainerState>, RuntimeError>> {
        Box::pin(async move {
            let mut filters = HashMap::new();
            // An empty value matches every container that has the label at all.
            let filter = if value.is_empty() {
                label.to_string()
            } else {
                format!("{label}={value}")
            };
            filters.insert("label".to_string(), vec![filter]);
            let opts = ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            };
            let found = self
                .docker
                .list_containers(Some(opts))
                .await
                .map_err(engine)?;
            let mut out = Vec::new();
            for c in found {
                let Some(id) = c.id else { continue };
                match self.inspect(&id).await {
                    Ok(s) => out.push(s),
                    Err(RuntimeError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
    }

    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<i64, RuntimeError>> {
        Box::pin(async move {
            let mut stream = self.docker.wait_container(id, None::<WaitContainerOptions>);
            match stream.next().await {
                Some(Ok(r)) => Ok(r.status_code),
                // bollard reports a non-zero exit as an error carrying the code.
                Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
                Some(Err(e)) => Err(engine(e)),
                None => self
                    .inspect(id)
                    .await
                    .map(|s| s.exit_code.unwrap_or_default()),
            }
        })
    }

    fn logs<'a>(&'a self, id: &'a str, tail: usize) -> BoxFuture<'a, Result<String, RuntimeError>> {
        Box::pin(async move {
            let opts = LogsOptions {
                stdout: true,
                stderr: true,
                tail: tail.to_string(),
                ..Default::default()
            };
            let mut stream = self.docker.logs(id, Some(opts));
            let mut out = String::new();
            while let Some(item) = stream.next().await {
                out.push_str(&item.map_err(engine)?.to_string());
            }
            Ok(out)
        })
    }

    fn ensure_imported<'a>(
        &'a self,
        reference: &'a str,
        tar: Vec<u8>,
        changes: Vec<String>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            if self.docker.inspect_image(reference).await.is_ok() {
                return Ok(());
            }
            let (repo, tag) = reference.rsplit_once(':').unwrap_or((reference, "latest"));
            let opts = CreateImageOptions {
                from_src: Some("-".into()),
                repo: Some(repo.into()),
                tag: Some(tag.into()),
                changes,
                ..Default::default()
            };
            let mut stream =
                self.docker
                    .create_image(Some(opts), Some(bollard::body_full(tar.into())), None);
            while let Some(item) = stream.next().await {
                item.map_err(engine)?;
            }
            Ok(())
        })
    }

    fn version(&self) -> BoxFuture<'_, Result<String, RuntimeError>> {
        Box::pin(async move {
            let v = self.docker.version().await.map_err(engine)?;
            Ok(v.version.unwrap_or_default())
        })
    }
}
