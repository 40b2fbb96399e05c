//! Runs one simulation from a command line like the one `shoal sim` takes, for working on
//! the simulator without the binary: `cargo run -p shoal-sim --release --example sim --
//! --seed 7 --duration 10m --faults all` (add `--raft` for the Raft mode).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match shoal_sim::SimOptions::from_command_line(&args.join(" ")) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if opts.raft {
        let report = shoal_sim::raft::run(&opts);
        print!("{}", report.summary());
        std::process::exit(if report.passed() { 0 } else { 1 });
    }
    println!("{}", shoal_sim::SimPlan::derive(&opts));
    let report = shoal_sim::run(&opts);
    print!("{}", report.summary());
    std::process::exit(if report.passed() { 0 } else { 1 });
}
