//! End-to-end tests: the built `cargo-ephem` binary on the fixture workspace
//! in `tests/fixtures/basic`, with the JUnit it writes parsed back.

mod support;

mod archive;
mod bad_input;
mod baseline;
mod dev_env;
mod environments;
mod images;
mod junit;
mod kubernetes;
mod list;
mod partition;
mod provision;
mod recipes;
mod reliability;
mod render;
mod report;
mod reuse;
mod run;
mod secrets;
mod selection;
mod signals;
