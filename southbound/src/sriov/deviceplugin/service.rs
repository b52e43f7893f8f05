//! One pool's `DevicePlugin` service: its tokens as devices (`ListAndWatch`) and their handing
//! out to containers (`Allocate`), recorded in the state file before the kubelet hears yes.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::pb;
use super::Shared;
use crate::sriov::tokens;

pub(super) struct PoolPlugin {
    pub(super) pool: String,
    pub(super) shared: Arc<Shared>,
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<pb::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::device_plugin_server::DevicePlugin for PoolPlugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::DevicePluginOptions>, Status> {
        Ok(Response::new(pb::DevicePluginOptions::default()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let rx: watch::Receiver<Vec<pb::Device>> = self
            .shared
            .devices(&self.pool)
            .ok_or_else(|| Status::not_found(format!("pool {} is not served here", self.pool)))?;
        tracing::debug!(pool = %self.pool, "kubelet watches the devices");
        // The current list at once, then each change (a watch keeps only the newest: a slow
        // kubelet gets the latest list, never a backlog).
        let stream = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let devices = rx.borrow_and_update().clone();
            Some((Ok(pb::ListAndWatchResponse { devices }), (rx, false)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        _: Request<pb::PreferredAllocationRequest>,
    ) -> Result<Response<pb::PreferredAllocationResponse>, Status> {
        // Any token of a pool is as good as another: no preference is offered (the options say
        // so), and an empty answer is the kubelet's own choice.
        Ok(Response::new(pb::PreferredAllocationResponse::default()))
    }

    async fn allocate(
        &self,
        req: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        let req = req.into_inner();
        let mut responses = Vec::new();
        let mut all = Vec::new();
        for c in &req.container_requests {
            if c.devices_ids.len() > super::MAX_ALLOCATE {
                return Err(Status::invalid_argument(format!(
                    "{} devices in one container request; at most {}",
                    c.devices_ids.len(),
                    super::MAX_ALLOCATE
                )));
            }
            let (name, value) = tokens::env(&self.pool, &c.devices_ids);
            responses.push(pb::ContainerAllocateResponse {
                envs: [(name, value)].into_iter().collect(),
                ..Default::default()
            });
            all.extend(c.devices_ids.iter().cloned());
        }
        self.shared.allocate(&self.pool, &all).map_err(|e| {
            tracing::warn!(pool = %self.pool, error = %e, "allocation refused");
            match e {
                super::DevicePluginError::Token(t) => Status::invalid_argument(t.to_string()),
                other => Status::unavailable(other.to_string()),
            }
        })?;
        tracing::info!(pool = %self.pool, devices = ?all, "allocated to a container");
        Ok(Response::new(pb::AllocateResponse {
            container_responses: responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<pb::PreStartContainerRequest>,
    ) -> Result<Response<pb::PreStartContainerResponse>, Status> {
        Ok(Response::new(pb::PreStartContainerResponse::default()))
    }
}
