//! `agent-sandbox bench`: the benchmark suite, run against a live instance (`agent-sandbox up`,
//! found as the other verbs find it). Each scenario prints p50/p90/p99 (and a rate where it has
//! one) beside a baseline measured in the same run, as a table and optionally as JSON. The
//! scenarios create their own template and warm pool (`agent-sandbox-bench`) and remove what they
//! created when they finish. See docs/benchmarks.md for what each number means.

mod claims;
mod fixture;
mod nodes;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::args::{BenchArgs, Scenario};
use fixture::Fixture;

/// One measured quantity: samples in milliseconds, or a single rate.
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    scenario: String,
    measure: String,
    n: usize,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    per_second: Option<f64>,
    target: String,
    note: String,
}

impl Row {
    fn latencies(scenario: Scenario, measure: &str, samples: &[Duration]) -> Row {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            (!ms.is_empty()).then(|| {
                let i = ((ms.len() as f64 - 1.0) * p).round() as usize;
                ms[i]
            })
        };
        Row {
            scenario: scenario_name(scenario),
            measure: measure.to_owned(),
            n: ms.len(),
            p50_ms: pct(0.5),
            p90_ms: pct(0.9),
            p99_ms: pct(0.99),
            per_second: None,
            target: String::new(),
            note: String::new(),
        }
    }

    fn rate(scenario: Scenario, measure: &str, n: usize, per_second: f64) -> Row {
        Row {
            per_second: Some(per_second),
            n,
            ..Row::latencies(scenario, measure, &[])
        }
    }

    fn target(mut self, target: &str) -> Row {
        target.clone_into(&mut self.target);
        self
    }

    fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }
}

fn scenario_name(s: Scenario) -> String {
    use clap::ValueEnum;
    s.to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

fn print_table(rows: &[Row]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    writeln!(
        out,
        "{:<18} {:<46} {:>5} {:>9} {:>9} {:>9} {:>9}  {:<22} note",
        "scenario", "measure", "n", "p50 ms", "p90 ms", "p99 ms", "per s", "target"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<18} {:<46} {:>5} {:>9} {:>9} {:>9} {:>9}  {:<22} {}",
            r.scenario,
            r.measure,
            r.n,
            f(r.p50_ms),
            f(r.p90_ms),
            f(r.p99_ms),
            f(r.per_second),
            r.target,
            r.note
        )?;
    }
    Ok(())
}

pub(crate) async fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let mut scenarios = args.scenarios.clone();
    if scenarios.is_empty() {
        scenarios = vec![
            Scenario::WarmClaim,
            Scenario::FirstInstruction,
            Scenario::Exec,
            Scenario::ColdStart,
            Scenario::Sustained,
            Scenario::Burst,
        ];
    }
    scenarios.sort();
    scenarios.dedup();
    let fixture = Fixture::open(args).await?;
    let mut rows = Vec::new();
    let mut result = Ok(());
    for s in &scenarios {
        eprintln!("== {}", scenario_name(*s));
        let r = match s {
            Scenario::WarmClaim => claims::warm_claim(&fixture, args).await,
            Scenario::FirstInstruction => claims::first_instruction(&fixture, args).await,
            Scenario::Exec => claims::exec(&fixture, args).await,
            Scenario::Sustained => claims::sustained(&fixture, args).await,
            Scenario::Burst => claims::burst(&fixture, args).await,
            Scenario::ColdStart => nodes::cold_start(&fixture, args).await,
            Scenario::Density => nodes::density(&fixture, args).await,
        };
        match r {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                result = Err(e.context(format!("scenario {}", scenario_name(*s))));
                break;
            }
        }
    }
    fixture.clean_up().await;
    println!();
    print_table(&rows)?;
    if let Some(path) = &args.json {
        fs_err::write(path, serde_json::to_vec_pretty(&rows)?)?;
        eprintln!("wrote {}", path.display());
    }
    result.map(|()| ExitCode::SUCCESS)
}
