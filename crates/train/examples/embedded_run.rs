//! The embedded default run without the CLI (for timing it): `cargo run --example embedded_run -- [--set k=v]...`

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sets: Vec<String> = args
        .chunks(2)
        .filter(|c| c[0] == "--set")
        .filter_map(|c| c.get(1).cloned())
        .collect();
    let r = rdrop_train::embedded::recipe(&sets)?;
    let t0 = std::time::Instant::now();
    let rep = rdrop_train::embedded::run(&r, &rdrop_train::trainer::RunOptions::default())?;
    for (s, r, h) in &rep.examples {
        println!("{s}\n{r}\n{h}\n");
    }
    println!(
        "BLEU before {:.2} after {:.2} ({} updates) in {:.0}s",
        rep.bleu_before,
        rep.bleu_after,
        rep.summary.updates,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
