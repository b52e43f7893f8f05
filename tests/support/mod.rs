//! Helpers shared by the integration tests.
pub mod ha;
pub mod lab;
pub mod vl3;
