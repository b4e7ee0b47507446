//! What nextest tells a test, decided where the dispatcher starts an
//! attempt: its global slot, its test group and the `NEXTEST_*` variables.

use super::*;

impl<'a> Dispatcher<'a> {
    /// The test group `test` runs in: the one place test groups (which
    /// come with nextest's profiles) are decided. None yet: `@global`.
    pub(super) fn group_of(&self, _test: TestIdx) -> GroupSlot {
        GroupSlot::global()
    }

    /// A global slot for this attempt of `test`, and the variables nextest
    /// would set for it.
    pub(super) fn nextest_attempt(
        &mut self,
        test: TestIdx,
        attempt_no: u32,
    ) -> (u32, Vec<(String, String)>) {
        let slot = self.slots.acquire(test);
        let group = self.group_of(test);
        let case = &self.list.tests[test];
        let vars = NextestAttempt {
            run_id: &self.opts.run_id,
            binary_id: &self.list.binaries[case.binary].binary_id,
            test_name: &case.name,
            attempt: attempt_no,
            total_attempts: self.opts.retries.saturating_add(1),
            global_slot: slot,
            group: &group,
            test_threads: self.opts.test_threads,
        }
        .vars();
        (slot, vars)
    }
}
