//! End-to-end tests: the built `cargo-ephem` binary on the fixture workspace
//! in `tests/fixtures/basic`, with the JUnit it writes parsed back.

mod support;

mod archive;
mod bad_input;
mod baseline;
mod dev_env;
mod environments;
mod exec;
mod filterset;
mod habits;
mod images;
mod junit;
mod kubernetes;
mod kubernetes_lifecycle;
mod list;
mod partition;
mod podman;
mod profiles;
mod provision;
mod recipes;
mod registry;
mod reliability;
mod render;
mod report;
mod rerun;
mod reuse;
mod run;
mod scoped;
mod secrets;
mod selection;
mod signals;
mod snapshot;
