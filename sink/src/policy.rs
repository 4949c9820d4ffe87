//! What a sink does with an event that fails permanently (a constraint violation, a type the
//! target rejects): the `on_error` setting.

use std::fmt;

use serde::Deserialize;

/// The `on_error` policy of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop this sink with an error naming the table, key and source position (default).
    #[default]
    Halt,
    /// Log and count the failed event, then go on.
    Skip,
    /// Write the event and its error to the sink's dead-letter destination, then go on.
    DeadLetter,
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnError::Halt => "halt",
            OnError::Skip => "skip",
            OnError::DeadLetter => "dead_letter",
        })
    }
}
