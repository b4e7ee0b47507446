//! From the listed tests to what this invocation runs: the selection, the
//! shard plan, and the shards run here.

use std::sync::Arc;

use crate::options::Sharding;
use crate::partition::{PartitionItem, PartitionKind, ShardPlan, Timings};
use crate::run::PlannedTests;
use crate::test_list::{Selection, Selector, TestIdx, TestList};

/// The tests of a run, split into shards.
pub struct TestPlan {
    /// Every listed test.
    pub list: Arc<TestList>,
    /// What the filters decided for each test of `list`.
    pub selection: Vec<Selection>,
    /// How tests were assigned to shards.
    pub kind: PartitionKind,
    /// Shards in the whole plan (`EPHEM_SHARD_COUNT`).
    pub shard_count: u32,
    /// `(shard, tests)` for each shard run here, tests in list order;
    /// ignored ones included (they are reported as skipped).
    pub shards: Vec<(u32, Vec<TestIdx>)>,
    /// Tests to run in the whole plan, all shards: what `--no-tests` judges.
    pub to_run_total: usize,
}

impl TestPlan {
    /// Selects tests by `selector` and splits the selection by `sharding`.
    pub fn new(
        list: Arc<TestList>,
        selector: &Selector,
        sharding: Sharding,
        timings: &Timings,
    ) -> TestPlan {
        let selection = selector.select(&list);
        let selected: Vec<TestIdx> = (0..list.tests.len())
            .filter(|&i| selection[i] != Selection::FilteredOut)
            .collect();
        let items: Vec<PartitionItem<'_>> = selected
            .iter()
            .map(|&i| PartitionItem {
                binary_id: list.binary_id(i),
                name: &list.tests[i].name,
                runs: selection[i] == Selection::Run,
            })
            .collect();
        let kind = sharding.kind(!timings.is_empty());
        let plan = ShardPlan::new(&items, sharding.count(), kind, timings);
        let shards = sharding
            .shards_here()
            .into_iter()
            .map(|m| {
                let tests = plan.shards[(m - 1) as usize]
                    .iter()
                    .map(|&k| selected[k])
                    .collect();
                (m, tests)
            })
            .collect();
        let to_run_total = items.iter().filter(|i| i.runs).count();
        drop(items);
        TestPlan {
            list,
            selection,
            kind,
            shard_count: plan.count(),
            shards,
            to_run_total,
        }
    }

    /// Tests to run in the shards run here.
    pub fn to_run_here(&self) -> usize {
        self.shards
            .iter()
            .flat_map(|(_, tests)| tests)
            .filter(|&&t| self.selection[t] == Selection::Run)
            .count()
    }

    /// What the dispatcher needs of the plan, with the line announcing it.
    pub fn planned_tests(&self, headline: String) -> PlannedTests {
        PlannedTests {
            list: self.list.clone(),
            selection: Arc::new(self.selection.clone()),
            shards: self.shards.clone(),
            headline,
            knobs: None,
        }
    }

    /// The shards run here, 1-based.
    pub fn shards_here(&self) -> Vec<u32> {
        self.shards.iter().map(|(m, _)| *m).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::PartitionSpec;
    use crate::test_list::{IgnoredMode, TestBinary, TestFilter};

    fn list(tests: &[(&str, bool)]) -> Arc<TestList> {
        let binary = TestBinary {
            binary_id: "pkg".into(),
            binary_name: "pkg-0".into(),
            package_id: "pkg 0.1.0".into(),
            package_name: "pkg".into(),
            kind: "lib".into(),
            path: "/nonexistent/pkg-0".into(),
            cwd: "/nonexistent".into(),
            env: Arc::new(Vec::new()),
        };
        let tests = tests.iter().map(|(n, i)| (n.to_string(), *i)).collect();
        Arc::new(TestList::new(vec![(binary, tests)], "/nonexistent".into()))
    }

    fn partition(shard: u32, count: u32) -> Sharding {
        Sharding::Partition(PartitionSpec {
            kind: PartitionKind::Slice,
            shard,
            count,
        })
    }

    #[test]
    fn a_shard_beyond_the_tests_is_empty_but_the_selection_is_not() {
        let list = list(&[("a", false), ("b", false)]);
        let plan = TestPlan::new(
            list,
            &Selector::default(),
            partition(4, 4),
            &Timings::default(),
        );
        assert_eq!(plan.shards_here(), [4]);
        assert_eq!(plan.to_run_here(), 0);
        assert_eq!(plan.to_run_total, 2);
    }

    #[test]
    fn a_shard_of_only_ignored_tests_keeps_them_to_report_as_skipped() {
        // Sorted: a (runs), b (ignored); slice 2/2 gets b alone.
        let list = list(&[("a", false), ("b", true)]);
        let plan = TestPlan::new(
            list,
            &Selector::default(),
            partition(2, 2),
            &Timings::default(),
        );
        assert_eq!(plan.shards, [(2, vec![1])]);
        assert_eq!(plan.to_run_here(), 0);
        assert_eq!(plan.to_run_total, 1);
    }

    #[test]
    fn nothing_selected_anywhere_is_an_empty_selection() {
        let list = list(&[("a", true)]);
        let plan = TestPlan::new(
            list,
            &Selector::default(),
            Sharding::All { count: 3 },
            &Timings::default(),
        );
        assert_eq!(plan.to_run_total, 0);
        assert_eq!(plan.shards_here(), [1, 2, 3]);

        let list = self::list(&[("a", true)]);
        let only_ignored = TestFilter {
            ignored: IgnoredMode::Only,
            ..Default::default()
        };
        let plan = TestPlan::new(
            list,
            &Selector::by_name(only_ignored),
            Sharding::default(),
            &Timings::default(),
        );
        assert_eq!(plan.to_run_total, 1);
    }
}
