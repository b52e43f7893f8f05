//! Who may change what: roles follow the object, not the route that carries it.
//!
//! The route gate in [`crate::auth`] decides by method and path (reads need `viewer`, writes
//! `operator`); this module then decides per object, the same way for every door (manifests,
//! the collections, registry objects, the gRPC registry, custom resources):
//! - **admin objects**: a `Device`, a `NetworkServiceEndpoint` located on a device (its eNSM
//!   is then called with the device's credential), and a `Node` with an OVSDB remote (the
//!   controller connects there and transacts as root's controller). These need `admin`, or a
//!   caller bound to that very device (a remote eNSM writing its own objects).
//! - everything else needs `operator`.
//! - a caller bound to a device (an eNSM's token, `device:` in the token file) may write only
//!   that device's objects and set only its endpoints' status. It may not request or close
//!   connections: the controller composes service chains itself, so an eNSM never needs to.
//! - a caller bound to a node (a node agent forwarding its workloads' NSM calls with its node
//!   token) may request and close only connections of clients on that node, and write only
//!   endpoints located on that node: a node speaks for what runs on it, nothing else.

use meshwire_controller::{Controller, ControllerError};
use meshwire_models::{Connection, ConnectionRequest, EndpointLocation, Object, ObjectKey};

use crate::auth::Role;

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (for logs and messages), never its secret.
    pub name: String,
    pub role: Role,
    /// Set for an eNSM's credential: the one device it speaks for.
    pub device: Option<String>,
    /// Set for a node agent's credential: the one node it speaks for.
    pub node: Option<String>,
}

impl Caller {
    /// An API without a token table (loopback only): everything is allowed.
    pub fn open() -> Caller {
        Caller {
            name: "(open API)".into(),
            role: Role::Admin,
            device: None,
            node: None,
        }
    }

    /// Custom resources of the cluster: Kubernetes' own RBAC decided who wrote them, and they
    /// may hold operator objects only.
    pub fn kubernetes() -> Caller {
        Caller {
            name: "kubernetes".into(),
            role: Role::Operator,
            device: None,
            node: None,
        }
    }

    /// A node agent forwarding the NSM calls of its node's workloads.
    pub fn node(node: &str) -> Caller {
        Caller {
            name: format!("the agent of node {node}"),
            role: Role::Operator,
            device: None,
            node: Some(node.to_string()),
        }
    }

    /// Why a node-bound caller may not write `obj` (`None`: it may, or it is not node-bound).
    fn node_refusal(&self, obj: &Object) -> Option<String> {
        let mine = self.node.as_deref()?;
        match obj {
            Object::NetworkServiceEndpoint(e) => match &e.location {
                EndpointLocation::Node { node, .. } if node == mine => None,
                _ => Some(format!(
                    "{} may register endpoints on node {mine} only, not {}",
                    self.name,
                    obj.key()
                )),
            },
            _ => Some(format!(
                "{} may register endpoints on its node only, not {}",
                self.name,
                obj.key()
            )),
        }
    }

    fn refuse(&self, what: String) -> ControllerError {
        tracing::warn!(caller = %self.name, role = %self.role, device = ?self.device, %what, "refused by policy");
        ControllerError::Forbidden(what)
    }

    fn bound_elsewhere(&self, device: Option<&str>) -> bool {
        self.device
            .as_deref()
            .is_some_and(|mine| Some(mine) != device)
    }

    /// Whether this caller may create or replace `obj`.
    pub fn may_write(&self, obj: &Object) -> Result<(), ControllerError> {
        if let Some(why) = self.node_refusal(obj) {
            return Err(self.refuse(why));
        }
        let key = obj.key();
        let device = device_of(obj);
        if self.bound_elsewhere(device.as_deref()) || (self.device.is_some() && device.is_none()) {
            return Err(self.refuse(format!(
                "token {} speaks for device {} only; {key} is not that device's",
                self.name,
                self.device.as_deref().unwrap_or("")
            )));
        }
        let admin = admin_reason(obj);
        match admin {
            Some(why) if self.role < Role::Admin && self.device.is_none() => {
                Err(self.refuse(format!(
                    "{key} is an admin object ({why}); token {} has role {}",
                    self.name, self.role
                )))
            }
            _ if self.role < Role::Operator => Err(self.refuse(format!(
                "changing {key} needs role operator; token {} has {}",
                self.name, self.role
            ))),
            _ => Ok(()),
        }
    }

    /// Whether this caller may create `obj` or replace what is stored under its key: both the
    /// new object and the one it replaces are checked (turning a stored admin object into a
    /// plain one is an admin change).
    pub fn may_put(&self, ctl: &Controller, obj: &Object) -> Result<(), ControllerError> {
        self.may_write(obj)?;
        match ctl.object(&obj.key()) {
            Some(stored) => self.may_write(&stored),
            None => Ok(()),
        }
    }

    /// Whether this caller may delete `key`: decided by the stored object when there is one
    /// (deleting an admin object is an admin change), else by what its kind can be.
    pub fn may_delete(&self, ctl: &Controller, key: &ObjectKey) -> Result<(), ControllerError> {
        match ctl.object(key) {
            Some(obj) => self.may_write(&obj),
            None if self.device.is_some() || self.role >= Role::Operator => Ok(()),
            None => Err(self.refuse(format!(
                "deleting {key} needs role operator; token {} has {}",
                self.name, self.role
            ))),
        }
    }

    /// Whether this caller may set the status (withdrawn or back) of endpoint `name`.
    pub fn may_set_status(&self, ctl: &Controller, name: &str) -> Result<(), ControllerError> {
        let key = ObjectKey {
            kind: meshwire_models::ObjectKind::NetworkServiceEndpoint,
            name: name.to_string(),
        };
        let device = ctl.object(&key).as_ref().and_then(device_of);
        if self.node.is_some() {
            return Err(self.refuse(format!(
                "{} may not withdraw or restore endpoints (its own lease does)",
                self.name
            )));
        }
        match (&self.device, device) {
            (Some(mine), Some(d)) if *mine == d => Ok(()),
            (Some(_), _) => Err(self.refuse(format!(
                "token {} may set the status of its own device's endpoints only, not {name}",
                self.name
            ))),
            (None, _) if self.role >= Role::Admin => Ok(()),
            (None, _) => Err(self.refuse(format!(
                "withdrawing or restoring endpoint {name} needs role admin; token {} has {}",
                self.name, self.role
            ))),
        }
    }

    /// Whether this caller may request `req`.
    pub fn may_request(&self, req: &ConnectionRequest) -> Result<(), ControllerError> {
        if let Some(mine) = self.node.as_deref().filter(|n| *n != req.client.node) {
            return Err(self.refuse(format!(
                "{} may request connections for clients on node {mine} only, not on {}",
                self.name, req.client.node
            )));
        }
        match &self.device {
            Some(d) => Err(self.refuse(format!(
                "token {} speaks for device {d}'s eNSM, which never requests connections (the controller composes service chains); use an operator token",
                self.name
            ))),
            _ if self.role < Role::Operator && self.device.is_none() => Err(self.refuse(format!(
                "requesting a connection needs role operator; token {} has {}",
                self.name, self.role
            ))),
            _ => Ok(()),
        }
    }

    /// Whether this caller may close `conn`.
    pub fn may_close(&self, conn: &Connection) -> Result<(), ControllerError> {
        if let Some(mine) = self.node.as_deref().filter(|n| *n != conn.client.node) {
            return Err(self.refuse(format!(
                "{} may close connections of clients on node {mine} only, not {} (client on {})",
                self.name, conn.id, conn.client.node
            )));
        }
        match &self.device {
            Some(d) => Err(self.refuse(format!(
                "token {} speaks for device {d}'s eNSM, which never closes connections; use an operator token for {}",
                self.name, conn.id
            ))),
            _ if self.role < Role::Operator && self.device.is_none() => Err(self.refuse(format!(
                "closing a connection needs role operator; token {} has {}",
                self.name, self.role
            ))),
            _ => Ok(()),
        }
    }
}

/// The device an object belongs to: a Device itself, or an endpoint located on one.
fn device_of(obj: &Object) -> Option<String> {
    match obj {
        Object::Device(d) => Some(d.name.clone()),
        Object::NetworkServiceEndpoint(e) => match &e.location {
            EndpointLocation::Device { device } => Some(device.clone()),
            EndpointLocation::Node { .. } => None,
        },
        _ => None,
    }
}

/// Why `obj` is an admin object, if it is one.
pub fn admin_reason(obj: &Object) -> Option<&'static str> {
    match obj {
        Object::Device(_) => Some("a device: its eNSM receives the device's credential"),
        Object::NetworkServiceEndpoint(e)
            if matches!(e.location, EndpointLocation::Device { .. }) =>
        {
            Some("an endpoint on a device")
        }
        Object::Node(n) if n.ovsdb.is_some() => {
            Some("a node with an OVSDB remote: the controller connects and transacts there")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Object {
        meshwire_models::Manifest::parse("t", text)
            .unwrap()
            .objects
            .remove(0)
    }

    fn caller(role: Role, device: Option<&str>) -> Caller {
        Caller {
            name: "t".into(),
            role,
            device: device.map(str::to_string),
            node: None,
        }
    }

    #[test]
    fn nb_roles_follow_the_object() {
        let device = doc("apiVersion: meshwire.io/v1\nkind: Device\nmetadata: {name: fw1}\nspec: {kind: meshwire-appliance, ensm: \"http://x:1\"}\n");
        let on_device = doc("apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e}\nspec: {network_service_names: [s], location: {device: fw1}}\n");
        let ovs = doc("apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n}\nspec: {ovsdb: \"tcp:10.0.0.1:6640\"}\n");
        let plain = doc("apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n}\n");
        let op = caller(Role::Operator, None);
        for o in [&device, &on_device, &ovs] {
            assert!(matches!(
                op.may_write(o),
                Err(ControllerError::Forbidden(_))
            ));
            caller(Role::Admin, None).may_write(o).unwrap();
        }
        op.may_write(&plain).unwrap();
        assert!(caller(Role::Viewer, None).may_write(&plain).is_err());
        // An eNSM's token: its own device and endpoints, nothing else.
        let fw1 = caller(Role::Operator, Some("fw1"));
        fw1.may_write(&device).unwrap();
        fw1.may_write(&on_device).unwrap();
        assert!(fw1.may_write(&plain).is_err());
        let fw2 = caller(Role::Operator, Some("fw2"));
        assert!(fw2.may_write(&device).is_err() && fw2.may_write(&on_device).is_err());
    }

    /// Input: a node agent's caller (n1) writing endpoints on n1, on n2 and a service;
    /// requesting for clients on n1 and n2. Output: only what is on n1 is allowed.
    #[test]
    fn nb_a_node_speaks_for_its_own_node_only() {
        let n1 = Caller::node("n1");
        let on = |node: &str| {
            doc(&format!("apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {{name: e}}\nspec: {{network_service_names: [s], location: {{node: {node}}}}}\n"))
        };
        n1.may_write(&on("n1")).unwrap();
        assert!(n1.may_write(&on("n2")).is_err());
        let service = doc("apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: s}\nspec: {payload: IP}\n");
        assert!(n1.may_write(&service).is_err());
        let req = |node: &str| ConnectionRequest {
            network_service: "s".into(),
            client: meshwire_models::ClientRef {
                node: node.into(),
                name: None,
            },
            labels: Default::default(),
            mechanisms: vec![],
            interface: None,
            excluded_prefixes: vec![],
            sriov_token: None,
        };
        n1.may_request(&req("n1")).unwrap();
        let e = n1.may_request(&req("n2")).unwrap_err();
        assert!(e.to_string().contains("node n1 only"), "{e}");
    }
}
