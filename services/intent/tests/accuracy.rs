//! The heuristics against the two-turn case table: above 95% overall, failures printed.

use atelier_intent::accuracy::{cases, check};
use atelier_intent::heuristics;

#[test]
fn the_heuristics_resolve_the_case_table() {
    let cases = cases();
    assert!(cases.len() >= 150, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let intent = heuristics::analyze(&case.prompt, Some(&case.previous), true).into_intent();
        if let Some(why) = check(case, &intent) {
            failures.push(format!(
                "[{}] {:?} after {:?}: {why}",
                case.category, case.prompt, case.previous
            ));
        }
    }
    let accuracy = 1.0 - failures.len() as f64 / cases.len() as f64;
    println!("{}", failures.join("\n"));
    println!("accuracy {:.1}% of {}", accuracy * 100.0, cases.len());
    assert!(
        accuracy > 0.95,
        "accuracy {:.1}%, failures:\n{}",
        accuracy * 100.0,
        failures.join("\n")
    );
}
