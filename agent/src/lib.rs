//! The `ferry` application over its libraries: configuration, `ferry run`'s supervision of the
//! source and the sinks, the HTTP endpoint, and the other commands. The binary (`main.rs`) is a
//! thin shell over these modules. The sources are `ferry_source`, the sinks `ferry_sink`, the
//! connections `ferry_db`.

pub mod backup;
pub mod base_backup;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod ddl_trigger;
pub mod drill;
pub mod dump;
pub mod http;
pub mod logging;
pub mod promote;
pub mod reverse;
pub mod sequences;
pub mod status;
pub mod supervisor;
pub mod verify;
