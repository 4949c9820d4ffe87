//! The ferry agent as a library: the `ferry` binary (`main.rs`) is a thin shell over these modules,
//! and end-to-end tests drive them directly.

pub mod capture;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod dump;
pub mod error;
pub mod filter;
pub mod http;
pub mod lag;
pub mod logging;
pub mod mysql;
pub mod postgres;
pub mod progress;
pub mod retention;
pub mod status;
pub mod supervisor;
pub mod table_def;
pub mod verify;
