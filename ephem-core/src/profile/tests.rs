//! Parsing, inheritance and override resolution of nextest profiles.

use super::*;

fn parse(text: &str, name: Option<&str>) -> Result<Profile> {
    Profile::parse(
        text,
        Utf8Path::new("/ws/.config/nextest.toml"),
        Utf8Path::new("/ws"),
        Utf8Path::new("/ws/target"),
        name,
    )
}

fn err(text: &str, name: Option<&str>) -> String {
    let e = parse(text, name).unwrap_err();
    assert_eq!(e.exit_code(), crate::exit_codes::USAGE, "{e}");
    e.to_string()
}

fn settings_of(p: &Profile) -> TestSettings {
    let binary = crate::test_list::TestBinary {
        binary_id: "pkg".into(),
        binary_name: "pkg".into(),
        package_id: "pkg".into(),
        package_name: "pkg".into(),
        kind: "lib".into(),
        path: "/bin/true".into(),
        cwd: "/".into(),
        env: std::sync::Arc::new(Vec::new()),
    };
    p.compile(None).unwrap().settings(&binary, "t")
}

#[test]
fn without_a_file_only_the_builtin_default_exists() {
    let dir = tempfile::tempdir().unwrap();
    let root = Utf8Path::from_path(dir.path()).unwrap();
    let p = Profile::load(root, &root.join("target"), None).unwrap();
    assert_eq!(p.retries.count, 0);
    assert_eq!(p.fail_fast, MaxFail::FIRST);
    assert_eq!(p.slow_timeout, SlowTimeout::default());
    let e = Profile::load(root, &root.join("target"), Some("ci")).unwrap_err();
    assert!(e.to_string().contains("--profile ci: there is no"), "{e}");
}

#[test]
fn every_shape_of_each_key() {
    let p = parse(
        r#"
        [profile.ci]
        retries = { backoff = "exponential", count = 3, delay = "1s", jitter = true, max-delay = "3s" }
        slow-timeout = { period = "2s", terminate-after = 3, grace-period = "500ms" }
        fail-fast = { max-fail = 4 }
        test-threads = -1
        threads-required = "num-test-threads"
        status-level = "all"
        "#,
        Some("ci"),
    )
    .unwrap();
    assert_eq!(p.retries.count, 3);
    assert!(p.retries.jitter());
    let delays: Vec<u64> = (1..=4)
        .map(|n| p.retries.delay_before(n).as_secs())
        .collect();
    assert_eq!(delays, [1, 2, 3, 3], "doubled, capped by max-delay");
    assert_eq!(
        p.slow_timeout.kill_after(),
        Some(std::time::Duration::from_secs(6))
    );
    assert_eq!(p.slow_timeout.grace_period.as_millis(), 500);
    assert_eq!(p.fail_fast.limit(), Some(4));
    assert_eq!(p.test_threads.unwrap().compute(8), 7);
    assert_eq!(p.threads_required.compute(8, 5), 5);
    assert_eq!(
        p.output.status_level,
        Some(crate::report::levels::StatusLevel::All)
    );

    let p = parse(
        "[profile.ci]\nretries = { backoff = \"fixed\", count = 2, delay = \"1s\" }\n\
         slow-timeout = \"5s\"\nfail-fast = false\ntest-threads = \"num-cpus\"\n",
        Some("ci"),
    )
    .unwrap();
    assert_eq!(p.retries.delay_before(3).as_secs(), 1);
    assert_eq!(p.slow_timeout.period.as_secs(), 5);
    assert_eq!(p.slow_timeout.kill_after(), None);
    assert_eq!(p.fail_fast, MaxFail::All);
    assert_eq!(p.test_threads.unwrap().compute(3), 3);
    let p = parse(
        "[profile.ci]\nfail-fast = { max-fail = \"all\" }\n",
        Some("ci"),
    )
    .unwrap();
    assert_eq!(p.fail_fast, MaxFail::All);
}

#[test]
fn bad_values_name_the_key_and_the_line() {
    for (text, want) in [
        (
            "[profile.ci]\nretries = -1\n",
            ":2:11: retries: expected a count",
        ),
        (
            "[profile.ci]\nretries = { count = 1 }\n",
            ":2:11: retries: `backoff`",
        ),
        (
            "[profile.ci]\nretries = { backoff = \"exponential\", count = 1 }\n",
            "exponential backoff needs `delay`",
        ),
        (
            "[profile.ci]\nretries = { backoff = \"fixed\", count = 1, max-delay = \"1s\" }\n",
            "unknown key `max-delay`",
        ),
        (
            "[profile.ci]\nslow-timeout = \"soon\"\n",
            ":2:16: slow-timeout",
        ),
        (
            "[profile.ci]\nslow-timeout = { period = \"1s\", terminate-after = 0 }\n",
            "terminate-after",
        ),
        ("[profile.ci]\nfail-fast = \"yes\"\n", ":2:13: fail-fast"),
        ("[profile.ci]\ntest-threads = 0\n", ":2:16: test-threads"),
        (
            "[profile.ci]\nstatus-level = \"loud\"\n",
            ":2:16: status-level: \"loud\" is not one of",
        ),
        (
            "[profile.ci]\nthreads-required = \"all\"\n",
            "threads-required",
        ),
        (
            "[test-groups.g]\nmax-threads = 0\n[profile.ci]\n",
            ":2:15: max-threads",
        ),
        (
            "[test-groups.\"@mine\"]\nmax-threads = 1\n[profile.ci]\n",
            "reserved",
        ),
        ("[profile.ci]\ninherits = 3\n", ":2:12:"),
        (
            "[[profile.ci.overrides]]\nretries = 1\n",
            "needs `filter` or `platform`",
        ),
        (
            "[[profile.ci.overrides]]\nplatform = \"cfg(unix)\"\npriority = 101\n",
            ":3:12: priority",
        ),
        (
            "[[profile.ci.overrides]]\nplatform = \"cfg(\"\n",
            "platform",
        ),
    ] {
        let e = err(text, Some("ci"));
        assert!(e.contains(want), "{text}: wants {want:?} in {e}");
        assert!(e.starts_with("/ws/.config/nextest.toml"), "{e}");
    }
}

#[test]
fn a_profile_inherits_default_then_builtin_unless_it_says_otherwise() {
    let text = r#"
        [profile.default]
        retries = 1
        slow-timeout = "5s"
        [profile.base]
        retries = 2
        fail-fast = false
        [profile.ci]
        inherits = "base"
        test-threads = 3
        [profile.plain]
        test-threads = 2
    "#;
    let ci = parse(text, Some("ci")).unwrap();
    assert_eq!(ci.retries.count, 2, "from base");
    assert_eq!(ci.fail_fast, MaxFail::All, "from base");
    assert_eq!(ci.slow_timeout.period.as_secs(), 5, "from default");
    assert_eq!(ci.test_threads, Some(TestThreads::Count(3)));
    let plain = parse(text, Some("plain")).unwrap();
    assert_eq!(plain.retries.count, 1, "from default");
    assert_eq!(plain.fail_fast, MaxFail::FIRST, "built in");
    let default = parse(text, None).unwrap();
    assert_eq!(
        (default.name.as_str(), default.retries.count),
        ("default", 1)
    );
    let e = err(text, Some("nightly"));
    assert!(
        e.contains("profile `nightly` not found (profiles: base, ci, default, plain)"),
        "{e}"
    );
    let e = err(
        "[profile.a]\ninherits = \"b\"\n[profile.b]\ninherits = \"c\"\n[profile.c]\ninherits = \"a\"\n",
        Some("a"),
    );
    assert!(
        e.contains(":6:12: inherits: the profiles inherit in a cycle (a -> b -> c -> a)"),
        "{e}"
    );
}

#[test]
fn overrides_first_match_wins_per_setting_nearest_profile_first() {
    let text = r#"
        [test-groups]
        serial = { max-threads = 1 }
        [[profile.default.overrides]]
        platform = "cfg(all())"
        retries = 5
        priority = 7
        threads-required = 2
        [profile.ci]
        [[profile.ci.overrides]]
        platform = "cfg(not(all()))"
        retries = 9
        test-group = "serial"
        [[profile.ci.overrides]]
        platform = "cfg(all())"
        retries = 1
        [[profile.ci.overrides]]
        platform = { host = "cfg(all())", target = "cfg(all())" }
        retries = 3
        test-group = "serial"
    "#;
    let s = settings_of(&parse(text, Some("ci")).unwrap());
    assert_eq!(s.retries.count, 1, "the first matching override of ci");
    assert_eq!(
        s.test_group.as_deref(),
        Some("serial"),
        "the first to set a group"
    );
    assert_eq!(s.priority, 7, "default's overrides come after ci's");
    assert_eq!(s.threads_required, ThreadsRequired::Count(2));
    let s = settings_of(&parse(text, None).unwrap());
    assert_eq!((s.retries.count, s.test_group), (5, None));
    let p = parse(text, Some("ci")).unwrap();
    assert_eq!(p.test_groups.get("serial"), Some(&TestThreads::Count(1)));
    assert!(!p.needs_graph());
}

#[test]
fn junit_path_goes_under_the_store_directory() {
    let text = "[profile.ci.junit]\npath = \"junit.xml\"\n";
    let p = parse(text, Some("ci")).unwrap();
    assert_eq!(p.junit_path.unwrap(), "/ws/target/nextest/ci/junit.xml");
    let p = parse(&format!("[store]\ndir = \"out/nx\"\n{text}"), Some("ci")).unwrap();
    assert_eq!(p.junit_path.unwrap(), "/ws/out/nx/ci/junit.xml");
    // Inherited by a profile that does not set it, under that profile's name.
    let p = parse(
        &format!("{text}[profile.child]\ninherits = \"ci\"\n"),
        Some("child"),
    )
    .unwrap();
    assert_eq!(p.junit_path.unwrap(), "/ws/target/nextest/child/junit.xml");
}

#[test]
fn keys_with_no_meaning_here_are_listed_never_refused() {
    let p = parse(
        r#"
        nextest-version = "0.9.50"
        experimental = ["setup-scripts"]
        [store]
        dir = "target/nextest"
        [scripts.setup.db]
        command = "true"
        [profile.ci]
        leak-timeout = "1s"
        retries = 1
        archive = { include = [] }
        [profile.ci.junit]
        path = "j.xml"
        store-success-output = true
        [[profile.ci.overrides]]
        platform = "cfg(unix)"
        leak-timeout = "2s"
        run-extra-args = ["--x"]
        [test-groups.g]
        max-threads = 2
        extra = 1
        "#,
        Some("ci"),
    )
    .unwrap();
    assert_eq!(
        p.unapplied,
        [
            "experimental",
            "nextest-version",
            "profile.ci.archive",
            "profile.ci.junit.store-success-output",
            "profile.ci.leak-timeout",
            "profile.ci.overrides.leak-timeout",
            "profile.ci.overrides.run-extra-args",
            "scripts",
            "test-groups.g.extra",
        ]
    );
    let note = p.unapplied_note().unwrap();
    assert!(
        note.starts_with("note: /ws/.config/nextest.toml: not applied"),
        "{note}"
    );
    assert!(parse("[profile.ci]\n", Some("ci"))
        .unwrap()
        .unapplied_note()
        .is_none());
}

proptest::proptest! {
    /// Exponential waits never shrink and never pass max-delay; fixed
    /// ones never change.
    #[test]
    fn backoff_grows_within_its_cap(delay_ms in 1u64..10_000, cap_extra in 0u64..100_000, retries in 1u32..40) {
        let delay = std::time::Duration::from_millis(delay_ms);
        let max = delay + std::time::Duration::from_millis(cap_extra);
        let exp = RetryPolicy { count: retries, backoff: Backoff::Exponential { delay, jitter: false, max_delay: Some(max) } };
        let fixed = RetryPolicy { count: retries, backoff: Backoff::Fixed { delay, jitter: false } };
        let mut last = std::time::Duration::ZERO;
        for n in 1..=retries {
            let d = exp.delay_before(n);
            proptest::prop_assert!(d >= last && d <= max && d >= delay);
            proptest::prop_assert_eq!(fixed.delay_before(n), delay);
            last = d;
        }
    }

    /// Whatever the key says, a test takes 1 to test-threads threads, and a
    /// run has at least one thread.
    #[test]
    fn thread_counts_stay_in_range(n in 0usize..10_000, cpus in 1usize..512, threads in 1usize..4096) {
        for t in [ThreadsRequired::Count(n), ThreadsRequired::NumCpus, ThreadsRequired::NumTestThreads] {
            let got = t.compute(cpus, threads);
            proptest::prop_assert!((1..=threads).contains(&got));
        }
        proptest::prop_assert!(TestThreads::CpusMinus(n).compute(cpus) >= 1);
    }

    /// Along any inheritance chain, a key comes from the nearest profile
    /// that sets it, else from default, else the built-in value.
    #[test]
    fn the_nearest_profile_that_sets_a_key_wins(sets in proptest::collection::vec(proptest::option::of(0u32..100), 1..6), default in proptest::option::of(0u32..100)) {
        let mut text = String::new();
        if let Some(d) = default {
            text.push_str(&format!("[profile.default]\nretries = {d}\n"));
        }
        for (i, r) in sets.iter().enumerate() {
            text.push_str(&format!("[profile.p{i}]\n"));
            if i + 1 < sets.len() {
                text.push_str(&format!("inherits = \"p{}\"\n", i + 1));
            }
            if let Some(r) = r {
                text.push_str(&format!("retries = {r}\n"));
            }
        }
        let want = sets.iter().flatten().next().copied().or(default).unwrap_or(0);
        let p = parse(&text, Some("p0")).unwrap();
        proptest::prop_assert_eq!(p.retries.count, want);
    }
}
