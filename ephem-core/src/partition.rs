//! Splits the selected tests into shards.
//!
//! Every CI job of a matrix computes the same plan from the same inputs
//! without talking to the others, so every choice here is deterministic:
//! stable hashing, sorted inputs, ties broken by name.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use xxhash_rust::xxh64::xxh64;

/// How tests are assigned to shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionKind {
    /// Stable hash of binary id and test name: a test stays in its shard as
    /// other tests come and go.
    Hash,
    /// Round-robin over the sorted list of all tests: even counts.
    Slice,
    /// Longest processing time first over historical durations: even times.
    Duration,
}

impl fmt::Display for PartitionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PartitionKind::Hash => "hash",
            PartitionKind::Slice => "slice",
            PartitionKind::Duration => "duration",
        })
    }
}

/// `--partition KIND:M/N`: run only shard M (1-based) of N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionSpec {
    /// How tests are split.
    pub kind: PartitionKind,
    /// The shard to run, 1-based.
    pub shard: u32,
    /// Number of shards.
    pub count: u32,
}

impl FromStr for PartitionSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected KIND:M/N with KIND one of hash, slice, duration (e.g. slice:1/4)";
        let (kind, frac) = s
            .split_once(':')
            .ok_or_else(|| format!("invalid partition {s:?}: {usage}"))?;
        let kind = match kind {
            "hash" => PartitionKind::Hash,
            "slice" => PartitionKind::Slice,
            "duration" => PartitionKind::Duration,
            other => {
                return Err(format!(
                    "unknown partition kind {other:?} in {s:?}: {usage}"
                ))
            }
        };
        let (m, n) = frac
            .split_once('/')
            .ok_or_else(|| format!("invalid partition {s:?}: {usage}"))?;
        let max = crate::limits::MAX_SHARDS;
        let parse = |v: &str, what: &str| match v.parse::<u64>() {
            Ok(n) => Ok(n),
            Err(_) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => Ok(u64::MAX),
            Err(_) => Err(format!("invalid {what} {v:?} in partition {s:?}: {usage}")),
        };
        let (shard, count) = (parse(m, "shard number")?, parse(n, "shard count")?);
        if count == 0 {
            return Err(format!(
                "invalid partition {s:?}: the shard count must be at least 1"
            ));
        }
        if count > u64::from(max) {
            return Err(format!(
                "invalid partition {s:?}: the shard count is out of range (allowed: 1 to {max})"
            ));
        }
        let (shard, count) = (shard.min(u64::from(u32::MAX)) as u32, count as u32);
        if shard == 0 || shard > count {
            return Err(format!(
                "invalid partition {s:?}: the shard number must be between 1 and {count}"
            ));
        }
        Ok(PartitionSpec { kind, shard, count })
    }
}

/// One test as the partitioner sees it.
#[derive(Clone, Debug)]
pub struct PartitionItem<'a> {
    /// Binary id (JUnit classname).
    pub binary_id: &'a str,
    /// Test name.
    pub name: &'a str,
    /// Skipped tests (`#[ignore]`) take no time in a duration plan.
    pub runs: bool,
}

/// Which shard each test lands in.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardPlan {
    /// How the plan was made.
    pub kind: PartitionKind,
    /// `shards[k]` holds indices into the input of shard k+1, in input order.
    pub shards: Vec<Vec<usize>>,
    /// Predicted time of each shard (duration plans only; zero otherwise).
    pub predicted: Vec<Duration>,
}

impl ShardPlan {
    /// Number of shards.
    pub fn count(&self) -> u32 {
        self.shards.len() as u32
    }

    /// Assigns every item to exactly one of `count` shards.
    ///
    /// `timings` maps (binary id, test name) to a past duration; tests
    /// missing from it get the mean of the known ones.
    pub fn new(
        items: &[PartitionItem<'_>],
        count: u32,
        kind: PartitionKind,
        timings: &Timings,
    ) -> ShardPlan {
        // Callers check the range (`limits::MAX_SHARDS`); clamping keeps a
        // bad call from allocating without bound.
        let count = count.clamp(1, crate::limits::MAX_SHARDS) as usize;
        let mut shards = vec![Vec::new(); count];
        let mut predicted = vec![Duration::ZERO; count];
        match kind {
            PartitionKind::Hash => {
                for (i, item) in items.iter().enumerate() {
                    shards[(stable_hash(item) % count as u64) as usize].push(i);
                }
            }
            PartitionKind::Slice => {
                let mut order: Vec<usize> = (0..items.len()).collect();
                order.sort_by(|&a, &b| key(&items[a]).cmp(&key(&items[b])));
                for (pos, i) in order.into_iter().enumerate() {
                    shards[pos % count].push(i);
                }
                shards.iter_mut().for_each(|s| s.sort_unstable());
            }
            PartitionKind::Duration => {
                let loads = lpt(items, count, timings, &mut shards);
                predicted = loads.into_iter().map(Duration::from_micros).collect();
            }
        }
        ShardPlan {
            kind,
            shards,
            predicted,
        }
    }
}

fn key<'a>(item: &PartitionItem<'a>) -> (&'a str, &'a str) {
    (item.binary_id, item.name)
}

fn stable_hash(item: &PartitionItem<'_>) -> u64 {
    // xxh64 is specified and stable across platforms and releases, unlike
    // std's hasher, so every CI job agrees.
    let mut buf = Vec::with_capacity(item.binary_id.len() + item.name.len() + 1);
    buf.extend_from_slice(item.binary_id.as_bytes());
    buf.push(0);
    buf.extend_from_slice(item.name.as_bytes());
    xxh64(&buf, 0)
}

/// Longest processing time first: each test, longest first, goes to the
/// least loaded shard (lowest number on ties). Within 4/3 of optimal
/// (Graham 1969). Loads are integer microseconds so that no float rounding
/// can make two machines disagree.
fn lpt(
    items: &[PartitionItem<'_>],
    count: usize,
    timings: &Timings,
    shards: &mut [Vec<usize>],
) -> Vec<u64> {
    let fallback = timings.mean_micros();
    let mut weighted: Vec<(u64, usize)> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let w = if item.runs {
                timings
                    .micros(item.binary_id, item.name)
                    .unwrap_or(fallback)
            } else {
                0
            };
            (w, i)
        })
        .collect();
    weighted.sort_unstable_by(|&(wa, a), &(wb, b)| {
        wb.cmp(&wa)
            .then_with(|| key(&items[a]).cmp(&key(&items[b])))
    });
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = (0..count).map(|s| Reverse((0, s))).collect();
    let mut loads = vec![0u64; count];
    for (w, i) in weighted {
        let Reverse((load, shard)) = heap.pop().expect("at least one shard");
        shards[shard].push(i);
        loads[shard] = load + w;
        heap.push(Reverse((load + w, shard)));
    }
    shards.iter_mut().for_each(|s| s.sort_unstable());
    loads
}

/// Past test durations, keyed by (binary id, test name).
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// Binary id, then test name: nested so lookups by `&str` need no allocation.
    micros: FxHashMap<String, FxHashMap<String, u64>>,
    count: usize,
    sum: u128,
}

impl Timings {
    /// Records one duration; a later record of the same test replaces it.
    pub fn insert(&mut self, binary_id: &str, name: &str, time: Duration) {
        let micros = time.as_micros() as u64;
        let old = self
            .micros
            .entry(binary_id.to_owned())
            .or_default()
            .insert(name.to_owned(), micros);
        match old {
            Some(old) => self.sum -= old as u128,
            None => self.count += 1,
        }
        self.sum += micros as u128;
    }

    /// Number of tests with a known duration.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no duration is known.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn micros(&self, binary_id: &str, name: &str) -> Option<u64> {
        self.micros.get(binary_id)?.get(name).copied()
    }

    /// Mean of the known durations; 1 ms when none is known, so an empty
    /// history degrades to an even split by count.
    fn mean_micros(&self) -> u64 {
        if self.count == 0 {
            1_000
        } else {
            (self.sum / self.count as u128) as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partition_specs_parse_and_reject() {
        let p: PartitionSpec = "slice:2/4".parse().unwrap();
        assert_eq!((p.kind, p.shard, p.count), (PartitionKind::Slice, 2, 4));
        for bad in [
            "slice:5/4",
            "slice:0/4",
            "slice:1/0",
            "rr:1/2",
            "slice",
            "slice:1",
            "hash:a/2",
            "slice:1/4000000000",
            "slice:1/99999999999999999999",
            "slice:4000000000/4",
        ] {
            let err = bad.parse::<PartitionSpec>().unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn duration_plan_balances_known_times() {
        let names: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
        let items: Vec<_> = names
            .iter()
            .map(|n| PartitionItem {
                binary_id: "b",
                name: n,
                runs: true,
            })
            .collect();
        let mut timings = Timings::default();
        for (n, secs) in names.iter().zip([5, 4, 3, 3, 2, 1]) {
            timings.insert("b", n, Duration::from_secs(secs));
        }
        let plan = ShardPlan::new(&items, 2, PartitionKind::Duration, &timings);
        let mut loads = plan.predicted.clone();
        loads.sort();
        assert_eq!(loads, vec![Duration::from_secs(9), Duration::from_secs(9)]);
    }

    #[test]
    fn seven_tests_on_five_shards_pair_the_shortest_with_the_longest() {
        // Found by proptest in CI: the optimum here (3 747 440) exceeds 4/3 of
        // max(longest, total/5), so the plan must be judged by a sound bound.
        let micros = [
            1569764, 2251849, 2251849, 1495591, 1721339, 2251849, 2251849,
        ];
        let names: Vec<String> = (0..micros.len()).map(|i| format!("t{i}")).collect();
        let mut timings = Timings::default();
        for (name, &us) in names.iter().zip(&micros) {
            timings.insert("a", name, Duration::from_micros(us));
        }
        let items: Vec<_> = names
            .iter()
            .map(|name| PartitionItem {
                binary_id: "a",
                name,
                runs: true,
            })
            .collect();
        let plan = ShardPlan::new(&items, 5, PartitionKind::Duration, &timings);
        let makespan = plan.predicted.iter().max().unwrap().as_micros();
        assert_eq!(makespan, 1495591 + 2251849);
    }

    #[test]
    fn unknown_tests_get_the_mean() {
        let items = [
            PartitionItem {
                binary_id: "b",
                name: "known",
                runs: true,
            },
            PartitionItem {
                binary_id: "b",
                name: "new",
                runs: true,
            },
        ];
        let mut timings = Timings::default();
        timings.insert("b", "known", Duration::from_secs(4));
        let plan = ShardPlan::new(&items, 1, PartitionKind::Duration, &timings);
        assert_eq!(plan.predicted, vec![Duration::from_secs(8)]);
    }

    fn arb_tests() -> impl Strategy<Value = Vec<(String, String, u64, bool)>> {
        prop::collection::vec(
            (
                "[a-c]{1,2}",
                "[a-z_:]{1,8}",
                1u64..5_000_000,
                prop::bool::weighted(0.9),
            ),
            0..200,
        )
        .prop_map(|mut v| {
            v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            v.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
            v
        })
    }

    fn kinds() -> impl Strategy<Value = PartitionKind> {
        prop_oneof![
            Just(PartitionKind::Hash),
            Just(PartitionKind::Slice),
            Just(PartitionKind::Duration)
        ]
    }

    proptest! {
        #[test]
        fn every_test_lands_in_exactly_one_shard(tests in arb_tests(), n in 1u32..12, kind in kinds()) {
            let items: Vec<_> = tests.iter().map(|t| PartitionItem { binary_id: &t.0, name: &t.1, runs: t.3 }).collect();
            let plan = ShardPlan::new(&items, n, kind, &Timings::default());
            prop_assert_eq!(plan.shards.len(), n as usize);
            let mut seen = vec![0u32; items.len()];
            for shard in &plan.shards { for &i in shard { seen[i] += 1; } }
            prop_assert!(seen.iter().all(|&c| c == 1));
        }

        #[test]
        fn same_input_same_plan_in_any_order(tests in arb_tests(), n in 1u32..12, kind in kinds(), seed in any::<u64>()) {
            let mut timings = Timings::default();
            for t in &tests { timings.insert(&t.0, &t.1, Duration::from_micros(t.2)); }
            let items: Vec<_> = tests.iter().map(|t| PartitionItem { binary_id: &t.0, name: &t.1, runs: t.3 }).collect();
            // The plan must not depend on the order tests were listed in.
            let mut shuffled: Vec<usize> = (0..items.len()).collect();
            shuffled.sort_by_key(|&i| xxh64(&(i as u64).to_le_bytes(), seed));
            let items2: Vec<_> = shuffled.iter().map(|&i| items[i].clone()).collect();
            let a = ShardPlan::new(&items, n, kind, &timings);
            let b = ShardPlan::new(&items2, n, kind, &timings);
            let names = |plan: &ShardPlan, items: &[PartitionItem<'_>]| -> Vec<Vec<(String, String)>> {
                plan.shards.iter().map(|s| {
                    let mut v: Vec<_> = s.iter().map(|&i| (items[i].binary_id.to_owned(), items[i].name.to_owned())).collect();
                    v.sort();
                    v
                }).collect()
            };
            prop_assert_eq!(names(&a, &items), names(&b, &items2));
        }

        #[test]
        fn duration_plan_meets_grahams_lpt_bound(tests in arb_tests(), n in 1u32..12) {
            let mut timings = Timings::default();
            for t in &tests { timings.insert(&t.0, &t.1, Duration::from_micros(t.2)); }
            let items: Vec<_> = tests.iter().map(|t| PartitionItem { binary_id: &t.0, name: &t.1, runs: t.3 }).collect();
            let plan = ShardPlan::new(&items, n, PartitionKind::Duration, &timings);
            let mut weights: Vec<u64> = tests.iter().filter(|t| t.3).map(|t| t.2).collect();
            weights.sort_unstable_by(|a, b| b.cmp(a));
            let m = n as f64;
            let total: u64 = weights.iter().sum();
            let longest = weights.first().copied().unwrap_or(0);
            // The shard that finishes last ends with some test j, which began
            // when that shard was the least loaded: start <= (total - p_j) / m.
            // If j is among the m longest it began on an empty shard (makespan
            // = p_j); otherwise p_j is at most the (m+1)-th longest. A lower
            // bound such as max(longest, total/m) is not enough: LPT is within
            // 4/3 of the optimum, which can exceed both.
            let next = weights.get(n as usize).copied().unwrap_or(0) as f64;
            let bound = (longest as f64).max(total as f64 / m + (1.0 - 1.0 / m) * next);
            let makespan = plan.predicted.iter().max().map(|d| d.as_micros() as u64).unwrap_or(0);
            prop_assert!(makespan as f64 <= bound + 1.0,
                "makespan {} bound {}", makespan, bound);
        }
    }
}
