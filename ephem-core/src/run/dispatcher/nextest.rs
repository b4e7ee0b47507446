//! What nextest tells a test, decided where the dispatcher starts an
//! attempt: its global slot, its test group and the `NEXTEST_*` variables.

use super::*;

impl<'a> Dispatcher<'a> {
    /// A global slot for this attempt of `test`, its group slot, and the
    /// variables nextest would set for it. A test in a profile's test group
    /// gets a slot within the group (below the group's `max-threads`).
    pub(super) fn nextest_attempt(
        &mut self,
        test: TestIdx,
        attempt_no: u32,
        knobs: &crate::run::TestKnobs,
    ) -> (u32, Vec<(String, String)>) {
        let slot = self.slots.acquire(test);
        let group = match &knobs.group {
            None => GroupSlot::global(),
            Some(name) => {
                let max = self
                    .opts
                    .test_groups
                    .get(&**name)
                    .copied()
                    .unwrap_or(self.opts.test_threads);
                let slots = self
                    .group_slots
                    .entry(name.clone())
                    .or_insert_with(|| GlobalSlots::new(max));
                GroupSlot {
                    group: name.to_string(),
                    slot: Some(slots.acquire(test)),
                }
            }
        };
        let case = &self.list.tests[test];
        let vars = NextestAttempt {
            run_id: &self.opts.run_id,
            binary_id: &self.list.binaries[case.binary].binary_id,
            test_name: &case.name,
            attempt: attempt_no,
            total_attempts: knobs.retries.count.saturating_add(1),
            global_slot: slot,
            group: &group,
            test_threads: self.opts.test_threads,
        }
        .vars();
        (slot, vars)
    }

    /// The attempt of `test` in global slot `slot` ended: its slots are
    /// kept for its retry, until [`Dispatcher::forget_slots`].
    pub(super) fn release_slots(&mut self, test: TestIdx, slot: u32, group: Option<&Arc<str>>) {
        self.slots.release(test, slot);
        if let Some(slots) = group.and_then(|g| self.group_slots.get_mut(g)) {
            if let Some(group_slot) = slots.slot_of(test) {
                slots.release(test, group_slot);
            }
        }
    }

    /// `test` has its verdict: it keeps no slot for a retry.
    pub(super) fn forget_slots(&mut self, test: TestIdx) {
        self.slots.forget(test);
        for slots in self.group_slots.values_mut() {
            slots.forget(test);
        }
    }
}
