//! The heuristics against the two-turn case tables, failures printed: above 95% on the
//! table they were tuned on, and no lower than their measured value on the held-out
//! tables (floors against regressions, not targets).
//!
//! `held_out.tsv` was written after the first tuning and scored 73.9% untuned; its misses
//! were then fixed by general rules, so it has been tuned on since (100%, 46 of 46).
//! `held_out_2.tsv` was written before those fixes and has never been tuned on: 71.4% when
//! written, 78.6% after the fixes for `held_out.tsv`, its honest generalisation number.

use atelier_intent::accuracy::{Case, cases, check, parse_cases};
use atelier_intent::heuristics;

/// The share of `cases` resolved right, and the failures.
fn score(cases: &[Case]) -> (f64, Vec<String>) {
    let mut failures = Vec::new();
    for case in cases {
        let intent = heuristics::analyze(&case.prompt, Some(&case.previous), true).into_intent();
        if let Some(why) = check(case, &intent) {
            failures.push(format!(
                "[{}] {:?} after {:?}: {why}",
                case.category, case.prompt, case.previous
            ));
        }
    }
    (1.0 - failures.len() as f64 / cases.len() as f64, failures)
}

/// Scores a held-out table and fails below `floor`.
fn hold_floor(name: &str, tsv: &str, floor: f64) {
    let cases = parse_cases(tsv);
    assert!(cases.len() >= 40, "{name}: {} cases", cases.len());
    let (accuracy, failures) = score(&cases);
    println!("{}", failures.join("\n"));
    println!(
        "{name} accuracy {:.1}% of {}",
        accuracy * 100.0,
        cases.len()
    );
    assert!(
        accuracy >= floor,
        "{name} accuracy fell to {:.1}%, failures:\n{}",
        accuracy * 100.0,
        failures.join("\n")
    );
}

#[test]
fn the_heuristics_hold_their_ground_on_the_held_out_table() {
    // Tuned on in the second round: a floor against regressions, no longer an estimate.
    hold_floor("held_out.tsv", include_str!("held_out.tsv"), 1.0);
}

#[test]
fn the_heuristics_hold_their_ground_on_the_second_held_out_table() {
    // Never tuned on: the floor is the measured value, 55 of 70.
    hold_floor("held_out_2.tsv", include_str!("held_out_2.tsv"), 0.785);
}

#[test]
fn the_heuristics_resolve_the_case_table() {
    let cases = cases();
    assert!(cases.len() >= 150, "{} cases", cases.len());
    let (accuracy, failures) = score(&cases);
    println!("{}", failures.join("\n"));
    println!("accuracy {:.1}% of {}", accuracy * 100.0, cases.len());
    assert!(
        accuracy > 0.95,
        "accuracy {:.1}%, failures:\n{}",
        accuracy * 100.0,
        failures.join("\n")
    );
}
