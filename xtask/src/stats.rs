//! The benchmark's arithmetic: a loop's representative batch, medians over rounds, the cost each program adds to a capability
//! check, the ratios the targets are stated in, and the table that shows them.

use std::{collections::BTreeMap, fmt::Write};

use serde::Serialize;

/// What is attached to `cap_capable` while the loop runs. The order is the run order in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Config {
    /// Nothing.
    None,
    /// capprof's empty program on the same tracepoint: what any program there costs.
    Empty,
    /// capprof's tracer, as `capprof` loads it.
    Capprof,
    /// bpftrace counting per cgroup and capability.
    Bpftrace,
}

impl Config {
    pub const ALL: [Config; 4] = [
        Config::None,
        Config::Empty,
        Config::Capprof,
        Config::Bpftrace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Config::None => "none",
            Config::Empty => "empty",
            Config::Capprof => "capprof",
            Config::Bpftrace => "bpftrace",
        }
    }
}

/// capprof's added cost per check, at most this times bpftrace's.
pub const MAX_CAPPROF_VS_BPFTRACE: f64 = 0.6;
/// capprof's added cost per check, at most this times the empty program's.
pub const MAX_CAPPROF_VS_EMPTY: f64 = 2.0;

/// The middle value; the mean of the two middle values for an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2.0),
    }
}

/// Which batch of a loop stands for the loop: the 10th percentile. Batches slowed by another
/// process taking the CPU (the machines are shared) sit above it; the program's cost does not
/// vary between batches, so it is in every one of them.
pub const LOOP_QUANTILE: f64 = 0.1;

/// The nearest-rank `q` quantile (`0 < q ≤ 1`): the smallest value with at least `q` of the
/// values at or below it.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// `numerator / denominator`, or `None` when the denominator is not a positive cost.
pub fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0).then(|| numerator / denominator)
}

/// One configuration's results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfigResult {
    pub config: Config,
    /// ns per check, one per round, in run order.
    pub rounds_ns: Vec<f64>,
    pub median_ns: f64,
    /// `median_ns` minus the median with no program.
    pub added_ns: f64,
    /// `added_ns` divided by bpftrace's `added_ns`.
    pub added_vs_bpftrace: Option<f64>,
}

/// Whether capprof counted every check the loops made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CountCheck {
    /// sethostname calls made by the loops while capprof was attached.
    pub expected: u64,
    /// What capprof aggregated for those loops' keys.
    pub counted: u64,
}

impl CountCheck {
    /// Checks made but not counted; negative when capprof counted more than were made.
    pub fn lost(&self) -> i128 {
        i128::from(self.expected) - i128::from(self.counted)
    }
}

/// One target from the issue and whether this run meets it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Target {
    pub description: String,
    /// The measured value, when it is defined.
    pub value: Option<f64>,
    pub limit: f64,
    pub met: bool,
}

/// Everything the benchmark reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub results: Vec<ConfigResult>,
    /// capprof's `added_ns` divided by the empty program's.
    pub capprof_vs_empty: Option<f64>,
    pub counts: CountCheck,
    pub targets: Vec<Target>,
}

impl Summary {
    pub fn all_targets_met(&self) -> bool {
        self.targets.iter().all(|target| target.met)
    }
}

/// Medians, added costs and targets from the per-round samples. Every configuration in
/// [`Config::ALL`] must have at least one sample.
pub fn summarize(samples: &BTreeMap<Config, Vec<f64>>, counts: CountCheck) -> Option<Summary> {
    let median_of = |config| samples.get(&config).and_then(|values| median(values));
    let baseline = median_of(Config::None)?;
    let bpftrace_added = median_of(Config::Bpftrace)? - baseline;
    let mut results = Vec::new();
    for config in Config::ALL {
        let median_ns = median_of(config)?;
        let added_ns = median_ns - baseline;
        results.push(ConfigResult {
            config,
            rounds_ns: samples[&config].clone(),
            median_ns,
            added_ns,
            added_vs_bpftrace: if config == Config::None {
                None
            } else {
                ratio(added_ns, bpftrace_added)
            },
        });
    }
    let added = |config| median_of(config).map(|median| median - baseline);
    let capprof_added = added(Config::Capprof)?;
    let capprof_vs_bpftrace = ratio(capprof_added, bpftrace_added);
    let capprof_vs_empty = ratio(capprof_added, added(Config::Empty)?);
    let within = |value: Option<f64>, limit| value.is_some_and(|value| value <= limit);
    let targets = vec![
        Target {
            description: format!(
                "capprof's added cost per check ≤ {MAX_CAPPROF_VS_BPFTRACE}× bpftrace's"
            ),
            value: capprof_vs_bpftrace,
            limit: MAX_CAPPROF_VS_BPFTRACE,
            met: within(capprof_vs_bpftrace, MAX_CAPPROF_VS_BPFTRACE),
        },
        Target {
            description: format!(
                "capprof's added cost per check ≤ {MAX_CAPPROF_VS_EMPTY}× the empty program's"
            ),
            value: capprof_vs_empty,
            limit: MAX_CAPPROF_VS_EMPTY,
            met: within(capprof_vs_empty, MAX_CAPPROF_VS_EMPTY),
        },
        Target {
            description: "zero lost aggregated counts".to_owned(),
            value: Some(counts.lost() as f64),
            limit: 0.0,
            met: counts.lost() == 0,
        },
    ];
    Some(Summary {
        results,
        capprof_vs_empty,
        counts,
        targets,
    })
}

fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |value| format!("{value:.decimals$}"))
}

/// The human-readable report.
pub fn render(summary: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>12} {:>10} {:>18}   rounds (ns/check, run order)",
        "config", "ns/check", "added ns", "added ÷ bpftrace's"
    );
    for result in &summary.results {
        let rounds: Vec<String> = result
            .rounds_ns
            .iter()
            .map(|ns| format!("{ns:.1}"))
            .collect();
        let (added, versus) = if result.config == Config::None {
            ("-".to_owned(), "-".to_owned())
        } else {
            (
                format!("{:+.1}", result.added_ns),
                optional(result.added_vs_bpftrace, 2),
            )
        };
        let _ = writeln!(
            out,
            "{:<10} {:>12.1} {:>10} {:>18}   {}",
            result.config.name(),
            result.median_ns,
            added,
            versus,
            rounds.join(" ")
        );
    }
    let _ = writeln!(
        out,
        "\ncapprof's added cost ÷ the empty program's: {}",
        optional(summary.capprof_vs_empty, 2)
    );
    let lost = summary.counts.lost();
    let _ = writeln!(
        out,
        "lost aggregated counts: {lost} (capprof counted {} of the loops' {} checks)",
        summary.counts.counted, summary.counts.expected
    );
    for target in &summary.targets {
        let value = match target.value {
            Some(value) if target.limit == 0.0 => format!("{value:.0}"),
            value => optional(value, 2),
        };
        let verdict = if target.met { "met" } else { "NOT met" };
        let _ = writeln!(out, "target: {}: {value} → {verdict}", target.description);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(
        none: &[f64],
        empty: &[f64],
        capprof: &[f64],
        bpftrace: &[f64],
    ) -> BTreeMap<Config, Vec<f64>> {
        BTreeMap::from([
            (Config::None, none.to_vec()),
            (Config::Empty, empty.to_vec()),
            (Config::Capprof, capprof.to_vec()),
            (Config::Bpftrace, bpftrace.to_vec()),
        ])
    }

    fn result(summary: &Summary, config: Config) -> &ConfigResult {
        summary
            .results
            .iter()
            .find(|result| result.config == config)
            .unwrap()
    }

    const EXACT: CountCheck = CountCheck {
        expected: 5_050_000,
        counted: 5_050_000,
    };

    #[test]
    fn median_of_odd_even_and_empty_sets() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.5]), Some(7.5));
        assert_eq!(median(&[]), None);
        assert_eq!(
            median(&[500.0, 10_000.0, 510.0]),
            Some(510.0),
            "an outlier round does not move it"
        );
    }

    #[test]
    fn nearest_rank_quantiles() {
        let batches: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(quantile(&batches, LOOP_QUANTILE), Some(10.0));
        assert_eq!(quantile(&batches, 0.5), Some(50.0));
        assert_eq!(quantile(&batches, 1.0), Some(100.0));
        assert_eq!(quantile(&[7.0], LOOP_QUANTILE), Some(7.0));
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.1), Some(1.0));
        assert_eq!(quantile(&[], 0.1), None);
        // Slowed batches above the 10th percentile do not move it.
        let mut slowed = vec![480.0; 100];
        slowed[..40].fill(5_000.0);
        assert_eq!(quantile(&slowed, LOOP_QUANTILE), Some(480.0));
    }

    #[test]
    fn ratios_need_a_positive_denominator() {
        assert_eq!(ratio(150.0, 300.0), Some(0.5));
        assert_eq!(ratio(150.0, 0.0), None);
        assert_eq!(ratio(150.0, -3.0), None);
    }

    #[test]
    fn added_costs_and_ratios_come_from_medians() {
        let summary = summarize(
            &samples(
                &[540.0, 560.0, 550.0],
                &[600.0, 590.0, 9_999.0],
                &[700.0, 720.0, 710.0],
                &[850.0, 860.0, 870.0],
            ),
            EXACT,
        )
        .unwrap();
        let none = result(&summary, Config::None);
        assert_eq!(none.median_ns, 550.0);
        assert_eq!(none.added_ns, 0.0);
        assert_eq!(none.added_vs_bpftrace, None);
        let empty = result(&summary, Config::Empty);
        assert_eq!(empty.median_ns, 600.0);
        assert_eq!(empty.added_ns, 50.0);
        assert_eq!(empty.added_vs_bpftrace, Some(50.0 / 310.0));
        let capprof = result(&summary, Config::Capprof);
        assert_eq!(capprof.added_ns, 160.0);
        assert_eq!(capprof.rounds_ns, [700.0, 720.0, 710.0]);
        assert_eq!(
            result(&summary, Config::Bpftrace).added_vs_bpftrace,
            Some(1.0)
        );
        assert_eq!(summary.capprof_vs_empty, Some(3.2));

        let met: Vec<bool> = summary.targets.iter().map(|target| target.met).collect();
        // 160/310 = 0.52 ≤ 0.6; 160/50 = 3.2 > 2; nothing lost.
        assert_eq!(met, [true, false, true]);
        assert!(!summary.all_targets_met());
    }

    #[test]
    fn lost_or_extra_counts_fail_the_count_target() {
        let base = samples(&[500.0], &[520.0], &[540.0], &[800.0]);
        let lost = CountCheck {
            expected: 1_000,
            counted: 997,
        };
        let summary = summarize(&base, lost).unwrap();
        assert_eq!(summary.counts.lost(), 3);
        assert!(!summary.targets[2].met);
        let extra = CountCheck {
            expected: 1_000,
            counted: 1_002,
        };
        assert_eq!(extra.lost(), -2);
        assert!(!summarize(&base, extra).unwrap().targets[2].met);
        let exact = summarize(&base, EXACT).unwrap();
        assert!(exact.all_targets_met(), "40/300 ≤ 0.6 and 40/20 ≤ 2");
    }

    #[test]
    fn an_empty_program_that_adds_nothing_leaves_its_ratio_undefined() {
        let summary = summarize(&samples(&[500.0], &[499.0], &[560.0], &[800.0]), EXACT).unwrap();
        assert_eq!(summary.capprof_vs_empty, None);
        assert!(
            !summary.targets[1].met,
            "an undefined ratio does not meet a target"
        );
        assert!(render(&summary).contains("capprof's added cost ÷ the empty program's: n/a"));
    }

    #[test]
    fn a_missing_configuration_gives_no_summary() {
        let mut partial = samples(&[500.0], &[520.0], &[540.0], &[800.0]);
        partial.remove(&Config::Bpftrace);
        assert_eq!(summarize(&partial, EXACT), None);
    }

    #[test]
    fn the_table_shows_every_configuration_and_verdict() {
        let summary = summarize(
            &samples(
                &[540.0, 550.0],
                &[590.0, 600.0],
                &[700.0, 710.0],
                &[840.0, 850.0],
            ),
            EXACT,
        )
        .unwrap();
        let table = render(&summary);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("config"));
        assert!(
            lines[1].starts_with("none") && lines[1].contains("545.0"),
            "{table}"
        );
        assert!(
            lines[3].starts_with("capprof") && lines[3].contains("+160.0"),
            "{table}"
        );
        assert!(lines[3].contains("0.53"), "160/300: {table}");
        assert!(table.contains(
            "lost aggregated counts: 0 (capprof counted 5050000 of the loops' 5050000 checks)"
        ));
        assert!(table.contains("≤ 0.6× bpftrace's: 0.53 → met"), "{table}");
        assert!(
            table.contains("≤ 2× the empty program's: 3.20 → NOT met"),
            "{table}"
        );
    }
}
