//! scripts/provision-test-env.sh, one function at a time: sourced with
//! `EPHEM_PROVISION_LIB=1` it only defines its functions, so a test can call
//! one without provisioning the machine.

use std::path::PathBuf;
use std::process::Command;

use crate::support::*;

/// The stand-in image the throwaway tags point at.
const BUSYBOX: &str = "busybox:1.36";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/provision-test-env.sh")
}

/// Runs `FUNCTION ARGS...` from the sourced script.
fn call_script_function(function: &str, args: &[&str]) -> std::process::Output {
    run(Command::new("bash")
        .arg("-c")
        .arg(r#"EPHEM_PROVISION_LIB=1 source "$0" && "$@""#)
        .arg(script())
        .arg(function)
        .args(args))
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

/// The image id a reference names, or None when the daemon has no such image.
fn image_id(reference: &str) -> Option<String> {
    let out = docker(&["image", "inspect", "-f", "{{.Id}}", reference]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Puts busybox:1.36 in the local image store the way a run does: pulled
/// through the registry, then tagged under its Docker Hub name.
fn ensure_local_busybox() {
    if image_id(BUSYBOX).is_some() {
        return;
    }
    let mirrored = format!("localhost:5000/library/{BUSYBOX}");
    let out = docker(&["pull", &mirrored]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = docker(&["tag", &mirrored, BUSYBOX]);
    assert!(out.status.success(), "{}", describe(&out));
}

/// Tags that exist only for one test; dropping them removes them, so a
/// failing test leaves no image names behind (the image itself stays, as
/// busybox:1.36 still names it).
struct ThrowawayTags(Vec<String>);

impl ThrowawayTags {
    fn of(image: &str, tags: Vec<String>) -> ThrowawayTags {
        let guard = ThrowawayTags(tags);
        for tag in &guard.0 {
            let out = docker(&["tag", image, tag]);
            assert!(out.status.success(), "docker tag {tag}: {}", describe(&out));
        }
        guard
    }
}

impl Drop for ThrowawayTags {
    fn drop(&mut self) {
        for tag in &self.0 {
            if image_id(tag).is_some() {
                let _ = docker(&["rmi", tag]);
            }
        }
    }
}

/// A name no other test run uses: this process and the current time.
fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("ephem-provision-test-{:x}-{nanos:x}", std::process::id())
}

/// After a rebuild, every name a stale copy of the image can have locally
/// must go, or the daemon keeps using the stale image: the registry's two
/// spellings and the Docker Hub name a run tags after pulling through the
/// mirror (`postgres:15-bookworm`).
#[test]
fn drop_local_copies_removes_every_local_spelling_of_the_image() {
    ensure_local_busybox();
    let busybox_id = image_id(BUSYBOX).expect("busybox:1.36 is local");
    let name = unique_name();
    let tags = ThrowawayTags::of(
        BUSYBOX,
        vec![
            format!("{name}:1"),
            format!("localhost:5000/library/{name}:1"),
            format!("127.0.0.1:5000/library/{name}:1"),
        ],
    );
    for tag in &tags.0 {
        assert!(image_id(tag).is_some(), "{tag} was not tagged");
    }

    let out = call_script_function("drop_local_copies", &[&name, "1"]);
    assert!(out.status.success(), "{}", describe(&out));

    let left: Vec<&String> = tags.0.iter().filter(|t| image_id(t).is_some()).collect();
    assert!(
        left.is_empty(),
        "drop_local_copies {name} 1 left {left:?}\n{}",
        describe(&out)
    );
    assert_eq!(
        image_id(BUSYBOX).as_deref(),
        Some(busybox_id.as_str()),
        "drop_local_copies {name} 1 touched {BUSYBOX}"
    );
}
