//! Readers of the image files members upload, kept apart from the drivers
//! that use them so that they can be fuzzed (`fuzz/`, targets
//! `docker_archive` and `process_image`): a member's upload is as hostile as
//! a peer's bytes (docs/drivers.md).
//!
//! - [`docker`]: the tag-free copy of a `docker-archive` the engine loads, and
//!   the image id it must report.
//! - [`process`]: a process image unpacked into an instance's root, and its
//!   `manifest.json`.

pub mod docker;
pub mod process;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file is not a usable image of its format; the reason.
    #[error("{0}")]
    Unusable(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
