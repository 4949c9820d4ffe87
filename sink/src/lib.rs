//! ferry's sink workers.
//!
//! A sink reads the spool from its own cursor and applies whole source transactions, in commit
//! order, to one target: a PostgreSQL or MySQL/MariaDB replica, or Kafka topics. This crate owns
//! what every sink shares, the error policy ([`OnError`]) and the retry schedule ([`Backoff`]);
//! the target-specific workers live in their own modules as they are built.

pub mod db;
pub mod deadletter;
pub mod destination;
pub mod error;
pub mod kafka;
pub mod mysql;
pub mod policy;
pub mod postgres;
pub mod progress;
pub mod types;
pub mod worker;

pub use error::SinkError;
pub use ferry_db::retry::Backoff;
pub use policy::OnError;
