//! What a source server must offer before ferry streams from it, decided once per engine
//! (`postgres::prerequisites`, `mysql::server::prerequisites`) and read by both `ferry check`
//! (every finding) and the source at start (the first unmet one refuses).

/// One prerequisite: met or not, what was found or what to change, and whether it may pass by
/// itself (the source waits for such a one).
#[derive(Debug, Clone)]
pub struct Prerequisite {
    pub ok: bool,
    pub transient: bool,
    pub text: String,
}

impl Prerequisite {
    pub fn met(text: String) -> Self {
        Prerequisite {
            ok: true,
            transient: false,
            text,
        }
    }

    pub fn unmet(text: String) -> Self {
        Prerequisite {
            ok: false,
            transient: false,
            text,
        }
    }
}

/// The first prerequisite not met, as the error that refuses to start.
pub fn refuse(found: &[Prerequisite]) -> crate::error::Result<()> {
    match found.iter().find(|p| !p.ok) {
        Some(p) => Err(crate::error::Error::Config(p.text.clone())),
        None => Ok(()),
    }
}
