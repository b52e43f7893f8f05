//! The node's NSM endpoint: what a node agent serves to the workloads of its host (on upstream's
//! unix socket, and optionally TCP), the way upstream's per-node manager does.
//!
//! Every call goes on to the controller's agent listener with the node's token, after two
//! things only the node can do:
//! - it names the node: `nodeName` is added to a request's labels and to every service label
//!   set of an endpoint registration (a different `nodeName` is refused: this socket serves one
//!   node);
//! - it finds the client's namespace: a kernel mechanism's `inodeURL` parameter
//!   (`file:///proc/PID/ns/net`, a named namespace, or `inode://DEV/INO` as an unmodified
//!   upstream client sends it) becomes the client workload (the first path segment's name),
//!   through the resolver the agent is given.

use std::sync::Arc;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::pb::connection as c;
use super::pb::networkservice as ns;
use super::pb::registry as reg;
use super::Stream_;

/// Turns a client's `inodeURL` into the name of its namespace on this host.
pub type NetnsResolver = Arc<dyn Fn(&str) -> Result<String, Status> + Send + Sync>;

/// The NSM services of one node, forwarding to its controller.
#[derive(Clone)]
pub struct NodeForwarder {
    node: String,
    upstream: Channel,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    resolve: NetnsResolver,
}

impl NodeForwarder {
    /// `upstream`: the controller's agent listener; `token`: this node's token.
    pub fn new(
        node: &str,
        upstream: Channel,
        token: Option<&str>,
        resolve: NetnsResolver,
    ) -> Result<NodeForwarder, String> {
        let token = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "the node token is not valid metadata".to_string())
            })
            .transpose()?;
        Ok(NodeForwarder {
            node: node.to_string(),
            upstream,
            token,
            resolve,
        })
    }

    /// A server with the four services.
    pub fn router(&self) -> tonic::transport::server::Router {
        tonic::transport::Server::builder()
            .add_service(ns::network_service_server::NetworkServiceServer::new(
                self.clone(),
            ))
            .add_service(c::monitor_connection_server::MonitorConnectionServer::new(
                self.clone(),
            ))
            .add_service(
                reg::network_service_registry_server::NetworkServiceRegistryServer::new(
                    self.clone(),
                ),
            )
            .add_service(
                reg::network_service_endpoint_registry_server::NetworkServiceEndpointRegistryServer::new(
                    self.clone(),
                ),
            )
    }

    /// The onward request: `msg` with the node's token and the caller's deadline.
    fn onward<T>(&self, from: &Request<impl Sized>, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        if let Some(d) = from.metadata().get("grpc-timeout") {
            r.metadata_mut().insert("grpc-timeout", d.clone());
        }
        r
    }

    /// `labels` say this node (a different `nodeName` is refused).
    fn name_the_node(
        &self,
        labels: &mut std::collections::HashMap<String, String>,
        what: &str,
    ) -> Result<(), Status> {
        match labels.get("nodeName") {
            Some(n) if *n != self.node => Err(Status::invalid_argument(format!(
                "{what}.nodeName is {n:?}, but this socket is node {}'s",
                self.node
            ))),
            _ => {
                labels.insert("nodeName".into(), self.node.clone());
                Ok(())
            }
        }
    }

    /// A request as the controller takes it from this node.
    pub fn complete(
        &self,
        mut r: ns::NetworkServiceRequest,
    ) -> Result<ns::NetworkServiceRequest, Status> {
        let inode_url = r
            .mechanism_preferences
            .iter()
            .chain(r.connection.as_ref().and_then(|c| c.mechanism.as_ref()))
            .filter(|m| m.r#type.eq_ignore_ascii_case("KERNEL"))
            .find_map(|m| m.parameters.get("inodeURL").cloned())
            .filter(|u| !u.is_empty());
        let conn = r
            .connection
            .as_mut()
            .ok_or_else(|| Status::invalid_argument("connection: required"))?;
        self.name_the_node(&mut conn.labels, "connection.labels")?;
        let path = conn.path.get_or_insert_with(Default::default);
        let named = path
            .path_segments
            .first()
            .is_some_and(|s| !s.name.is_empty());
        if let (Some(url), false) = (inode_url, named) {
            let workload = (self.resolve)(&url)?;
            match path.path_segments.first_mut() {
                Some(s) => s.name = workload,
                None => path.path_segments.push(c::PathSegment {
                    name: workload,
                    ..Default::default()
                }),
            }
        }
        Ok(r)
    }

    fn networkservice(&self) -> ns::network_service_client::NetworkServiceClient<Channel> {
        ns::network_service_client::NetworkServiceClient::new(self.upstream.clone())
    }
}

/// What the client sees of its connection, as upstream's per-node manager shows it: its own
/// kernel interface (the name it got, the namespace it named), whatever tunnel carries it
/// onward between the nodes.
fn local_view(conn: &mut c::Connection, asked: c::Mechanism) {
    let Some(m) = conn.mechanism.as_mut() else {
        return;
    };
    if m.r#type.eq_ignore_ascii_case("KERNEL") {
        return;
    }
    let mut parameters = asked.parameters;
    if let Some(name) = m.parameters.get("name") {
        parameters.insert("name".into(), name.clone());
    }
    *m = c::Mechanism {
        cls: "LOCAL".into(),
        r#type: "KERNEL".into(),
        parameters,
    };
}

/// Maps an upstream stream of results into ours.
fn relay<T: Send + 'static>(s: tonic::Streaming<T>) -> Stream_<T> {
    Box::pin(futures::stream::unfold(s, |mut s| async move {
        match s.message().await {
            Ok(Some(m)) => Some((Ok(m), s)),
            Ok(None) => None,
            Err(e) => Some((Err(e), s)),
        }
    }))
}

#[tonic::async_trait]
impl ns::network_service_server::NetworkService for NodeForwarder {
    async fn request(
        &self,
        req: Request<ns::NetworkServiceRequest>,
    ) -> Result<Response<c::Connection>, Status> {
        let asked = req
            .get_ref()
            .mechanism_preferences
            .iter()
            .find(|m| m.r#type.eq_ignore_ascii_case("KERNEL"))
            .cloned();
        let r = self.complete(req.get_ref().clone())?;
        let out = self.onward(&req, r);
        let mut conn = self.networkservice().request(out).await?;
        if let Some(asked) = asked {
            local_view(conn.get_mut(), asked);
        }
        Ok(conn)
    }

    async fn close(&self, req: Request<c::Connection>) -> Result<Response<()>, Status> {
        let out = self.onward(&req, req.get_ref().clone());
        self.networkservice().close(out).await
    }
}

#[tonic::async_trait]
impl c::monitor_connection_server::MonitorConnection for NodeForwarder {
    type MonitorConnectionsStream = Stream_<c::ConnectionEvent>;

    async fn monitor_connections(
        &self,
        req: Request<c::MonitorScopeSelector>,
    ) -> Result<Response<Self::MonitorConnectionsStream>, Status> {
        let out = self.onward(&req, req.get_ref().clone());
        let s = c::monitor_connection_client::MonitorConnectionClient::new(self.upstream.clone())
            .monitor_connections(out)
            .await?
            .into_inner();
        Ok(Response::new(relay(s)))
    }
}

#[tonic::async_trait]
impl reg::network_service_registry_server::NetworkServiceRegistry for NodeForwarder {
    type FindStream = Stream_<reg::NetworkServiceResponse>;

    async fn register(
        &self,
        req: Request<reg::NetworkService>,
    ) -> Result<Response<reg::NetworkService>, Status> {
        let out = self.onward(&req, req.get_ref().clone());
        reg::network_service_registry_client::NetworkServiceRegistryClient::new(
            self.upstream.clone(),
        )
        .register(out)
        .await
    }

    async fn find(
        &self,
        req: Request<reg::NetworkServiceQuery>,
    ) -> Result<Response<Self::FindStream>, Status> {
        let out = self.onward(&req, req.get_ref().clone());
        let s = reg::network_service_registry_client::NetworkServiceRegistryClient::new(
            self.upstream.clone(),
        )
        .find(out)
        .await?
        .into_inner();
        Ok(Response::new(relay(s)))
    }

    async fn unregister(&self, req: Request<reg::NetworkService>) -> Result<Response<()>, Status> {
        let out = self.onward(&req, req.get_ref().clone());
        reg::network_service_registry_client::NetworkServiceRegistryClient::new(
            self.upstream.clone(),
        )
        .unregister(out)
        .await
    }
}

#[tonic::async_trait]
impl reg::network_service_endpoint_registry_server::NetworkServiceEndpointRegistry
    for NodeForwarder
{
    type FindStream = Stream_<reg::NetworkServiceEndpointResponse>;

    async fn register(
        &self,
        req: Request<reg::NetworkServiceEndpoint>,
    ) -> Result<Response<reg::NetworkServiceEndpoint>, Status> {
        let mut e = req.get_ref().clone();
        for name in e.network_service_names.clone() {
            let l = e.network_service_labels.entry(name).or_default();
            self.name_the_node(&mut l.labels, "network_service_labels")?;
        }
        let out = self.onward(&req, e);
        reg::network_service_endpoint_registry_client::NetworkServiceEndpointRegistryClient::new(
            self.upstream.clone(),
        )
        .register(out)
        .await
    }

    async fn find(
        &self,
        req: Request<reg::NetworkServiceEndpointQuery>,
    ) -> Result<Response<Self::FindStream>, Status> {
        let out = self.onward(&req, req.get_ref().clone());
        let s =
            reg::network_service_endpoint_registry_client::NetworkServiceEndpointRegistryClient::new(
                self.upstream.clone(),
            )
            .find(out)
            .await?
            .into_inner();
        Ok(Response::new(relay(s)))
    }

    async fn unregister(
        &self,
        req: Request<reg::NetworkServiceEndpoint>,
    ) -> Result<Response<()>, Status> {
        let out = self.onward(&req, req.get_ref().clone());
        reg::network_service_endpoint_registry_client::NetworkServiceEndpointRegistryClient::new(
            self.upstream.clone(),
        )
        .unregister(out)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd() -> NodeForwarder {
        let ch = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        NodeForwarder::new(
            "n1",
            ch,
            None,
            Arc::new(|u: &str| match u {
                "inode://4/4026532000" => Ok("clab-x-client".into()),
                other => Err(Status::not_found(format!("no namespace for {other}"))),
            }),
        )
        .unwrap()
    }

    fn req(labels: &[(&str, &str)], inode: Option<&str>) -> ns::NetworkServiceRequest {
        ns::NetworkServiceRequest {
            connection: Some(c::Connection {
                network_service: "s".into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            mechanism_preferences: vec![c::Mechanism {
                cls: "LOCAL".into(),
                r#type: "KERNEL".into(),
                parameters: inode
                    .map(|u| [("inodeURL".to_string(), u.to_string())].into())
                    .unwrap_or_default(),
            }],
        }
    }

    /// Input: requests as an unmodified upstream client sends them (no nodeName, its namespace
    /// as inodeURL), one naming another node, one with an unknown namespace.
    /// Output: the node is named, the namespace becomes the workload; the others are refused
    /// with the reason.
    #[tokio::test]
    async fn nb_the_node_names_itself_and_finds_the_clients_namespace() {
        let f = fwd();
        let r = f.complete(req(&[], Some("inode://4/4026532000"))).unwrap();
        let conn = r.connection.unwrap();
        assert_eq!(conn.labels["nodeName"], "n1");
        assert_eq!(conn.path.unwrap().path_segments[0].name, "clab-x-client");
        let e = f.complete(req(&[("nodeName", "n2")], None)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("node n1's"), "{}", e.message());
        let e = f.complete(req(&[], Some("inode://4/1"))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        // Without an inodeURL the workload is whatever the client named (or none).
        let r = f.complete(req(&[("app", "x")], None)).unwrap();
        assert_eq!(r.connection.unwrap().labels["nodeName"], "n1");
    }
}
