//! What the user and CI systems see: the live display, the end summary, and
//! JUnit reports.

pub mod command;
pub mod display;
pub mod html;
pub mod junit;
pub mod levels;
pub mod record;
pub mod summary;
