//! `agent-sandbox bench`: the benchmark suite, run against a live instance (`agent-sandbox up`,
//! found as the other verbs find it), or with `--durability` against instances it starts itself,
//! one per durability setting in turn, their rows side by side. Each scenario prints p50/p90/p99
//! (and a rate where it has one) beside a baseline measured in the same run, as a table and
//! optionally as JSON. The scenarios create their own template and warm pool
//! (`agent-sandbox-bench`) and remove what they created when they finish. See
//! docs/benchmarks.md for what each number means.

mod claims;
mod desktop;
mod fixture;
mod fork;
mod idle;
mod instance;
mod nodes;
mod pause;
mod snapshot;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::args::{BenchArgs, ConnectArgs, Scenario};
use fixture::Fixture;
use instance::Instance;

/// One measured quantity: samples in milliseconds, or a single rate.
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    scenario: String,
    /// The durability setting of the instance the benchmark started (`--durability`), or empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    durability: String,
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
            durability: String::new(),
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
    // Sub-millisecond figures (an fsync, a GET) with two decimals.
    let f = |v: Option<f64>| {
        v.map_or_else(
            || "-".to_owned(),
            |v| {
                if v < 1.0 {
                    format!("{v:.2}")
                } else {
                    format!("{v:.1}")
                }
            },
        )
    };
    writeln!(
        out,
        "{:<18} {:<46} {:>5} {:>9} {:>9} {:>9} {:>9}  {:<22} note",
        "scenario", "measure", "n", "p50 ms", "p90 ms", "p99 ms", "per s", "target"
    )?;
    for r in rows {
        let measure = if r.durability.is_empty() {
            r.measure.clone()
        } else {
            format!("[{}] {}", r.durability, r.measure)
        };
        writeln!(
            out,
            "{:<18} {:<46} {:>5} {:>9} {:>9} {:>9} {:>9}  {:<22} {}",
            r.scenario,
            measure,
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
    let (rows, result) = match args.durability {
        None => run_scenarios(&args.connect, args, &scenarios).await,
        Some(choice) => {
            // One instance per setting, in turn; their rows interleaved, row by row.
            let mut runs: Vec<Vec<Row>> = Vec::new();
            let mut result = Ok(());
            for setting in instance::settings(choice) {
                let label = instance::label(setting);
                eprintln!("== instance: {label}");
                let started = match Instance::start(args, setting).await {
                    Ok(i) => i,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                };
                let (mut rows, r) =
                    run_scenarios(&started.connect(&args.connect), args, &scenarios).await;
                started.stop().await;
                for row in &mut rows {
                    label.clone_into(&mut row.durability);
                }
                runs.push(rows);
                if let Err(e) = r {
                    result = Err(e.context(format!("the instance with durability {label}")));
                    break;
                }
            }
            let longest = runs.iter().map(Vec::len).max().unwrap_or(0);
            let mut iters: Vec<_> = runs.into_iter().map(Vec::into_iter).collect();
            let mut rows = Vec::new();
            for _ in 0..longest {
                rows.extend(iters.iter_mut().filter_map(Iterator::next));
            }
            (rows, result)
        }
    };
    if rows.is_empty() {
        // Nothing measured: the error says why.
        return result.map(|()| ExitCode::SUCCESS);
    }
    println!();
    print_table(&rows)?;
    if let Some(path) = &args.json {
        fs_err::write(path, serde_json::to_vec_pretty(&rows)?)?;
        eprintln!("wrote {}", path.display());
    }
    result.map(|()| ExitCode::SUCCESS)
}

/// Runs `scenarios` against the instance `connect` finds; returns the rows measured before the
/// first failure, and that failure.
async fn run_scenarios(
    connect: &ConnectArgs,
    args: &BenchArgs,
    scenarios: &[Scenario],
) -> (Vec<Row>, anyhow::Result<()>) {
    let fixture = match Fixture::open(connect, args).await {
        Ok(f) => f,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut rows = Vec::new();
    let mut result = Ok(());
    for s in scenarios {
        eprintln!("== {}", scenario_name(*s));
        let r = match s {
            Scenario::WarmClaim => claims::warm_claim(&fixture, args).await,
            Scenario::FirstInstruction => claims::first_instruction(&fixture, args).await,
            Scenario::Exec => claims::exec(&fixture, args).await,
            Scenario::Sustained => claims::sustained(&fixture, args).await,
            Scenario::Burst => claims::burst(&fixture, args).await,
            Scenario::ColdStart => nodes::cold_start(&fixture, args).await,
            Scenario::Density => nodes::density(&fixture, args).await,
            Scenario::Pause => pause::pause(&fixture, args).await,
            Scenario::IdleWake => idle::idle_wake(&fixture, args).await,
            Scenario::Snapshot => snapshot::snapshot(&fixture, args).await,
            Scenario::Fork => fork::fork(&fixture, args).await,
            Scenario::Desktop => desktop::desktop(&fixture, args).await,
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
    (rows, result)
}
