//! nextest's view of a running test: its global slot, its test group, and
//! the `NEXTEST_*` variables a suite written for nextest reads.
//!
//! Slot numbers are nextest's: unique among the tests running at once,
//! the smallest free one when a test starts, kept by a test across its
//! retries where possible, so `NEXTEST_TEST_GLOBAL_SLOT` can pick a port
//! block or a database of its own.

use std::collections::{BTreeSet, HashMap};

use crate::test_list::TestIdx;

/// The global slots of the tests running now, and the slot each test
/// waiting for a retry had.
#[derive(Debug, Default)]
pub(crate) struct GlobalSlots {
    /// Tests at once: every slot handed out is below it.
    limit: u32,
    in_use: BTreeSet<u32>,
    /// The slot of each running test.
    holders: HashMap<TestIdx, u32>,
    /// A test waiting for its next attempt, and the slot it had.
    kept: HashMap<TestIdx, u32>,
}

impl GlobalSlots {
    /// Slots for a run of at most `test_threads` tests at once.
    pub(crate) fn new(test_threads: usize) -> GlobalSlots {
        GlobalSlots {
            limit: u32::try_from(test_threads).unwrap_or(u32::MAX),
            ..GlobalSlots::default()
        }
    }

    /// A slot for an attempt of `test`: the one it had before if that is
    /// free, else the smallest free slot no retry waits for, else the
    /// smallest free one. While fewer than `test_threads` tests run,
    /// the slot is below `test_threads`.
    pub(crate) fn acquire(&mut self, test: TestIdx) -> u32 {
        let free = |s: &u32| !self.in_use.contains(s);
        let slot = match self.kept.remove(&test).filter(free) {
            Some(slot) => slot,
            None => {
                let kept: BTreeSet<u32> = self.kept.values().copied().collect();
                let smallest = (0..).find(free).expect("a free slot");
                (smallest..self.limit.max(smallest + 1))
                    .find(|s| free(s) && !kept.contains(s))
                    .unwrap_or(smallest)
            }
        };
        self.in_use.insert(slot);
        self.holders.insert(test, slot);
        slot
    }

    /// The slot `test` holds now, if it runs.
    pub(crate) fn slot_of(&self, test: TestIdx) -> Option<u32> {
        self.holders.get(&test).copied()
    }

    /// `test`'s attempt in `slot` ended; the slot is kept for its retry
    /// until [`GlobalSlots::forget`].
    pub(crate) fn release(&mut self, test: TestIdx, slot: u32) {
        self.in_use.remove(&slot);
        self.holders.remove(&test);
        self.kept.insert(test, slot);
    }

    /// `test` has its verdict: it runs no more.
    pub(crate) fn forget(&mut self, test: TestIdx) {
        self.kept.remove(&test);
    }
}

/// The test group a test runs in: a profile's `[test-groups]` name with a
/// slot below its `max-threads`, or none, which nextest calls `@global`,
/// with no group slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupSlot {
    /// `@global`, or the group's name.
    pub(crate) group: String,
    /// The slot within the group; `None` outside any group.
    pub(crate) slot: Option<u32>,
}

impl GroupSlot {
    /// No group: nextest's `@global`.
    pub(crate) fn global() -> GroupSlot {
        GroupSlot {
            group: "@global".to_owned(),
            slot: None,
        }
    }
}

/// What nextest tells one attempt of one test.
pub(crate) struct NextestAttempt<'a> {
    pub(crate) run_id: &'a str,
    pub(crate) binary_id: &'a str,
    pub(crate) test_name: &'a str,
    /// From 1.
    pub(crate) attempt: u32,
    /// `retries + 1`.
    pub(crate) total_attempts: u32,
    pub(crate) global_slot: u32,
    pub(crate) group: &'a GroupSlot,
    /// Tests at once across the run.
    pub(crate) test_threads: usize,
}

impl NextestAttempt<'_> {
    /// The variables nextest sets for a test, with the same meaning.
    pub(crate) fn vars(&self) -> Vec<(String, String)> {
        let pairs: [(&str, String); 11] = [
            ("NEXTEST", "1".to_owned()),
            ("NEXTEST_RUN_ID", self.run_id.to_owned()),
            ("NEXTEST_EXECUTION_MODE", "process-per-test".to_owned()),
            ("NEXTEST_BINARY_ID", self.binary_id.to_owned()),
            ("NEXTEST_TEST_NAME", self.test_name.to_owned()),
            ("NEXTEST_ATTEMPT", self.attempt.to_string()),
            ("NEXTEST_TOTAL_ATTEMPTS", self.total_attempts.to_string()),
            ("NEXTEST_TEST_GLOBAL_SLOT", self.global_slot.to_string()),
            ("NEXTEST_TEST_GROUP", self.group.group.clone()),
            (
                "NEXTEST_TEST_GROUP_SLOT",
                self.group
                    .slot
                    .map_or_else(|| "none".to_owned(), |s| s.to_string()),
            ),
            ("NEXTEST_TEST_THREADS", self.test_threads.to_string()),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_the_smallest_free_and_reused() {
        let mut s = GlobalSlots::new(3);
        assert_eq!([s.acquire(0), s.acquire(1), s.acquire(2)], [0, 1, 2]);
        s.release(1, 1);
        s.forget(1);
        assert_eq!(s.acquire(3), 1, "the freed slot is reused");
        s.release(0, 0);
        s.forget(0);
        s.release(2, 2);
        s.forget(2);
        assert_eq!(s.acquire(4), 0);
    }

    #[test]
    fn a_retry_keeps_its_slot_and_new_tests_go_around_it() {
        let mut s = GlobalSlots::new(3);
        assert_eq!([s.acquire(0), s.acquire(1)], [0, 1]);
        // Test 0 failed and waits for its retry; another test starts first.
        s.release(0, 0);
        assert_eq!(s.acquire(2), 2, "slot 0 is kept for test 0's retry");
        assert_eq!(s.acquire(0), 0, "the retry gets its slot back");
    }

    #[test]
    fn slots_stay_below_the_number_running_at_once() {
        // Two threads; retries waiting hold slots, yet a third test never
        // gets slot 2: it takes a kept slot instead.
        let mut s = GlobalSlots::new(2);
        assert_eq!([s.acquire(0), s.acquire(1)], [0, 1]);
        s.release(0, 0);
        s.release(1, 1);
        assert_eq!(s.acquire(2), 0);
        assert_eq!(s.acquire(3), 1);
        s.release(2, 0);
        s.forget(2);
        assert_eq!(s.acquire(1), 0, "its slot is taken: the smallest free one");
    }

    #[test]
    fn vars_say_what_nextest_says() {
        let group = GroupSlot::global();
        let vars = NextestAttempt {
            run_id: "r",
            binary_id: "pkg::integration",
            test_name: "a::b",
            attempt: 2,
            total_attempts: 3,
            global_slot: 1,
            group: &group,
            test_threads: 4,
        }
        .vars();
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).unwrap().1.as_str();
        assert_eq!(get("NEXTEST"), "1");
        assert_eq!(get("NEXTEST_ATTEMPT"), "2");
        assert_eq!(get("NEXTEST_TEST_GLOBAL_SLOT"), "1");
        assert_eq!(get("NEXTEST_TEST_GROUP"), "@global");
        assert_eq!(get("NEXTEST_TEST_GROUP_SLOT"), "none");
        assert_eq!(get("NEXTEST_BINARY_ID"), "pkg::integration");
    }
}
