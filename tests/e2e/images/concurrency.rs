//! The image cache shared by several processes at once: two `images pull`
//! filling one cache, a prune during a fill, a prune racing a restore, and
//! the lock protocol prune honours (`cache.lock`) with its grace period.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{
    assert_cache_whole, config_naming, config_with, images_cmd, sha256_of, warnings, Proxy,
    TestImage,
};
use crate::support::{config, describe, run, shared_daemon, Background};

#[test]
fn two_images_pull_processes_fill_one_cache_at_once() {
    let _daemon = shared_daemon();
    let image = TestImage::push();
    // Slowed, so that both processes download the same blobs at once.
    let proxy = Proxy::start(true);
    let name = image.at(&proxy.host());
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config_naming(&name, dir.path());
    for round in 0..3 {
        image.remove_local();
        let cache = dir.path().join(format!("cache-{round}"));
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let both: Vec<_> = (0..2)
            .map(|_| {
                let (start, cfg, cache) = (start.clone(), cfg.clone(), cache.clone());
                std::thread::spawn(move || {
                    let mut cmd = images_cmd(&["pull"], &cfg, &cache);
                    start.wait();
                    run(&mut cmd)
                })
            })
            .collect();
        for out in both.into_iter().map(|t| t.join().expect("runner thread")) {
            assert_eq!(
                out.status.code(),
                Some(0),
                "round {round}: {}",
                describe(&out)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let (origin, pulled) = stdout.trim().split_once(' ').unwrap_or_default();
            assert_eq!(pulled.trim(), name, "round {round}: {}", describe(&out));
            assert!(
                ["registry", "cache", "daemon"].contains(&origin),
                "round {round}: {}",
                describe(&out)
            );
            assert!(
                warnings(&out.stderr).is_empty(),
                "round {round}: {}",
                describe(&out)
            );
        }
        assert!(TestImage::present(&name), "round {round}");
        assert_eq!(assert_cache_whole(&cache), vec![name.clone()]);
    }
}

#[test]
fn a_prune_during_a_fill_waits_for_it_and_the_fill_completes() {
    let _daemon = shared_daemon();
    let image = TestImage::push();
    // Slowed, so the prune below runs while layers are still arriving.
    let proxy = Proxy::start(true);
    let name = image.at(&proxy.host());
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config_naming(&name, dir.path());
    let cache = dir.path().join("cache");
    let mut pull = Background::spawn(&mut images_cmd(&["pull"], &cfg, &cache));
    // The manifest is stored first; layers follow through the slow proxy.
    let blobs = cache.join("blobs/sha256");
    let stored = crate::support::wait_for(120, || {
        std::fs::read_dir(&blobs).is_ok_and(|list| {
            list.flatten()
                .any(|e| !e.file_name().to_string_lossy().contains(".tmp-"))
        })
    });
    assert!(stored, "the fill stored nothing");
    // The configuration names the image: its entry is kept, and the blobs
    // of the fill under way (not yet in index.json) must be too.
    let out = run(&mut images_cmd(&["prune"], &cfg, &cache));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("waiting for another cargo-ephem process"),
        "the prune did not overlap the fill: {}",
        describe(&out)
    );
    let code = pull.wait(300);
    assert_eq!(code, Some(0), "{}", pull.stderr);
    assert!(
        !pull.stderr.contains("warning:"),
        "the fill was cut short: {}",
        pull.stderr
    );
    assert!(TestImage::present(&name));
    assert_eq!(assert_cache_whole(&cache), vec![name.clone()]);
}

#[test]
fn prune_waits_for_a_process_using_the_cache_and_spares_young_unindexed_blobs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let cfg = config("env-busybox.toml");
    let out = run(&mut images_cmd(&["ls"], &cfg, &cache));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let blobs = cache.join("blobs/sha256");
    // Blobs no entry names: a fill under way wrote one a moment ago, a
    // fill that died long ago left the other; likewise temporary files.
    let age = |path: &Path, hours_ago: u32| {
        if hours_ago > 0 {
            let touched = Command::new("touch")
                .arg("-d")
                .arg(format!("{hours_ago} hours ago"))
                .arg(path)
                .status()
                .expect("touch runs");
            assert!(touched.success());
        }
    };
    let plant = |content: &str, hours_ago: u32| -> PathBuf {
        let tmp = dir.path().join("plant");
        std::fs::write(&tmp, content).expect("write");
        let digest = sha256_of(&tmp);
        let path = blobs.join(digest.trim_start_matches("sha256:"));
        std::fs::rename(&tmp, &path).expect("plant blob");
        age(&path, hours_ago);
        path
    };
    let young = plant("in flight", 0);
    let old = plant("abandoned", 2);
    let young_tmp = blobs.join("abc.tmp-1-000000");
    let old_tmp = blobs.join("def.tmp-1-000000");
    std::fs::write(&young_tmp, b"half").expect("write");
    std::fs::write(&old_tmp, b"half").expect("write");
    age(&old_tmp, 2);

    // Another process restoring from the cache holds it shared, as every
    // fill and restore does (README: the image cache, concurrency).
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache.join("cache.lock"))
        .expect("cache.lock");
    lock.lock_shared().expect("shared lock");
    let mut prune = Background::spawn(&mut images_cmd(&["prune", "--all"], &cfg, &cache));
    assert!(
        prune.wait_for_line(60, "waiting for"),
        "prune did not wait: {}",
        prune.stderr
    );
    assert!(
        old.exists() && old_tmp.exists(),
        "prune deleted while waiting"
    );
    lock.unlock().expect("unlock");
    assert_eq!(prune.wait(60), Some(0), "{}", prune.stderr);
    assert!(young.exists(), "a young unindexed blob was deleted");
    assert!(young_tmp.exists(), "a young temporary file was deleted");
    assert!(!old.exists(), "an abandoned blob was kept");
    assert!(!old_tmp.exists(), "an abandoned temporary file was kept");

    // --grace 0s: everything no entry names goes.
    let out = run(&mut images_cmd(&["prune", "--grace", "0s"], &cfg, &cache));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(!young.exists() && !young_tmp.exists(), "{}", describe(&out));
}

#[test]
fn a_prune_racing_a_restore_never_takes_its_blobs() {
    let _daemon = shared_daemon();
    let image = TestImage::push();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config_with(&image, dir.path());
    let cache = dir.path().join("cache");
    for round in 0..10 {
        // The image in the cache, not in the daemon.
        let out = run(&mut images_cmd(&["pull"], &cfg, &cache));
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: {}",
            describe(&out)
        );
        image.remove_local();
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let spawn = |sub: &'static [&'static str]| {
            let (start, cfg, cache) = (start.clone(), cfg.clone(), cache.clone());
            std::thread::spawn(move || {
                let mut cmd = images_cmd(sub, &cfg, &cache);
                start.wait();
                run(&mut cmd)
            })
        };
        let restore = spawn(&["pull"]);
        let prune = spawn(&["prune", "--all"]);
        let (restore, prune) = (
            restore.join().expect("runner thread"),
            prune.join().expect("runner thread"),
        );
        assert_eq!(
            prune.status.code(),
            Some(0),
            "round {round}: {}",
            describe(&prune)
        );
        // Whichever went first, the restore neither failed nor fell back.
        assert_eq!(
            restore.status.code(),
            Some(0),
            "round {round}: {}",
            describe(&restore)
        );
        assert!(
            warnings(&restore.stderr).is_empty(),
            "round {round}: {}",
            describe(&restore)
        );
        assert!(TestImage::present(&image.name), "round {round}");
        assert_cache_whole(&cache);
    }
}
