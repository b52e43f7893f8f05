//! Labs: containerlab-format topologies run as network namespaces on one machine. Not yet
//! implemented; the topology they will register is `meshwire_models::Topology`.

pub use meshwire_models::Topology;
