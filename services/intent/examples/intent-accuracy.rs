//! Accuracy of intent on the two-turn case table, by category: the heuristics alone, and
//! the whole decision path with the LLM when `ATELIER_LLM_BASE_URL` (and the other
//! `ATELIER_LLM_*` variables) point to a server.
//!
//! `cargo run -p atelier-intent --example intent-accuracy [table.tsv]`: the compiled-in
//! table (`tests/cases.tsv`), or another in its format, such as `tests/held_out.tsv`.

use std::collections::BTreeMap;

use atelier_intent::accuracy::{cases, check, parse_cases};
use atelier_intent::analyze::{Question, decide};
use atelier_intent::heuristics;
use atelier_llm::{LlmClient, LlmConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let llm = LlmConfig::from_env()?.map(LlmClient::new).transpose()?;
    let cases = match std::env::args().nth(1) {
        Some(path) => parse_cases(&std::fs::read_to_string(&path)?),
        None => cases(),
    };
    // category → (cases, heuristic passes, llm-path passes)
    let mut table: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for case in &cases {
        let decision = heuristics::analyze(&case.prompt, Some(&case.previous), true);
        let heuristic_miss = check(case, decision.intent());
        if let Some(why) = &heuristic_miss {
            // On stderr, so the table on stdout stays a table.
            eprintln!(
                "miss [{}] {:?} after {:?}: {why}",
                case.category, case.prompt, case.previous
            );
        }
        let heuristic_ok = heuristic_miss.is_none();
        let llm_ok = match &llm {
            Some(llm) => {
                let question = Question {
                    prompt: case.prompt.clone(),
                    previous_prompt: case.previous.clone(),
                    has_previous_image: true,
                };
                check(case, &decide(Some(llm), &question).await.intent).is_none()
            }
            None => false,
        };
        let row = table.entry(case.category.clone()).or_default();
        row.0 += 1;
        row.1 += usize::from(heuristic_ok);
        row.2 += usize::from(llm_ok);
    }
    let pct = |n: usize, of: usize| 100.0 * n as f64 / of as f64;
    if llm.is_none() {
        println!("no LLM configured (ATELIER_LLM_BASE_URL unset): heuristics only");
        println!("{:<12} {:>5} {:>10}", "category", "cases", "heuristic");
    } else {
        println!(
            "{:<12} {:>5} {:>10} {:>10}",
            "category", "cases", "heuristic", "with LLM"
        );
    }
    let (mut total, mut heuristic, mut with_llm) = (0, 0, 0);
    for (category, (n, h, l)) in &table {
        total += n;
        heuristic += h;
        with_llm += l;
        if llm.is_some() {
            println!(
                "{category:<12} {n:>5} {:>9.1}% {:>9.1}%",
                pct(*h, *n),
                pct(*l, *n)
            );
        } else {
            println!("{category:<12} {n:>5} {:>9.1}%", pct(*h, *n));
        }
    }
    if llm.is_some() {
        println!(
            "{:<12} {total:>5} {:>9.1}% {:>9.1}%",
            "all",
            pct(heuristic, total),
            pct(with_llm, total)
        );
    } else {
        println!("{:<12} {total:>5} {:>9.1}%", "all", pct(heuristic, total));
    }
    Ok(())
}
